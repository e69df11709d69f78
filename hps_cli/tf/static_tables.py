"""HPS tables held in TensorFlow variables and looked up with stock TensorFlow ops only.

What a deployable SavedModel (``export_saved_model``, ``hps build-graph``) embeds in place of the
HPS runtime, per table: its rows, in ascending key order, in a float32 ``[rows + 1, dim]``
variable whose last row is the table's default vector (``default_value_for_each_table``: what
a key the table does not hold gets, as in HPS); and its keys, sorted, in an int64 variable —
unless they are one contiguous range (row-index keys, what dissect writes for a Keras
``Embedding``), which only needs its first key. At most the table's raw bytes and one row, no
hash-table overhead; the variables restore from the SavedModel's ``variables/`` checkpoint,
never from constants in the graph (TensorFlow's 2 GB GraphDef limit).

A lookup finds each id's row (``searchsorted`` on the keys and an equality check; for a key
range, a subtraction and a range check), sends ids not found to the default row, and gathers:
ops every TensorFlow build has (TF Serving, Triton's TensorFlow backend, ``saved_model_cli``).
32-bit ids are read as unsigned, as HPS reads them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from ..runtime.errors import InvalidInputError
from ..runtime.table import TableReader

KEY_BYTES, VALUE_BYTES = 8, 4
CHUNK_BYTES = 16 << 20


def raw_bytes(rows: int, dim: int) -> int:
    """Bytes a table of ``rows`` keys and ``dim`` floats per row holds (keys + rows)."""
    return int(rows) * (KEY_BYTES + VALUE_BYTES * int(dim))


def sorted_order(reader: TableReader) -> tuple[np.ndarray, np.ndarray | None]:
    """The table's keys ascending, and the row order that sorts them (None: already sorted,
    as dissect writes row-index keys).

    Duplicate keys are refused: a valid HPS table has none, and a lookup must not depend on
    which copy it meets.
    """
    keys = np.array(reader.keys())
    if keys.size < 2 or bool(np.all(keys[1:] > keys[:-1])):
        return keys, None
    order = np.argsort(keys, kind="stable")
    keys = keys[order]
    repeated = keys[1:] == keys[:-1]
    if repeated.any():
        first = int(keys[1:][repeated][0])
        raise InvalidInputError(
            f"the table has {int(np.count_nonzero(repeated))} duplicate key(s) (e.g. {first})",
            location=str(reader.path),
            hint=f"run 'hps table verify {reader.path}', then deduplicate the table",
        )
    return keys, order


def _fill_rows(
    variable: tf.Variable, reader: TableReader, order: np.ndarray | None, default: np.ndarray
) -> None:
    """Copy the table's rows into ``variable`` in sorted order, a chunk at a time, in place,
    then the default vector into its last row: the build holds one copy of the rows (a sliced
    ``assign`` would read the variable first and copy all of it on every write)."""
    step = max(1, CHUNK_BYTES // (VALUE_BYTES * reader.dim))
    vectors = reader.vectors()
    for first in range(0, reader.num_keys, step):
        last = min(reader.num_keys, first + step)
        chunk = vectors[first:last] if order is None else vectors[order[first:last]]
        tf.raw_ops.ResourceStridedSliceAssign(
            ref=variable.handle, begin=[first], end=[last], strides=[1], value=chunk
        )
    n = reader.num_keys
    tf.raw_ops.ResourceStridedSliceAssign(
        ref=variable.handle, begin=[n], end=[n + 1], strides=[1], value=default[np.newaxis]
    )


class StaticTable(tf.Module):
    """One HPS table as variables (``rows``, and ``keys`` unless they are a range) and its
    default vector.

    Create it eagerly (``tf.init_scope()`` inside a trace); ``lookup`` works eagerly and in
    graphs, and is all a restored SavedModel needs.
    """

    def __init__(self, path: Path | str, dim: int, default_value: float, name: str):
        super().__init__(name=name)
        self.path, self.dim, self.default_value = str(path), int(dim), float(default_value)
        with TableReader(path, dim) as reader:
            keys, order = sorted_order(reader)
            self.num_keys = int(keys.size)
            contiguous = self.num_keys == 0 or int(keys[-1]) - int(keys[0]) == self.num_keys - 1
            # A key range needs its first key only, as a constant of the graph.
            self.first_key = int(keys[0]) if contiguous and self.num_keys else 0
            self.keys = (
                None
                if contiguous
                else tf.Variable(keys, trainable=False, name=f"{name}_keys", dtype=tf.int64)
            )
            del keys
            # Named after the table, so a checkpoint reader sees which variable is which.
            self.rows = tf.Variable(
                tf.zeros([self.num_keys + 1, self.dim], tf.float32),
                trainable=False,
                name=f"{name}_rows",
            )
            default = np.full(self.dim, self.default_value, np.float32)
            _fill_rows(self.rows, reader, order, default)

    @property
    def raw_bytes(self) -> int:
        return raw_bytes(self.num_keys, self.dim)

    def lookup(self, ids) -> tf.Tensor:
        """``ids.shape + [dim]`` float32: each id's row, or the default vector."""
        ids = tf.convert_to_tensor(ids)
        flat = tf.reshape(as_keys(ids), [-1])
        missing = tf.constant(self.num_keys, tf.int64)  # the default row
        if self.keys is None:
            at = flat - self.first_key
            found = (at >= 0) & (at < self.num_keys)
        else:
            # One dense read of the keys serves both the search and the check: a gather on the
            # variable itself would switch it to copy-on-read, and every later dense read
            # would then copy all keys.
            keys = self.keys.read_value()
            at = tf.searchsorted(keys, flat, side="left", out_type=tf.int64)
            at = tf.minimum(at, self.num_keys - 1)  # past the last key: compared, not found
            found = tf.equal(tf.gather(keys, at), flat)
        rows = tf.gather(self.rows, tf.where(found, at, missing))
        out = tf.reshape(rows, tf.concat([tf.shape(ids, out_type=tf.int32), [self.dim]], 0))
        out.set_shape(ids.shape.concatenate([self.dim]))
        return out


def as_keys(ids: tf.Tensor) -> tf.Tensor:
    """int64 keys of integer ids; int32 ids are read as unsigned (HPS's ``unsigned int`` keys)."""
    if ids.dtype == tf.int64:
        return ids
    if ids.dtype == tf.int32:
        return tf.cast(tf.bitcast(ids, tf.uint32), tf.int64)
    if not ids.dtype.is_integer:
        raise InvalidInputError(f"ids must be integers, got {ids.dtype.name}", location="ids")
    return tf.cast(ids, tf.int64)
