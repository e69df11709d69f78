"""Inference models: a package folder (``manifest.json`` + ``ps.json`` + ``dense/``, as written
by ``hps dissect`` and ``hps build-graph``) served end to end.

Request inputs are the original model's inputs, by name (manifest ``inputs``): dense tensors
with a leading batch dimension, and SparseTensor inputs as their three components under the
original signature's names (manifest ``components``; ``<input>.indices``, ``<input>.values``,
``<input>.dense_shape`` when the manifest names none): ``indices`` INT64 ``[nnz, rank]``,
``values`` ``[nnz]``, ``dense_shape`` INT64 ``[rank]``. For each lookup of the manifest, the ids
are looked up in the HPS runtime (one call per table per batch), combined per sample
(``none``: one vector per id; ``sum`` / ``mean`` / ``sqrtn`` over the ids of a sample, as HPS's
SparseLookupLayer), and fed to the dense SavedModel's ``serving_default`` with the other
inputs; its outputs are the model's.

The tables are those of the server's runtime when the ps.json given to ``hps serve`` holds the
package's model over the same table folders, so admin updates reach both the lookup and the
inference model; otherwise the package's own ps.json is opened as a runtime of its own.

TensorFlow is imported only here, when a package is loaded.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from ..runtime.errors import ConfigError, InvalidInputError
from .id_inputs import as_keys, check_id_datatype, fit_dtype
from .models import ServedModel, TensorSpec, Work
from .protocol import DATATYPES, InferRequest, InferResult, Tensor, datatype_of, invalid

log = logging.getLogger("hps_cli.serve")

COMBINERS = ("none", "sum", "mean", "sqrtn")


def read_manifest(folder: Path) -> dict:
    """The package's manifest, with the fields serving needs checked."""
    path = folder / "manifest.json"
    try:
        doc = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read the manifest: {exc.strerror}", location=str(path)) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"the manifest is not valid JSON: {exc}", location=str(path)) from None
    where = str(path)
    if not isinstance(doc, dict) or doc.get("version") != 1:
        raise ConfigError(
            "not a version 1 hps manifest",
            location=f"{where} $.version",
            hint="write it with hps dissect or hps build-graph of this version",
        )
    for key, kind in (("model_name", str), ("ps_config", str), ("tables", list), ("inputs", list)):
        if not isinstance(doc.get(key), kind):
            raise ConfigError(
                f"'{key}' is missing or not a {kind.__name__}", location=f"{where} $.{key}"
            )
    if not isinstance(doc.get("dense"), dict):
        raise ConfigError(
            "the package has no dense part (manifest dense is null): it holds tables only",
            location=f"{where} $.dense",
            hint="serve its ps.json as lookup models (--config)",
        )
    return doc


class InferenceModel(ServedModel):
    """A package served end to end.

    Args:
        name: the served name (the package's folder name).
        folder: the package.
        runtime: the ``ServedRuntime`` holding the package's tables (see the module doc).
    """

    kind = "inference"
    platform = "hps_tensorflow"

    def __init__(self, name: str, folder: Path, runtime, manifest: dict | None = None):
        manifest = manifest or read_manifest(folder)
        hps_model = manifest["model_name"]
        try:
            cfg = runtime.config.model(hps_model)
        except KeyError:
            raise ConfigError(
                f"the runtime has no model '{hps_model}'", location=str(folder / "manifest.json")
            ) from None
        super().__init__(name, runtime, hps_model, cfg.max_batch_size)
        self.devices = tuple(cfg.deployed_device_list)
        self.folder = Path(folder)
        self.manifest = manifest
        self._check_tables(cfg)
        self._plan_inputs()
        self._load_dense()

    # -- start-up

    def _check_tables(self, cfg) -> None:
        names = list(cfg.embedding_table_names)
        for table in self.manifest["tables"]:
            tid = table.get("table_id")
            if (
                not isinstance(tid, int)
                or not 0 <= tid < cfg.num_tables
                or names[tid] != table.get("name")
                or cfg.embedding_vecsize_per_table[tid] != table.get("dim")
            ):
                raise ConfigError(
                    f"table {table.get('name')!r} (id {tid}, dim {table.get('dim')}) of the "
                    f"manifest is not table {tid} of model '{self.hps_model}' in "
                    f"{self.runtime.path}",
                    location=str(self.folder / "manifest.json"),
                    hint="serve the package with its own ps.json, or regenerate it",
                )
        self.table_dims = {t["table_id"]: t["dim"] for t in self.manifest["tables"]}

    def _plan_inputs(self) -> None:
        """Served inputs, the lookups to run and the dense inputs passed through."""
        dense = self.manifest["dense"]
        dense_inputs = {d["name"]: d for d in dense.get("inputs", [])}
        self.lookups = []  # (served input, format, table_id, combiner, dense input, dtype)
        self.direct = []  # (served tensor name, dense input name, dtype)
        self.sparse = {}  # input name -> components {indices, values, dense_shape}
        self.batch_inputs = []  # dense-format served inputs: their dim 0 is the batch
        self.id_limits = {}  # served input -> most ids per sample (sparse inputs)
        self.id_tensors = {}  # served tensor holding ids -> the model's dtype (id_inputs.py)
        specs = []
        for spec in self.manifest["inputs"]:
            name, shape = spec["name"], [(-1 if d is None else int(d)) for d in spec["shape"]]
            datatype = datatype_of(spec["dtype"])
            if spec.get("format") == "sparse":
                comps = spec.get("components") or {
                    part: f"{name}.{part}" for part in ("indices", "values", "dense_shape")
                }
                self.sparse[name] = {"shape": shape, **comps}
                specs += [
                    TensorSpec(comps["indices"], "INT64", (-1, len(shape)), False),
                    TensorSpec(comps["values"], datatype, (-1,), False),
                    TensorSpec(comps["dense_shape"], "INT64", (len(shape),), False),
                ]
            else:
                if not shape or shape[0] != -1:
                    raise ConfigError(
                        f"input '{name}' has no batch dimension ({shape})",
                        location=str(self.folder / "manifest.json"),
                    )
                specs.append(TensorSpec(name, datatype, tuple(shape)))
                self.batch_inputs.append(name)
            if spec.get("role") == "sparse_ids":
                ids_tensor = comps["values"] if spec.get("format") == "sparse" else name
                self.id_tensors[ids_tensor] = spec["dtype"]
            for lookup in spec.get("lookups", []) if spec.get("role") == "sparse_ids" else []:
                combiner = lookup.get("combiner")
                if combiner not in COMBINERS or (
                    spec.get("format") == "sparse" and combiner == "none"
                ):
                    raise ConfigError(
                        f"combiner {combiner!r} of input '{name}' is not one of "
                        f"{', '.join(COMBINERS)} (sparse inputs: not none)",
                        location=str(self.folder / "manifest.json"),
                    )
                target = dense_inputs.get(lookup["dense_input"], {})
                self.lookups.append(
                    (
                        name,
                        spec.get("format"),
                        int(lookup["table_id"]),
                        combiner,
                        lookup["dense_input"],
                        target.get("dtype", "float32"),
                    )
                )
                if spec.get("format") == "sparse" and lookup.get("ids_per_sample"):
                    self.id_limits[name] = min(
                        self.id_limits.get(name, 1 << 62), int(lookup["ids_per_sample"])
                    )
            if spec.get("dense_input"):
                target = dense_inputs.get(spec["dense_input"], {})
                if spec.get("format") == "sparse":
                    raise ConfigError(
                        f"sparse input '{name}' is read by the dense part "
                        "directly, which hps serve does not support",
                        location=str(self.folder / "manifest.json"),
                    )
                self.direct.append((name, spec["dense_input"], target.get("dtype", spec["dtype"])))
        self.inputs = specs
        if self.sparse:
            self.config_max_batch_size = 0  # components have no common batch dimension
            self.inputs = [TensorSpec(s.name, s.datatype, s.shape, False) for s in specs]
        self.outputs = [
            TensorSpec(
                o["name"],
                datatype_of(o["dtype"]),
                tuple(-1 if d is None else int(d) for d in o["shape"]),
                bool(self.config_max_batch_size),
            )
            for o in dense.get("outputs", [])
        ]

    def _load_dense(self) -> None:
        from ..common.tf_loader import import_tensorflow

        tf = import_tensorflow("serving an inference model")
        self._tf = tf
        folder = self.folder / self.manifest["dense"]["dir"]
        signature = self.manifest["dense"].get("signature", "serving_default")
        try:
            self._root = tf.saved_model.load(str(folder))
            self._serve = self._root.signatures[signature]
        except (OSError, KeyError, ValueError) as exc:
            raise ConfigError(
                f"cannot load the dense SavedModel: {exc}", location=str(folder)
            ) from None
        self._dense_dtypes = {
            name: spec.dtype for name, spec in self._serve.structured_input_signature[1].items()
        }

    def parameters(self) -> dict:
        return {**super().parameters(), "package": str(self.folder)}

    # -- serving

    def prepare(self, request: InferRequest) -> Work:
        self.check_request(request)
        for spec in self.inputs:
            if spec.name in self.id_tensors:
                check_id_datatype(request.inputs[spec.name], self.id_tensors[spec.name])
            else:
                self.check_datatype(request, spec)
        batch = None
        for name in self.batch_inputs:
            spec = next(s for s in self.inputs if s.name == name)
            array = request.inputs[name].array
            _check_shape(array, spec.shape, name)
            if batch is not None and array.shape[0] != batch:
                raise invalid(
                    f"batch size {array.shape[0]} differs from {batch} of the other inputs", name
                )
            batch = array.shape[0]
        sparse = {}
        for name, comps in self.sparse.items():
            ids = _sparse_ids(request, comps, name, self.id_limits.get(name))
            if batch is not None and ids["batch"] != batch:
                raise invalid(
                    f"dense_shape[0] = {ids['batch']} differs from the batch size "
                    f"{batch} of the other inputs",
                    comps["dense_shape"],
                )
            batch = ids["batch"]
            sparse[name] = ids
        if not batch:
            raise invalid("the batch is empty (0 samples)", "inputs")
        if batch > self.max_batch_size:
            raise invalid(
                f"batch size {batch} is above max_batch_size {self.max_batch_size} of "
                f"model '{self.name}'",
                "inputs",
            )
        arrays = {name: request.inputs[name].array for name in self.batch_inputs}
        long_keys = self.runtime.config.supportlonglong
        keys = {}
        for name in self.batch_inputs:
            if name in self.id_tensors:
                keys[name] = as_keys(arrays[name], long_keys, name)
        for name, ids in sparse.items():
            ids["values"] = as_keys(ids["values"], long_keys, self.sparse[name]["values"])
        for name, _, dtype in self.direct:  # ids the dense part also reads must fit it
            arrays[name] = fit_dtype(arrays[name], dtype, name)  # checked and cast once, here
        return Work(batch, request, {"arrays": arrays, "sparse": sparse, "keys": keys})

    def execute(self, works: list[Work], device: int | None = None) -> list[InferResult]:
        """The batch's lookups on ``device`` (default: the last deployed one), then one dense
        call."""
        arrays, sparse, sizes = _merge(works, self.batch_inputs, list(self.sparse))
        keys = _merge_keys(works)
        feed = {}
        hps = self.runtime.hps
        for name, fmt, table_id, combiner, dense_input, dtype in self.lookups:
            dim = self.table_dims[table_id]
            if fmt == "sparse":
                ids = sparse[name]
                vectors = hps.lookup(
                    ids["values"].astype(np.int64, copy=False), self.hps_model, table_id, device
                )
                value = _segment_combine(vectors, ids["rows"], ids["batch"], combiner)
            else:
                ids = keys[name]
                vectors = hps.lookup(ids.reshape(-1), self.hps_model, table_id, device)
                value = vectors.reshape(ids.shape + (dim,))
                if combiner != "none":
                    value = _combine(value.reshape(ids.shape[0], -1, dim), combiner)
            feed[dense_input] = self._tf.constant(value, dtype=dtype)
        for name, dense_input, dtype in self.direct:
            feed[dense_input] = self._tf.constant(arrays[name], dtype=dtype)  # cast in prepare
        outputs = {k: np.asarray(v) for k, v in self._serve(**feed).items()}
        total = sum(sizes)
        for name, value in outputs.items():
            if len(works) > 1 and (value.ndim == 0 or value.shape[0] != total):
                raise InvalidInputError(
                    f"output '{name}' has no batch dimension; cannot split a batch", location=name
                )
        results, at = [], 0
        for size in sizes:
            tensors = [
                Tensor(
                    spec.name,
                    spec.datatype,
                    np.ascontiguousarray(
                        outputs[spec.name][at : at + size]
                        if len(works) > 1
                        else outputs[spec.name],
                        dtype=DATATYPES[spec.datatype],
                    ),
                )
                for spec in self.outputs
            ]
            results.append(InferResult(tensors))
            at += size
        return results

    def warm_up(self) -> None:
        """One sample of ids 0 and zeros: traces the signature and touches every table."""
        request = InferRequest(model=self.name)
        for spec in self.inputs:
            shape = [1 if d == -1 else d for d in spec.shape]
            array = np.zeros(shape, dtype=DATATYPES[spec.datatype])
            request.inputs[spec.name] = Tensor(spec.name, spec.datatype, array)
        for comps in self.sparse.values():
            rank = len(comps["shape"])
            width = [1 if d == -1 else d for d in comps["shape"]]
            request.inputs[comps["indices"]].array = np.zeros((1, rank), np.int64)
            request.inputs[comps["values"]].array = np.zeros(
                1, request.inputs[comps["values"]].array.dtype
            )
            request.inputs[comps["dense_shape"]].array = np.array(width, np.int64)
        self.execute([self.prepare(request)])

    def close(self) -> None:
        self._serve = None
        self._root = None


def _check_shape(array: np.ndarray, shape: tuple[int, ...], name: str) -> None:
    if array.ndim != len(shape) or any(d != -1 and d != a for d, a in zip(shape, array.shape)):
        raise invalid(f"shape {list(array.shape)} does not match {list(shape)} (-1: any)", name)


def _sparse_ids(request: InferRequest, comps: dict, name: str, limit: int | None) -> dict:
    """Validate the three components of a SparseTensor input; rows of each value."""
    indices = request.inputs[comps["indices"]].array
    values = request.inputs[comps["values"]].array
    dense_shape = request.inputs[comps["dense_shape"]].array
    rank = len(comps["shape"])
    if dense_shape.shape != (rank,):
        raise invalid(
            f"shape must be [{rank}], got {list(dense_shape.shape)}", comps["dense_shape"]
        )
    if dense_shape.min() < 0:
        raise invalid(f"must be non-negative, got {dense_shape.tolist()}", comps["dense_shape"])
    for d, (want, got) in enumerate(zip(comps["shape"], dense_shape.tolist())):
        if want != -1 and want != got:
            raise invalid(
                f"dimension {d} is {got}, the model's input '{name}' has {want}",
                comps["dense_shape"],
            )
    if values.ndim != 1:
        raise invalid(f"shape must be [nnz], got {list(values.shape)}", comps["values"])
    if indices.shape != (values.size, rank):
        raise invalid(
            f"shape must be [{values.size}, {rank}] (one index per value), got "
            f"{list(indices.shape)}",
            comps["indices"],
        )
    if indices.size and ((indices < 0).any() or (indices >= dense_shape).any()):
        raise invalid(
            f"indices must lie inside dense_shape {dense_shape.tolist()}", comps["indices"]
        )
    batch = int(dense_shape[0])
    rows = indices[:, 0].astype(np.int64) if indices.size else np.zeros(0, np.int64)
    if limit and values.size:
        per_row = np.bincount(rows, minlength=batch)
        if per_row.max() > limit:
            raise invalid(
                f"a sample has {int(per_row.max())} ids; the model takes at most "
                f"{limit} (maxnum_catfeature_query_per_table_per_sample)",
                comps["values"],
            )
    return {"values": values, "rows": rows, "batch": batch}


def _merge(works: list[Work], batch_inputs: list[str], sparse_inputs: list[str]):
    """Concatenate the works' inputs along the batch (sparse rows offset)."""
    sizes = [w.size for w in works]
    if len(works) == 1:
        return works[0].data["arrays"], works[0].data["sparse"], sizes
    arrays = {n: np.concatenate([w.data["arrays"][n] for w in works]) for n in batch_inputs}
    sparse = {}
    offsets = np.cumsum([0] + sizes[:-1])
    for n in sparse_inputs:
        parts = [w.data["sparse"][n] for w in works]
        sparse[n] = {
            "values": np.concatenate([p["values"] for p in parts]),
            "rows": np.concatenate([p["rows"] + off for p, off in zip(parts, offsets)]),
            "batch": sum(sizes),
        }
    return arrays, sparse, sizes


def _merge_keys(works: list[Work]) -> dict[str, np.ndarray]:
    """The int64 keys of the dense-format id inputs, concatenated along the batch."""
    first = works[0].data["keys"]
    if len(works) == 1:
        return first
    return {n: np.concatenate([w.data["keys"][n] for w in works]) for n in first}


def _combine(vectors: np.ndarray, combiner: str) -> np.ndarray:
    """[batch, ids, dim] -> [batch, dim] (every id of a sample counts)."""
    total = vectors.astype(np.float64).sum(axis=1)
    count = vectors.shape[1]
    if combiner == "mean" and count:
        total /= count
    elif combiner == "sqrtn" and count:
        total /= np.sqrt(count)
    return total.astype(np.float32)


def _segment_combine(
    vectors: np.ndarray, rows: np.ndarray, batch: int, combiner: str
) -> np.ndarray:
    """Combine the vectors of each sample (row); samples without ids get zeros."""
    out = np.zeros((batch, vectors.shape[1]), np.float64)
    np.add.at(out, rows, vectors)
    if combiner in ("mean", "sqrtn"):
        counts = np.maximum(np.bincount(rows, minlength=batch), 1).astype(np.float64)
        out /= (counts if combiner == "mean" else np.sqrt(counts))[:, None]
    return out.astype(np.float32)
