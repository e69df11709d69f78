"""The lookup ops: ids → vectors through the HPS runtime, from eager code or inside a graph.

A lookup is a ``tf.numpy_function`` around ``HPS.lookup`` of one table, so it runs eagerly,
inside ``tf.function`` and in Keras ``predict`` alike. Its callable is built when the op is
created (a layer rebuilt from its config creates it afresh), which is why graphs holding these
ops are rebuilt from Keras configs and never restored from a traced SavedModel. While a model
is traced by ``export_saved_model`` (export_context.py), ``lookup`` emits stock-op lookups into
the embedded tables instead, with the same checks, ``max_norm`` and combiners.

Checks, as NVIDIA's plugin does them (``lookup_manager.cpp``):

- when the op is built (trace time), against the layer's ``ps_config_file`` (parsed, tables not
  loaded) or the running runtime: model and ``table_id`` exist, ``emb_vec_size`` equals
  ``embedding_vecsize_per_table[table_id]``, the id dtype matches ``supportlonglong`` (int64 ↔
  true; int32 or uint32 ↔ false);
- at every execution: the same against the running runtime, and at most
  ``max_batch_size × maxnum_catfeature_query_per_table_per_sample[table_id]`` keys per lookup.

Devices, as the plugin's: under a ``tf.distribute`` strategy (MirroredStrategy), the lookup
built in the context of replica ``r`` runs on ``deployed_device_list[r]`` of its model (its
embedding caches and worker buffers); outside a strategy, or in its cross-replica context, on the
model's default device (the last of the list).

Errors are ``LookupInputError`` (an ``InvalidInputError`` and a ``ValueError``): in graphs
TensorFlow reports them as ``InvalidArgumentError`` with the same message.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from ..runtime.config import ModelConfig, PsConfig
from ..runtime.errors import HpsError
from . import export_context, process_runtime
from .errors import LookupInputError

COMBINERS = ("sum", "mean", "sqrtn")


def check_vector_dtype(dtype: object) -> str:
    """HPS stores float32 vectors; returns the canonical name or raises."""
    try:
        name = tf.as_dtype(dtype).name
    except TypeError:
        name = str(dtype)
    if name != "float32":
        raise LookupInputError(
            f"emb_vec_dtype must be float32 (HPS stores float32 vectors), got {name}",
            location="emb_vec_dtype",
        )
    return name


def _model(config: PsConfig, model_name: str) -> ModelConfig:
    try:
        return config.model(model_name)
    except KeyError:
        raise LookupInputError(
            f"no model '{model_name}' in the HPS config",
            location=config.source_path or "ps_config_file",
            hint="models: " + ", ".join(config.model_names),
        ) from None


def check_table(
    config: PsConfig,
    model_name: str,
    table_id: int,
    emb_vec_size: int,
    key_dtype: str | None = None,
) -> ModelConfig:
    """The model's config, after HPS's per-call checks of table id, dim and key dtype."""
    model = _model(config, model_name)
    where = f"model '{model_name}'"
    if not 0 <= table_id < model.num_tables:
        raise LookupInputError(
            f"table_id {table_id} is out of range: {where} has {model.num_tables} table(s)",
            location="table_id",
            hint="tables: "
            + ", ".join(f"{i}={n}" for i, n in enumerate(model.embedding_table_names)),
        )
    dim = model.embedding_vecsize_per_table[table_id]
    if emb_vec_size != dim:
        raise LookupInputError(
            f"emb_vec_size {emb_vec_size} does not match embedding_vecsize_per_table"
            f"[{table_id}] = {dim} of {where} (table '{model.table_name(table_id)}')",
            location="emb_vec_size",
        )
    if key_dtype is not None:
        wanted = ("int64",) if config.supportlonglong else ("int32", "uint32")
        if key_dtype not in wanted:
            raise LookupInputError(
                f"ids of dtype {key_dtype} do not match supportlonglong "
                f"{str(config.supportlonglong).lower()} (keys must be {' or '.join(wanted)})",
                location=f"ids ({where}, table '{model.table_name(table_id)}')",
                hint="cast the ids, or change supportlonglong in the config",
            )
    return model


class TableLookup:
    """The Python body of one table's lookup op (keys ndarray → float32 ``keys.shape + (dim,)``)."""

    def __init__(
        self,
        model_name: str,
        table_id: int,
        emb_vec_size: int,
        ps_config_file: str | None,
        global_batch_size: int,
    ):
        self.model_name = model_name
        self.table_id = table_id
        self.dim = emb_vec_size
        self.ps_config_file = ps_config_file
        self.global_batch_size = global_batch_size
        self._checked: object = None
        self._capacity = 0
        self._long = True
        self._devices: tuple[int, ...] = ()

    def _check(self, hps) -> None:
        if self._checked is hps:
            return
        model = check_table(hps.config, self.model_name, self.table_id, self.dim)
        self._capacity = model.key_capacity(self.table_id)
        self._long = hps.config.supportlonglong
        self._name = model.table_name(self.table_id)
        self._per_sample = model.maxnum_catfeature_query_per_table_per_sample[self.table_id]
        self._max_batch = model.max_batch_size
        self._devices = tuple(model.deployed_device_list)
        self._checked = hps

    def device(self, replica: int) -> int | None:
        """The device of replica ``replica`` (-1: outside a strategy: the model's default)."""
        if replica < 0:
            return None
        if replica >= len(self._devices):
            raise LookupInputError(
                f"replica {replica} has no device: model '{self.model_name}' has "
                f"deployed_device_list {list(self._devices)} (HPS: one entry per replica)",
                location="deployed_device_list",
                hint="list one device per replica in sync, e.g. [0, 1] for two",
            )
        return self._devices[replica]

    def __call__(self, keys: np.ndarray, replica=-1) -> np.ndarray:
        try:
            hps = process_runtime.runtime(self.ps_config_file, self.global_batch_size)
            self._check(hps)
            device = self.device(int(replica))
            flat = keys.reshape(-1)
            if flat.size > self._capacity:
                raise LookupInputError(
                    f"{flat.size} keys in one lookup exceed max_batch_size x "
                    f"maxnum_catfeature_query_per_table_per_sample[{self.table_id}] = "
                    f"{self._max_batch} x {self._per_sample} = {self._capacity}",
                    location=f"ids (model '{self.model_name}', table '{self._name}')",
                    hint="send smaller batches, or raise max_batch_size / "
                    "maxnum_catfeature_query_per_table_per_sample in the config",
                )
            if not self._long and flat.dtype == np.int32:
                flat = flat.view(np.uint32)  # HPS reads 32-bit keys as unsigned int
            out = hps.lookup(flat, self.model_name, self.table_id, device)
        except HpsError as exc:
            raise LookupInputError.from_error(exc) from None
        return np.asarray(out, dtype=np.float32).reshape(keys.shape + (self.dim,))


def replica_id() -> tf.Tensor:
    """The id of the replica whose context the op is built in (int32 scalar), or -1 outside a
    distribution strategy and in its cross-replica context."""
    if not tf.distribute.has_strategy() or tf.distribute.in_cross_replica_context():
        return tf.constant(-1, tf.int32)
    return tf.cast(tf.distribute.get_replica_context().replica_id_in_sync_group, tf.int32)


def check_layer(
    model_name: str,
    table_id: int,
    emb_vec_size: int,
    ps_config_file: str | None,
    key_dtype: str | None = None,
) -> None:
    """Trace-time checks against the layer's config file or the running runtime (skipped
    while neither is known: the lookup checks again when it runs)."""
    try:
        config = process_runtime.config_for(ps_config_file)
        if config is not None:
            check_table(config, model_name, table_id, emb_vec_size, key_dtype)
    except HpsError as exc:
        raise LookupInputError.from_error(exc) from None


def clip(vectors: tf.Tensor, max_norm) -> tf.Tensor:
    """Per-vector L2 clipping, as ``tf.nn.embedding_lookup(..., max_norm=...)`` does it."""
    if max_norm is None:
        return vectors
    return tf.clip_by_norm(
        vectors, max_norm, axes=[vectors.shape.rank - 1] if vectors.shape.rank is not None else -1
    )


def lookup(
    ids,
    *,
    model_name: str,
    table_id: int,
    emb_vec_size: int,
    ps_config_file: str | None = None,
    global_batch_size: int = 1,
    max_norm=None,
    name: str | None = None,
) -> tf.Tensor:
    """``tf.nn.embedding_lookup`` semantics over an HPS table: ``ids.shape + [emb_vec_size]``."""
    ids = tf.convert_to_tensor(ids)
    if not ids.dtype.is_integer:
        raise LookupInputError(f"ids must be integers, got {ids.dtype.name}", location="ids")
    check_layer(model_name, table_id, emb_vec_size, ps_config_file, ids.dtype.name)
    export = export_context.active()
    if export is not None:  # tracing a deployable SavedModel: stock ops over embedded tables
        config = str(ps_config_file) if ps_config_file else None
        return clip(export.lookup(ids, model_name, table_id, config), max_norm)
    body = TableLookup(
        model_name,
        table_id,
        emb_vec_size,
        str(ps_config_file) if ps_config_file else None,
        global_batch_size,
    )
    out = tf.numpy_function(body, [ids, replica_id()], tf.float32, name=name or "hps_lookup")
    out.set_shape(ids.shape.concatenate([emb_vec_size]))
    return clip(out, max_norm)


def sparse_lookup(
    sp_ids,
    sp_weights=None,
    *,
    combiner: str | None = "mean",
    max_norm=None,
    model_name: str,
    table_id: int,
    emb_vec_size: int,
    ps_config_file: str | None = None,
    global_batch_size: int = 1,
    name: str | None = None,
) -> tf.Tensor:
    """``tf.nn.embedding_lookup_sparse`` semantics over an HPS table: ``[rows, emb_vec_size]``.

    Ids are de-duplicated before the lookup (the batch limit counts unique ids, as in HPS);
    ``max_norm`` clips each vector before combining; rows follow the segment ids
    (``sp_ids.indices[:, 0]``) exactly as TensorFlow's op, so an empty row in the middle gives
    zeros and trailing empty rows are not in the output.
    """
    if combiner is None:
        combiner = "mean"
    if combiner not in COMBINERS:
        raise LookupInputError(
            f"combiner must be one of 'mean', 'sqrtn' or 'sum', got {combiner!r}",
            location="combiner",
        )
    if not isinstance(sp_ids, tf.SparseTensor):
        raise TypeError(f"sp_ids must be SparseTensor, got {type(sp_ids).__name__}")
    if sp_weights is not None and not isinstance(sp_weights, tf.SparseTensor):
        raise TypeError(
            f"sp_weights must be either None or SparseTensor, got {type(sp_weights).__name__}"
        )
    segment_ids = sp_ids.indices[:, 0]
    unique_ids, idx = tf.unique(sp_ids.values)
    vectors = lookup(
        unique_ids,
        model_name=model_name,
        table_id=table_id,
        emb_vec_size=emb_vec_size,
        ps_config_file=ps_config_file,
        global_batch_size=global_batch_size,
        max_norm=max_norm,
        name=name,
    )
    if sp_weights is None:
        segment = {
            "sum": tf.sparse.segment_sum,
            "mean": tf.sparse.segment_mean,
            "sqrtn": tf.sparse.segment_sqrt_n,
        }[combiner]
        return segment(vectors, idx, segment_ids)
    segment_ids = tf.cast(segment_ids, tf.int32)
    weights = tf.cast(sp_weights.values, tf.float32)[:, tf.newaxis]
    vectors = tf.gather(vectors, idx) * weights
    total = tf.math.segment_sum(vectors, segment_ids)
    if combiner == "sum":
        return total
    if combiner == "mean":
        return tf.math.divide_no_nan(total, tf.math.segment_sum(weights, segment_ids))
    return tf.math.divide_no_nan(total, tf.sqrt(tf.math.segment_sum(weights**2, segment_ids)))


def as_config_path(ps_config_file) -> str:
    """The string stored in a layer's config ("" when none)."""
    if ps_config_file is None:
        return ""
    if isinstance(ps_config_file, Path):
        return str(ps_config_file)
    if not isinstance(ps_config_file, str):
        raise LookupInputError(
            f"ps_config_file must be a path string, got {type(ps_config_file).__name__}",
            location="ps_config_file",
        )
    return ps_config_file
