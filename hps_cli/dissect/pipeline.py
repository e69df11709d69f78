"""``dissect``: model in, HPS tables + dense SavedModel + ps.json + manifest.json out.

Everything is built in a hidden folder beside OUT_DIR and renamed into place only after the
self-check passed and the ps.json and manifest validated; any error leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..common.custom_objects import CustomObjects, check_keras, resolve, use_keras_of
from ..runtime.atomic import AtomicDirectory, check_destination
from ..runtime.errors import CheckFailedError, InvalidInputError
from .inspect import TABLE_NAME, Inventory, TableChoice, inspect_source, select_tables
from .manifest import MANIFEST_FILE, build_manifest, check_manifest
from .model_graph import GraphPlan
from .model_keras import KerasPlan
from .plan import KeyMap, ModelPlan
from .psconfig import DEFAULT_MAX_BATCH_SIZE, build_ps_config, check_ps_config
from .selfcheck import model_check, sample_feed, tables_check
from .source_types import H5, KERAS, SAVED_MODEL, Source
from .sources import open_source
from .tables import write_table

PS_FILE = "ps.json"
DENSE_DIR = "dense"


@dataclass
class DissectOptions:
    tables: tuple[str, ...] = ()  # VAR[=NAME] specs; empty: every detected table
    model_name: str | None = None
    check: bool = True
    dense: bool | None = None  # None: when the model can be loaded
    overwrite: bool = False
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    ids_per_sample: int | None = None  # for tables whose ids per sample are unknown
    signature: str | None = None  # SavedModel signature to cut
    # MODULE[:ATTR] specs or dicts of the model's custom classes (common/custom_objects.py)
    custom_objects: tuple = ()
    allow_non_finite: bool = False  # keep tables whose vectors hold NaN/Inf


@dataclass
class DissectResult:
    out_dir: Path
    manifest: dict
    seconds: float
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "out_dir": str(self.out_dir),
            "seconds": round(self.seconds, 3),
            "warnings": self.warnings,
            "manifest": self.manifest,
        }


def list_model(path: Path | str) -> Inventory:
    """Every variable of a model with its real name, shape, dtype and table evidence."""
    with open_source(path) as source:
        return inspect_source(source)


def _custom_objects(source: Source, options: DissectOptions) -> CustomObjects:
    """Import the user code the model needs, under the Keras that wrote the model."""
    if not options.custom_objects:
        return CustomObjects()
    use_keras_of(source.flavour)
    found = resolve(options.custom_objects)
    if source.format in (KERAS, H5):
        check_keras(found.objects, source.flavour, str(source.path))
    return found


def _plan(
    source: Source, choices: list[TableChoice], options: DissectOptions, custom: CustomObjects
) -> ModelPlan | None:
    want = source.loadable if options.dense is None else options.dense
    if not want:
        return None
    if not source.loadable:
        raise InvalidInputError(
            f"a {source.format} holds values only: there is no model to cut a dense part from",
            location=str(source.path),
            hint="drop --dense, or dissect the SavedModel/.keras/.h5 model",
        )
    if source.format == SAVED_MODEL:
        return GraphPlan(source, choices, options.signature)
    if source.format in (KERAS, H5):
        return KerasPlan(source, choices, custom.objects)
    return None


def _key_maps(plan: ModelPlan | None, choices: list[TableChoice]) -> dict[str, KeyMap]:
    maps: dict[str, KeyMap] = {}
    for lookup in plan.lookups if plan else []:
        known = maps.get(lookup.table_variable)
        if known is not None and (
            known.source != lookup.keys.source
            or (known.keys is not None and not np.array_equal(known.keys, lookup.keys.keys))
        ):
            raise InvalidInputError(
                f"table '{lookup.table_variable}' is reached through different "
                "id mappings by different inputs"
            )
        maps[lookup.table_variable] = lookup.keys
    return {c.variable.name: maps.get(c.variable.name, KeyMap()) for c in choices}


def dissect(
    path: Path | str,
    out_dir: Path | str,
    options: DissectOptions | None = None,
    *,
    progress: Callable[[int], None] | None = None,
) -> DissectResult:
    """Split the model at ``path`` into HPS tables, a dense SavedModel, ps.json and a manifest."""
    options = options or DissectOptions()
    started = time.perf_counter()
    out_dir = Path(out_dir)
    check_destination(out_dir, options.overwrite)
    with open_source(path) as source:
        inventory = inspect_source(source)
        choices = select_tables(inventory, options.tables)
        model_name = options.model_name or source.model_name or "model"
        if not TABLE_NAME.match(model_name):
            raise InvalidInputError(
                f"model name '{model_name}' is not valid in HPS configs "
                "(letters, digits, _ and -, at most 120)",
                location="--model-name",
            )
        # What user code prints (DeepCTR's "CrossNet parameterization: vector") is a message:
        # stdout carries data only (one document with --json).
        with contextlib.redirect_stdout(sys.stderr):
            custom = _custom_objects(source, options)
            plan = _plan(source, choices, options, custom)
        keys = _key_maps(plan, choices)
        feed = expected = None
        if options.check and plan is not None:
            table_keys = {
                c.variable.name: keys[c.variable.name].keys
                if keys[c.variable.name].keys is not None
                else np.arange(c.variable.shape[0])
                for c in choices
            }
            feed = sample_feed(plan, table_keys, np.random.default_rng(0))
            expected = plan.predict(feed)  # before anything is exported from the loaded model
        work = AtomicDirectory(out_dir, overwrite=options.overwrite)
        try:
            manifest, warnings = _build(
                work.path,
                source,
                inventory,
                choices,
                plan,
                keys,
                model_name,
                options,
                feed,
                expected,
                progress,
                custom.specs,
            )
            work.commit()
        except BaseException:
            work.abort()
            raise
    manifest_doc = json.loads((out_dir / MANIFEST_FILE).read_text())
    del manifest
    return DissectResult(out_dir, manifest_doc, time.perf_counter() - started, warnings)


def _build(
    folder: Path,
    source: Source,
    inventory: Inventory,
    choices: list[TableChoice],
    plan: ModelPlan | None,
    keys: dict[str, KeyMap],
    model_name: str,
    options: DissectOptions,
    feed,
    expected,
    progress,
    custom_specs: list[str],
) -> tuple[dict, list[str]]:
    notes: list[str] = [n for n in inventory.notes if plan is not None or "IntegerLookup" not in n]
    warnings: list[str] = []
    ids_per_table: dict[str, int | None] = {}
    for lookup in plan.lookups if plan else []:
        known = ids_per_table.get(lookup.table_variable, 0)
        ids_per_table[lookup.table_variable] = (
            None
            if lookup.ids_per_sample is None or known is None
            else known + lookup.ids_per_sample
        )
    row_index_tables, unknown_ids_tables = [], []
    if plan is None:
        for choice in choices:
            if choice.variable.id_lookup:
                notes.append(
                    f"table '{choice.name}': keys are row indices, but the model maps raw ids "
                    f"to rows with IntegerLookup '{choice.variable.id_lookup}'; clients must "
                    "send row indices (dissect without --no-dense to key by vocabulary)"
                )
                row_index_tables.append(choice.name)
    tables, written = [], {}
    for table_id, choice in enumerate(choices):
        var = choice.variable
        summary = write_table(
            source,
            choice,
            folder / choice.name,
            keys[var.name],
            progress,
            allow_non_finite=options.allow_non_finite,
        )
        written[var.name] = (folder / choice.name, keys[var.name], var)
        per_sample = ids_per_table.get(var.name)
        if per_sample is None:
            per_sample = options.ids_per_sample or 1
            text = (
                f"table '{choice.name}': ids per sample unknown "
                f"({'no model' if plan is None else 'variable-length input'}); "
                f"maxnum_catfeature_query_per_table_per_sample set to {per_sample}"
                + ("" if options.ids_per_sample else " (pass --ids-per-sample N)")
            )
            notes.append(text)
            if not options.ids_per_sample:
                unknown_ids_tables.append(choice.name)
        key_doc = keys[var.name].to_dict()
        if keys[var.name].source != "row_index":
            notes.append(
                f"table '{choice.name}': keys are the raw ids of IntegerLookup "
                f"'{key_doc.get('layer')}'; {key_doc['oov_policy']}"
            )
        tables.append(
            {
                "table_id": table_id,
                "name": choice.name,
                "dir": choice.name,
                "variable": var.name,
                "source_key": var.location,
                "rows": var.shape[0],
                "dim": var.shape[1],
                "num_keys": summary.num_keys,
                "dtype": "float32",
                "source_dtype": var.dtype,
                "key_dtype": "int64",
                "keys": key_doc,
                "default_value": 0.0,
                "checksum": summary.checksum,
                "source_crc32c": None if var.crc32c is None else f"{var.crc32c:08x}",
                "detected_by": list(var.evidence) or ["explicit"],
                "ids_per_sample": per_sample,
            }
        )
    if row_index_tables:
        warnings.append(
            f"{_tables(row_index_tables)}: keys are row indices, but the model maps raw ids to "
            "rows with IntegerLookup layers; clients must send row indices (dissect without "
            "--no-dense to key by vocabulary)"
        )
    if unknown_ids_tables:
        why = (
            "variable-length input"
            if plan is not None
            else ("no model loaded: --no-dense" if source.loadable else "no model")
        )
        warnings.append(
            f"{_tables(unknown_ids_tables)}: ids per sample unknown ({why}); "
            "maxnum_catfeature_query_per_table_per_sample set to 1 (pass --ids-per-sample N)"
        )
    dense_dir = None
    if plan is not None:
        dense_dir = folder / DENSE_DIR
        plan.export_dense(dense_dir)
    ps_doc = build_ps_config(
        model_name,
        [
            {
                "name": t["name"],
                "dir": t["dir"],
                "dim": t["dim"],
                "ids_per_sample": t["ids_per_sample"],
                "default_value": t["default_value"],
            }
            for t in tables
        ],
        options.max_batch_size,
    )
    check_ps_config(ps_doc, folder, PS_FILE)
    (folder / PS_FILE).write_text(json.dumps(ps_doc, indent=2) + "\n")
    notes.append(
        "ps.json lists sparse_files relative to its own folder (hps resolves them "
        "there); NVIDIA's HPS resolves them against its working directory"
    )
    self_check = _self_check(source, plan, written, dense_dir, options, feed, expected)
    manifest = build_manifest(
        source=source,
        plan=plan,
        model_name=model_name,
        tables=tables,
        dense_dir=dense_dir,
        self_check=self_check,
        notes=notes,
        custom_objects=custom_specs,
    )
    check_manifest(manifest, str(folder / MANIFEST_FILE))
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest, warnings


def _tables(names: list[str]) -> str:
    """``table 'a'``, or ``52 tables (a, b, c, ...)``: one warning covers every table."""
    if len(names) == 1:
        return f"table '{names[0]}'"
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    return f"{len(names)} tables ({shown})"


def _self_check(source, plan, written, dense_dir, options, feed, expected) -> dict:
    if not options.check:
        return {"status": "skipped", "mode": "none", "note": "--no-check"}
    if plan is not None:
        result = model_check(
            plan,
            feed,
            expected,
            {var: (path, keys) for var, (path, keys, _) in written.items()},
            dense_dir,
        )
    else:
        result = tables_check(source, written)
    if result["status"] == "failed":
        diff = result.get("max_abs_diff")
        what = (
            f"max difference {diff:.3g} > {result['tolerance']:g}"
            if diff is not None and diff > result["tolerance"]
            else result.get("note", "")
        )
        raise CheckFailedError(
            f"self-check failed: {what}",
            location=str(source.path),
            hint="nothing was written; rerun with --debug, or --no-check "
            "to write the output anyway",
        )
    return result
