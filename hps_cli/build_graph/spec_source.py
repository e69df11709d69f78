"""A build-graph spec: a dense SavedModel + ps.json + which inputs go to which tables.

    {"dense": "dense_sm", "ps_config": "ps.json", "model_name": "dlrm",
     "inputs": [
       {"name": "user", "lookups": [{"table": "user_emb", "dense_input": "emb_user"}]},
       {"name": "ids", "format": "sparse",
        "lookups": [{"table": "params", "combiner": "mean", "dense_input": "emb_ids"}]},
       {"name": "dense", "dense_input": "dense"}]}

Schema: schemas/build_graph_spec.schema.json. From it, the config and the SavedModel's
signature a manifest like dissect's is synthesized (tables from ps.json, ``cut: external``,
self-check skipped), so a package built from a spec looks like one built from dissect.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from .. import __version__
from ..dissect.manifest import file_checksums
from ..runtime.config import ModelConfig
from ..runtime.errors import InvalidInputError, NotFoundError
from ..runtime.resources import load_schema
from ..runtime.startup_load import table_checksum
from ..runtime.table import TableReader
from .plan import BuildPlan, checked_config, model_index, read_json, table_dir_name

SCHEMA = "build_graph_spec.schema.json"


def _schema_error(spec: object) -> str | None:
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(load_schema(SCHEMA))
    errors = sorted(validator.iter_errors(spec), key=lambda e: list(e.absolute_path))
    if not errors:
        return None
    error = errors[0]
    path = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    return f"{path}: {error.message}"


def _table_id(model: ModelConfig, table: str | int, where: str) -> int:
    names = list(model.embedding_table_names)
    if isinstance(table, int):
        if not 0 <= table < len(names):
            raise NotFoundError(
                f"model '{model.model}' has no table {table}",
                location=where,
                hint="tables: " + ", ".join(names),
            )
        return table
    if table not in names:
        raise NotFoundError(
            f"model '{model.model}' has no table '{table}'",
            location=where,
            hint="tables: " + ", ".join(names),
        )
    return names.index(table)


def _compatible(a: list, b: list) -> bool:
    return len(a) == len(b) and all(x is None or y is None or x == y for x, y in zip(a, b))


def _tables(model: ModelConfig, key_dtype: str) -> tuple[list[dict], list[Path]]:
    docs, sources = [], []
    for t in range(model.num_tables):
        path = model.table_path(t).resolve()
        dim = model.embedding_vecsize_per_table[t]
        with TableReader(path, dim) as reader:
            rows, checksum = reader.num_keys, table_checksum(reader)
        name = model.table_name(t)
        docs.append(
            {
                "table_id": t,
                "name": name,
                "dir": table_dir_name(name),
                "variable": name,
                "source_key": str(path),
                "rows": rows,
                "dim": dim,
                "num_keys": rows,
                "dtype": "float32",
                "source_dtype": "float32",
                "key_dtype": key_dtype,
                "keys": {"source": "table"},
                "ids_per_sample": model.maxnum_catfeature_query_per_table_per_sample[t],
                "default_value": model.default_value(t),
                "checksum": checksum,
                "source_crc32c": None,
                "detected_by": ["spec"],
            }
        )
        sources.append(path)
    return docs, sources


def read_spec(spec_path: Path) -> BuildPlan:
    """Check a spec (schema, config, tables, SavedModel signature) and plan the package."""
    spec = read_json(spec_path, "build-graph spec")
    error = _schema_error(spec)
    if error:
        raise InvalidInputError(
            f"invalid spec: {error}",
            location=str(spec_path),
            hint="see docs/tf_plugin.md, 'The spec'",
        )
    base = spec_path.parent
    ps_path = (base / spec["ps_config"]).resolve()
    ps_doc, config = checked_config(ps_path)
    index = model_index(config, spec.get("model_name"), f"{spec_path} $.model_name")
    model = config.models[index]
    key_dtype = "int64" if config.supportlonglong else "uint32"
    id_dtype = "int64" if config.supportlonglong else "int32"
    dense_path = (base / spec["dense"]).resolve()
    signature = spec.get("signature", "serving_default")
    from ..common.tf_loader import import_tensorflow

    import_tensorflow("hps build-graph")
    from ..tf.dense_layer import load_signature

    loaded = load_signature(dense_path, signature)
    sig_inputs = {
        name: {
            "name": name,
            "dtype": s.dtype.name,
            "shape": s.shape.as_list() if s.shape.rank is not None else [None],
        }
        for name, s in loaded.inputs.items()
    }
    tables, sources = _tables(model, key_dtype)
    inputs, dense_inputs, seen = [], [], set()
    for i, item in enumerate(spec["inputs"]):
        where = f"{spec_path} $.inputs[{i}]"
        name, fmt = item["name"], item.get("format", "dense")
        if name in seen:
            raise InvalidInputError(f"input '{name}' is listed twice", location=where)
        seen.add(name)
        lookups = []
        shape = item.get("shape")
        for j, lookup in enumerate(item.get("lookups", [])):
            at = f"{where}.lookups[{j}]"
            t = _table_id(model, lookup["table"], f"{at}.table")
            combiner = lookup.get("combiner", "none")
            target = sig_inputs.get(lookup["dense_input"])
            if target is None:
                raise NotFoundError(
                    f"the dense signature has no input '{lookup['dense_input']}'",
                    location=f"{at}.dense_input",
                    hint="inputs: " + ", ".join(sorted(sig_inputs)),
                )
            dim = tables[t]["dim"]
            sig_shape = target["shape"]
            if (
                not sig_shape
                or sig_shape[-1] not in (None, dim)
                or (combiner != "none" and len(sig_shape) != 2)
            ):
                wanted = "[batch, dim]" if combiner != "none" else "[..., dim]"
                raise InvalidInputError(
                    f"dense input '{target['name']}' has shape {sig_shape}; a lookup of table "
                    f"'{tables[t]['name']}' with combiner {combiner} gives {wanted} with dim "
                    f"{dim}",
                    location=at,
                )
            if combiner == "none" and fmt == "dense":
                ids_shape = sig_shape[:-1]
                if shape is not None and not _compatible(shape, ids_shape):
                    raise InvalidInputError(
                        f"shape {shape} does not give lookup results of shape {sig_shape}",
                        location=f"{where}.shape",
                    )
                shape = shape or ids_shape
            lookups.append(
                {
                    "table": tables[t]["name"],
                    "table_id": t,
                    "combiner": combiner,
                    "ids_per_sample": tables[t]["ids_per_sample"],
                    "dense_input": target["name"],
                }
            )
            dense_inputs.append(
                {
                    **target,
                    "kind": "embedding",
                    "table": tables[t]["name"],
                    "model_input": name,
                    "combiner": combiner,
                }
            )
        doc = {"name": name, "format": fmt, "role": "sparse_ids" if lookups else "dense"}
        if "dense_input" in item:
            target = sig_inputs.get(item["dense_input"])
            if target is None:
                raise NotFoundError(
                    f"the dense signature has no input '{item['dense_input']}'",
                    location=f"{where}.dense_input",
                    hint="inputs: " + ", ".join(sorted(sig_inputs)),
                )
            if shape is not None and not _compatible(shape, target["shape"]):
                raise InvalidInputError(
                    f"shape {shape} does not match dense input "
                    f"'{target['name']}' {target['shape']}",
                    location=f"{where}.shape",
                )
            shape = shape or target["shape"]
            doc["dense_input"] = target["name"]
            dense_inputs.append({**target, "kind": "model_input", "model_input": name})
        if not lookups and "dense_input" not in item:
            raise InvalidInputError(
                f"input '{name}' feeds nothing (give lookups or dense_input)", location=where
            )
        if fmt == "sparse" and "dense_input" in item:
            raise InvalidInputError(
                f"sparse input '{name}' cannot be passed to the dense part",
                location=f"{where}.dense_input",
            )
        doc["dtype"] = item.get("dtype") or (
            id_dtype if lookups else sig_inputs[item["dense_input"]]["dtype"]
        )
        doc["shape"] = shape if shape is not None else [None, None]
        if lookups:
            doc["lookups"] = lookups
        inputs.append(doc)
    fed = sorted(d["name"] for d in dense_inputs)
    if fed != sorted(sig_inputs):
        raise InvalidInputError(
            f"the inputs feed dense inputs {fed}, the dense part takes {sorted(sig_inputs)}",
            location=f"{spec_path} $.inputs",
            hint="every dense input must be fed exactly once",
        )
    outputs = []
    for name in loaded.outputs:
        spec_out = loaded.function.structured_outputs[name]
        outputs.append(
            {
                "name": name,
                "dtype": spec_out.dtype.name,
                "shape": spec_out.shape.as_list() if spec_out.shape.rank is not None else [None],
            }
        )
    import tensorflow as tf

    manifest = {
        "format": "hps-dissect-manifest",
        "version": 1,
        "created": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        "tool": {"name": "hps", "version": __version__, "tensorflow": tf.__version__},
        "model_name": model.model,
        "ps_config": "ps.json",
        "source": {
            "path": str(dense_path),
            "format": "saved_model",
            "keras": "unknown",
            "keras_version": None,
            "signature": signature,
            "data_files": [],
        },
        "tables": tables,
        "inputs": inputs,
        "dense": {
            "dir": "dense",
            "signature": signature,
            "cut": "external",
            "variables": "kept" if loaded.function.variables else "frozen",
            "inputs": dense_inputs,
            "outputs": outputs,
            "checksums": file_checksums(dense_path),
        },
        "self_check": {
            "status": "skipped",
            "mode": "none",
            "note": "built from a spec: there is no original model to compare with",
        },
        "notes": [f"built by hps build-graph from the spec {spec_path.resolve()}"],
    }
    return BuildPlan(
        "spec",
        spec_path.resolve(),
        manifest,
        ps_doc,
        ps_path,
        config,
        index,
        sources,
        dense_path,
        "keras3",
    )
