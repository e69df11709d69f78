"""Reading an ``hps dissect`` output folder as the source of an inference package."""

from __future__ import annotations

import copy
from pathlib import Path

from ..dissect.manifest import MANIFEST_FILE, file_checksums, manifest_errors
from ..runtime.errors import InvalidInputError, NotFoundError
from .plan import BuildPlan, checked_config, model_index, read_json, table_dir_name


def read_dissect(folder: Path) -> BuildPlan:
    """Check a dissect folder (config first, then manifest, tables and dense files)."""
    if not folder.is_dir():
        raise NotFoundError(
            "no such folder",
            location=str(folder),
            hint="give an 'hps dissect' output folder or a build-graph spec file",
        )
    manifest_path = folder / MANIFEST_FILE
    if not manifest_path.is_file():
        raise NotFoundError(
            "not an 'hps dissect' output (manifest.json is missing)",
            location=str(folder),
            hint="run 'hps dissect MODEL DIR' first, or give a spec file",
        )
    manifest = read_json(manifest_path, "manifest")
    ps_name = manifest.get("ps_config") if isinstance(manifest, dict) else None
    ps_path = folder / (ps_name if isinstance(ps_name, str) and ps_name else "ps.json")
    ps_doc, config = checked_config(ps_path)
    errors = manifest_errors(manifest)
    if errors:
        raise InvalidInputError(
            f"the manifest does not match its schema: {errors[0]}", location=str(manifest_path)
        )
    where = str(manifest_path)
    if manifest["dense"] is None or not manifest["inputs"]:
        raise InvalidInputError(
            "the dissect output has tables only (no dense part, no model inputs)",
            location=f"{where} $.dense",
            hint=_tables_only_hint(manifest),
        )
    index = model_index(config, manifest["model_name"], f"{ps_path} $.models")
    dense_source = folder / manifest["dense"]["dir"]
    _check_dense_files(dense_source, manifest["dense"]["checksums"], where)
    plan_manifest = copy.deepcopy(manifest)
    plan_manifest.pop("inference", None)  # rebuilding from a package: a new section follows
    sources = []
    for table in plan_manifest["tables"]:
        sources.append(folder / table["dir"])
        table["dir"] = table_dir_name(table["name"])
    plan_manifest["dense"]["dir"] = "dense"
    plan_manifest["ps_config"] = "ps.json"
    return BuildPlan(
        "dissect",
        folder,
        plan_manifest,
        ps_doc,
        ps_path,
        config,
        index,
        sources,
        dense_source,
        manifest["source"]["keras"],
    )


def _tables_only_hint(manifest: dict) -> str:
    """What leads to a package from a tables-only output: it depends on what was dissected."""
    source = manifest.get("source") or {}
    path = source.get("path") or "MODEL"
    values_only = source.get("format") == "checkpoint" or any(
        "weights-only" in note for note in manifest.get("notes", [])
    )
    spec = (
        "write a build-graph spec naming a dense SavedModel of your own and this ps.json "
        "(docs/tf_plugin.md)"
    )
    if values_only:
        return (
            f"{path} holds values only: dissect the model itself (SavedModel, .keras or .h5) "
            f"instead, or {spec}"
        )
    return (
        f"it was dissected with --no-dense: run 'hps dissect {path} OUT' without it (models "
        "with custom layers: add --custom-objects MODULE[:ATTR], e.g. "
        f"deepctr.layers:custom_objects), or {spec}"
    )


def _check_dense_files(dense: Path, checksums: dict, where: str) -> None:
    if not (dense / "saved_model.pb").is_file():
        raise NotFoundError("the dense SavedModel is missing", location=str(dense))
    found = file_checksums(dense)
    for name, crc in sorted(checksums.items()):
        if found.get(name) != crc:
            state = "is missing" if name not in found else "changed since dissect wrote it"
            raise InvalidInputError(
                f"dense file {name} {state} (CRC32 in the manifest: {crc})",
                location=str(dense / name),
                hint="dissect the model again",
            )
    extra = sorted(set(found) - set(checksums))
    if extra:
        raise InvalidInputError(
            f"dense file {extra[0]} is not in the manifest",
            location=str(dense / extra[0]),
            hint="dissect the model again",
        )
