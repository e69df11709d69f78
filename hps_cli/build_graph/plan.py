"""What ``hps build-graph`` builds from: a checked manifest, the config and the source files.

Both kinds of source end up here: an ``hps dissect`` folder (its manifest as written) and a spec
over a dense SavedModel + ps.json (a manifest synthesized from them, spec.py). Everything is
validated before anything is written: the config first (schema, semantics, table files), then
the manifest (schema, tables and inputs consistent with the config, the dense SavedModel's
files against the manifest's checksums).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..runtime.config import PsConfig, validate_config_file
from ..runtime.errors import ConfigError, InvalidInputError, NotFoundError

RESERVED = {"model.keras", "manifest.json", "ps.json", "dense", "saved_model", "triton"}


@dataclass
class BuildPlan:
    built_from: str  # "dissect" or "spec"
    source: Path  # the dissect folder or the spec file
    manifest: dict  # paths in it are relative to the package being built
    ps_doc: dict  # the source ps.json, parsed
    ps_path: Path
    config: PsConfig
    model_index: int  # the model's index in ps_doc["models"]
    table_sources: list[Path]  # absolute source folder of each table, in table order
    dense_source: Path
    keras_hint: str  # the flavour the source model was written with (keras3, tf_keras, ...)

    @property
    def model_name(self) -> str:
        return self.manifest["model_name"]


def read_json(path: Path, what: str) -> object:
    if not path.is_file():
        raise NotFoundError(f"the {what} is missing", location=str(path))
    try:
        return json.loads(path.read_text())
    except UnicodeDecodeError as exc:
        raise InvalidInputError(
            f"the {what} is not UTF-8 text: {exc}", location=str(path)
        ) from None
    except json.JSONDecodeError as exc:
        raise InvalidInputError(
            f"the {what} is not valid JSON: {exc.msg}", location=f"{path}:{exc.lineno}:{exc.colno}"
        ) from None


def checked_config(path: Path) -> tuple[dict, PsConfig]:
    """The parsed document and typed config of a ps.json that validates (files included)."""
    if not path.is_file():
        raise NotFoundError("the HPS config is missing", location=str(path))
    result = validate_config_file(path, check_files=True)
    if not result.ok or result.config is None:
        first = result.errors[0]
        raise ConfigError(
            first.message,
            issues=result.issues,
            location=f"{path} {first.json_path}"
            if first.json_path != "$"
            else (first.location or str(path)),
            hint=first.hint or f"run 'hps validate-config {path}'",
        )
    return read_json(path, "HPS config"), result.config


def model_index(config: PsConfig, name: str | None, where: str) -> int:
    names = list(config.model_names)
    if name is None:
        if len(names) != 1:
            raise InvalidInputError(
                f"the config has {len(names)} models: name one",
                location=where,
                hint="models: " + ", ".join(names),
            )
        return 0
    if name not in names:
        raise NotFoundError(
            f"no model '{name}' in the config", location=where, hint="models: " + ", ".join(names)
        )
    return names.index(name)


def check_against_config(manifest: dict, config: PsConfig, where: str) -> None:
    """Tables and lookups of a manifest agree with the config (names, ids, dims)."""
    model = config.model(manifest["model_name"])
    tables = manifest["tables"]
    if len(tables) != model.num_tables:
        raise InvalidInputError(
            f"the manifest lists {len(tables)} tables, the config's model "
            f"'{model.model}' has {model.num_tables}",
            location=f"{where} $.tables",
        )
    for i, table in enumerate(tables):
        t = table["table_id"]
        if (
            t != i
            or model.table_name(t) != table["name"]
            or model.embedding_vecsize_per_table[t] != table["dim"]
        ):
            raise InvalidInputError(
                f"table '{table['name']}' (table_id {t}, dim {table['dim']}) does not match "
                f"the config's table {i} '{model.table_name(i)}' (dim "
                f"{model.embedding_vecsize_per_table[i]})",
                location=f"{where} $.tables[{i}]",
            )
    for i, spec in enumerate(manifest["inputs"]):
        for j, lookup in enumerate(spec.get("lookups", [])):
            t = lookup["table_id"]
            if not 0 <= t < model.num_tables or model.table_name(t) != lookup["table"]:
                raise InvalidInputError(
                    f"lookup of table '{lookup['table']}' (table_id {t}) does not match the config",
                    location=f"{where} $.inputs[{i}].lookups[{j}]",
                )
            if lookup["combiner"] != "none" and spec["format"] != "sparse":
                raise InvalidInputError(
                    f"combiner '{lookup['combiner']}' needs sparse ids (a SparseTensor input); "
                    f"input '{spec['name']}' is dense",
                    location=f"{where} $.inputs[{i}].lookups[{j}].combiner",
                )
            if lookup["combiner"] == "none" and spec["format"] == "sparse":
                raise InvalidInputError(
                    f"sparse input '{spec['name']}' needs a combiner (sum, mean or sqrtn)",
                    location=f"{where} $.inputs[{i}].lookups[{j}].combiner",
                )
    dense = manifest["dense"]
    fed = [lk["dense_input"] for s in manifest["inputs"] for lk in s.get("lookups", [])]
    fed += [s["dense_input"] for s in manifest["inputs"] if "dense_input" in s]
    wanted = [i["name"] for i in dense["inputs"]]
    if sorted(fed) != sorted(wanted):
        raise InvalidInputError(
            f"the inputs feed dense inputs {sorted(fed)}, the dense part takes {sorted(wanted)}",
            location=f"{where} $.inputs",
            hint="every dense input must be fed exactly once",
        )


def table_dir_name(name: str) -> str:
    """A table's folder in the package (its name, unless that is a reserved file name)."""
    return f"table_{name}" if name in RESERVED else name
