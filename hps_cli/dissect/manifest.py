"""manifest.json: the dissected model described for ``hps build-graph`` and ``hps serve``.

The structure is fixed by ``schemas/manifest.schema.json`` (Draft 2020-12), and every manifest
is validated against it before the output is committed.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from .. import __version__
from ..common.tf_loader import tensorflow_version
from ..runtime.checksum import file_crc32
from ..runtime.errors import CheckFailedError
from ..runtime.resources import load_schema
from .plan import ModelPlan
from .source_types import Source

SCHEMA = "manifest.schema.json"
MANIFEST_FILE = "manifest.json"


def file_checksums(folder: Path) -> dict[str, str]:
    """CRC32 (hex) of every file under ``folder``, by relative path."""
    sums = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        sums[path.relative_to(folder).as_posix()] = f"{file_crc32(path)[0]:08x}"
    return sums


def _source_doc(source: Source, plan: ModelPlan | None) -> dict:
    files = getattr(source, "data_files", None) or [source.path]
    return {
        "path": str(Path(source.path).resolve()),
        "format": source.format,
        "keras": source.flavour,
        "keras_version": source.keras_version,
        "signature": plan.signature if plan is not None else None,
        "data_files": [
            {"path": str(Path(f).resolve()), "bytes": Path(f).stat().st_size}
            for f in files
            if Path(f).is_file()
        ],
    }


def _inputs_doc(
    plan: ModelPlan | None, table_ids: dict[str, int], table_names: dict[str, str]
) -> list:
    if plan is None:
        return []
    docs = []
    direct = {d.model_input: d.dense_input.name for d in plan.direct}
    for spec in plan.inputs:
        lookups = [lk for lk in plan.lookups if lk.model_input == spec.name]
        doc = {
            "name": spec.name,
            "dtype": spec.dtype,
            "shape": list(spec.shape),
            "format": spec.format,
            "role": "sparse_ids" if lookups else "dense",
        }
        if spec.components:
            doc["components"] = dict(spec.components)
        if lookups:
            doc["lookups"] = [
                {
                    "table": table_names[lk.table_variable],
                    "table_id": table_ids[lk.table_variable],
                    "combiner": lk.combiner,
                    "ids_per_sample": lk.ids_per_sample,
                    "dense_input": lk.dense_input.name,
                }
                for lk in lookups
            ]
        if spec.name in direct:
            doc["dense_input"] = direct[spec.name]
        docs.append(doc)
    return docs


def _dense_doc(
    plan: ModelPlan | None, dense_dir: Path | None, table_names: dict[str, str]
) -> dict | None:
    if plan is None or dense_dir is None:
        return None
    inputs = []
    for lk in plan.lookups:
        inputs.append(
            {
                **lk.dense_input.to_dict(),
                "kind": "embedding",
                "table": table_names[lk.table_variable],
                "model_input": lk.model_input,
                "combiner": lk.combiner,
            }
        )
    for direct in plan.direct:
        inputs.append(
            {
                **direct.dense_input.to_dict(),
                "kind": "model_input",
                "model_input": direct.model_input,
            }
        )
    return {
        "dir": dense_dir.name,
        "signature": "serving_default",
        "cut": plan.cut,
        "variables": "kept" if plan.variables_kept else "frozen",
        "inputs": inputs,
        "outputs": [o.to_dict() for o in plan.outputs],
        "checksums": file_checksums(dense_dir),
    }


def build_manifest(
    *,
    source: Source,
    plan: ModelPlan | None,
    model_name: str,
    tables: list[dict],
    dense_dir: Path | None,
    self_check: dict,
    notes: list[str],
    ps_config: str = "ps.json",
    custom_objects: list[str] = (),
) -> dict:
    """``tables``: dicts of the table entries (see the schema), in ps.json order;
    ``custom_objects``: the MODULE[:ATTR] specs the model was loaded with (recorded when any)."""
    table_ids = {t["variable"]: t["table_id"] for t in tables}
    table_names = {t["variable"]: t["name"] for t in tables}
    doc = {
        "format": "hps-dissect-manifest",
        "version": 1,
        "created": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        "tool": {"name": "hps", "version": __version__, "tensorflow": tensorflow_version()},
        "model_name": model_name,
        "ps_config": ps_config,
        "source": _source_doc(source, plan),
        "tables": tables,
        "inputs": _inputs_doc(plan, table_ids, table_names),
        "dense": _dense_doc(plan, dense_dir, table_names),
        "self_check": self_check,
        "notes": notes,
    }
    if custom_objects:
        doc["custom_objects"] = list(custom_objects)
    return doc


def manifest_errors(doc: object) -> list[str]:
    """Schema violations of a manifest, as ``$.json.path: message`` lines."""
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(load_schema(SCHEMA))
    out = []
    for error in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path)):
        path = "$" + "".join(
            f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path
        )
        out.append(f"{path}: {error.message}")
    return out


def check_manifest(doc: dict, location: str) -> None:
    errors = manifest_errors(doc)
    if errors:
        raise CheckFailedError(
            f"the manifest does not match its schema: {errors[0]}", location=location
        )
