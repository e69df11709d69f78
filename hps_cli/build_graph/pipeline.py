"""``hps build-graph``: an inference package from a dissect output or a spec, written atomically.

Order: read and check the source (config first, then manifest or spec, tables, dense files);
refuse an OUT_DIR that exists (without overwrite) or overlaps the source, and tables too big
for the deployable SavedModel; then, in a folder beside OUT_DIR: hard-link (or copy) the tables
and the dense SavedModel, write ps.json with sparse_files relative to the package, build the
Keras model with the HPS layers and save it as ``model.keras``, export it as the deployable
SavedModel with its TF Serving and Triton layouts (deployable.py; unless turned off), write
manifest.json with its ``inference`` section, check config and manifest again, and rename the
folder into place. Any error leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .. import __version__
from ..common.custom_objects import merged_specs, resolve, resolve_recorded, use_keras_of
from ..dissect.manifest import manifest_errors
from ..runtime.atomic import AtomicDirectory, check_destination
from ..runtime.errors import CheckFailedError, InvalidInputError
from .deployable import DEFAULT_MAX_BYTES
from .plan import BuildPlan, check_against_config, checked_config

KERAS_CHOICES = ("auto", "keras3", "tf_keras")


@dataclass
class BuildOptions:
    keras: str = "auto"  # auto: tf_keras when the source model was written by tf_keras
    overwrite: bool = False
    saved_model: bool = True  # also write the deployable SavedModel (deployable.py)
    saved_model_version: int = 1
    saved_model_max_bytes: int = DEFAULT_MAX_BYTES
    # MODULE[:ATTR] specs imported before the dense part loads (custom TF ops), recorded in the
    # package with those the dissect manifest names (common/custom_objects.py)
    custom_objects: tuple[str, ...] = ()


@dataclass
class BuildResult:
    out_dir: Path
    manifest: dict
    seconds: float
    linked_files: int = 0
    copied_files: int = 0
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        inference = self.manifest["inference"]
        return {
            "out_dir": str(self.out_dir),
            "built_from": inference["built_from"],
            "model_file": inference["model_file"],
            "keras": inference["keras"],
            "model_name": self.manifest["model_name"],
            "tables": [t["name"] for t in self.manifest["tables"]],
            "inputs": inference["inputs"],
            "outputs": inference["outputs"],
            "layers": inference["layers"],
            "saved_model": inference.get("saved_model"),
            "linked_files": self.linked_files,
            "copied_files": self.copied_files,
            "seconds": round(self.seconds, 3),
            "warnings": self.warnings,
        }


def read_source(source: Path):
    """The build plan of a dissect folder or a spec file."""
    if source.is_file():
        from .spec_source import read_spec

        return read_spec(source)
    from .dissect_source import read_dissect

    return read_dissect(source)


def _overlaps(a: Path, b: Path) -> bool:
    a, b = a.resolve(), b.resolve()
    return a == b or a in b.parents or b in a.parents


def _link_tree(src: Path, dest: Path, counts: list[int]) -> None:
    """Hard-link every file of ``src`` under ``dest`` (tables and SavedModels are never modified
    in place: our writers replace them atomically), copying where links are not possible."""
    dest.mkdir()
    for path in sorted(src.rglob("*")):
        target = dest / path.relative_to(src)
        if path.is_dir():
            target.mkdir(exist_ok=True)
            continue
        try:
            os.link(path, target)
            counts[0] += 1
        except OSError:
            shutil.copy2(path, target)
            counts[1] += 1


def _package_config(plan: BuildPlan) -> dict:
    doc = copy.deepcopy(plan.ps_doc)
    model = doc["models"][plan.model_index]
    model["sparse_files"] = [t["dir"] for t in plan.manifest["tables"]]
    doc["models"] = [model]  # the package serves this model only
    return doc


def _flavour(option: str, plan: BuildPlan) -> str:
    if option == "auto":
        return "tf_keras" if plan.keras_hint == "tf_keras" else "keras3"
    if option not in KERAS_CHOICES:
        raise InvalidInputError(
            f"unknown Keras flavour '{option}'", location="--keras", hint="auto, keras3 or tf_keras"
        )
    return option


def build_graph(
    source: Path | str, out_dir: Path | str, options: BuildOptions | None = None
) -> BuildResult:
    """Write the inference package of ``source`` (a dissect folder or a spec) to ``out_dir``."""
    options = options or BuildOptions()
    started = time.perf_counter()
    source, out_dir = Path(source), Path(out_dir)
    if not source.exists():
        raise InvalidInputError(
            "no such file or folder",
            location=str(source),
            hint="give an 'hps dissect' output folder or a spec file",
        )
    plan = read_source(source)
    check_against_config(
        plan.manifest,
        plan.config,
        str(plan.source / "manifest.json" if plan.built_from == "dissect" else plan.source),
    )
    flavour = _flavour(options.keras, plan)
    for path in [plan.source, plan.ps_path, plan.dense_source, *plan.table_sources]:
        if _overlaps(out_dir, path):
            raise InvalidInputError(
                "OUT_DIR overlaps the source it is built from",
                location=str(out_dir),
                hint="write the package elsewhere",
            )
    check_destination(out_dir, options.overwrite)
    warnings = []
    if plan.config.models[plan.model_index].hit_rate_threshold < 1.0:
        warnings.append(
            "hit_rate_threshold is below 1: a lookup may answer missed keys with "
            "the default vector while they are inserted (set 1.0 for exact results)"
        )

    recorded = plan.manifest.get("custom_objects", [])
    if options.custom_objects or recorded:
        use_keras_of(flavour)
        with contextlib.redirect_stdout(sys.stderr):  # user code's prints are no data
            custom = resolve(list(options.custom_objects))
            _, skipped = resolve_recorded([s for s in recorded if s not in custom.specs])
        warnings.extend(skipped)
        recorded = merged_specs(recorded, custom.specs)

    from ..common.tf_loader import import_tensorflow

    tf = import_tensorflow("hps build-graph")
    if options.saved_model:  # refused before anything is written
        from .deployable import check_size

        check_size(plan.manifest, options.saved_model_max_bytes)
    from ..tf import layers_for
    from ..tf.process_runtime import package_base
    from .keras_model import build_model

    layers = layers_for(flavour)
    counts = [0, 0]
    work = AtomicDirectory(out_dir, overwrite=options.overwrite)
    try:
        for table, src in zip(plan.manifest["tables"], plan.table_sources):
            _link_tree(src, work.path / table["dir"], counts)
        _link_tree(plan.dense_source, work.path / "dense", counts)
        ps_path = work.path / "ps.json"
        ps_path.write_text(json.dumps(_package_config(plan), indent=2) + "\n")
        _, config = checked_config(ps_path)
        with package_base(work.path):
            model, input_docs, layer_docs = build_model(
                plan.manifest, layers, config.supportlonglong
            )
            model.save(str(work.path / "model.keras"))
            deployable = None
            if options.saved_model:
                from .deployable import write_deployable

                deployable = write_deployable(
                    model,
                    work.path,
                    plan.manifest,
                    input_docs,
                    version=options.saved_model_version,
                    max_batch_size=config.models[0].max_batch_size,
                    max_bytes=options.saved_model_max_bytes,
                    link_tree=lambda src, dest: _link_tree(src, dest, counts),
                )
        manifest = copy.deepcopy(plan.manifest)
        if recorded:
            manifest["custom_objects"] = recorded
        manifest["inference"] = {
            "format": "hps-inference-package",
            "version": 1,
            "created": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
            "tool": {
                "name": "hps",
                "version": __version__,
                "tensorflow": tf.__version__,
                "keras": layers.keras.__version__,
            },
            "built_from": plan.built_from,
            "source": str(plan.source.resolve()),
            "model_file": "model.keras",
            "keras": flavour,
            "keras_version": layers.keras.__version__,
            "inputs": input_docs,
            "outputs": [
                {k: o[k] for k in ("name", "dtype", "shape")} for o in manifest["dense"]["outputs"]
            ],
            "layers": layer_docs,
        }
        if deployable is not None:
            manifest["inference"]["saved_model"] = deployable
        errors = manifest_errors(manifest)
        if errors:
            raise CheckFailedError(
                f"the package manifest does not match its schema: {errors[0]}",
                location=str(work.path / "manifest.json"),
            )
        (work.path / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        work.commit()
    except BaseException:
        work.abort()
        raise
    return BuildResult(
        out_dir, manifest, time.perf_counter() - started, counts[0], counts[1], warnings
    )
