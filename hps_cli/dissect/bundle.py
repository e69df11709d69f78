"""A pure-Python reader of TensorFlow's TensorBundle checkpoint format (V2 checkpoints).

``<prefix>.index`` is an SSTable (sstable.py) mapping each tensor's checkpoint key to a
serialized ``BundleEntryProto`` (dtype, shape, shard, offset, size, crc32c); the entry under the
empty key is the ``BundleHeaderProto``. Tensor bytes live in ``<prefix>.data-SSSSS-of-NNNNN``,
raw and in the header's byte order for numeric types. Rows are read with ``pread`` in slices, so
memory stays at one slice whatever the tensor's size.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ..runtime.errors import InvalidInputError, NotFoundError
from .protowire import BundleEntry, BundleHeader, decode_entry, decode_header, read_varint
from .sstable import read_table

# tensorflow/core/framework/types.proto DataType → (name, numpy type code, item size)
DTYPES: dict[int, tuple[str, str | None, int]] = {
    1: ("float32", "f4", 4), 2: ("float64", "f8", 8), 3: ("int32", "i4", 4), 4: ("uint8", "u1", 1),
    5: ("int16", "i2", 2), 6: ("int8", "i1", 1), 7: ("string", None, 0), 9: ("int64", "i8", 8),
    10: ("bool", "b1", 1), 14: ("bfloat16", "u2", 2), 17: ("uint16", "u2", 2),
    19: ("float16", "f2", 2), 22: ("uint32", "u4", 4), 23: ("uint64", "u8", 8),
}
FLOAT_DTYPES = {"float32", "float64", "float16", "bfloat16"}
OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
_STATE_LINE = re.compile(r'^model_checkpoint_path:\s*"(.*)"\s*$', re.M)


def dtype_name(code: int) -> str:
    return DTYPES.get(code, (f"dtype_{code}", None, 0))[0]


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a bundle: its key, dtype name, shape and where its bytes are."""

    key: str
    dtype: str
    shape: tuple[int, ...]
    entry: BundleEntry

    @property
    def nbytes(self) -> int:
        return self.entry.size


def resolve_prefix(path: Path | str) -> Path:
    """Find the checkpoint prefix for a prefix, an ``.index``/``.data-*`` file or a folder.

    A folder is accepted when it holds a ``checkpoint`` state file (as written by
    ``save_weights`` and ``CheckpointManager``) or exactly one ``*.index`` file.
    """
    path = Path(path)
    if path.name.endswith(".index") and path.is_file():
        return path.with_name(path.name[:-len(".index")])
    match = re.match(r"^(.*)\.data-\d{5}-of-\d{5}$", path.name)
    if match and path.is_file():
        return path.with_name(match.group(1))
    if path.with_name(path.name + ".index").is_file():
        return path
    if path.is_dir():
        state = path / "checkpoint"
        if state.is_file():
            found = _STATE_LINE.search(state.read_text(errors="replace"))
            if found:
                prefix = Path(found.group(1))
                prefix = prefix if prefix.is_absolute() else path / prefix
                if prefix.with_name(prefix.name + ".index").is_file():
                    return prefix
        indexes = sorted(path.glob("*.index"))
        if len(indexes) == 1:
            return indexes[0].with_name(indexes[0].name[:-len(".index")])
    raise NotFoundError("no TensorFlow checkpoint here (expected a prefix with a .index file)",
                        location=str(path))


def is_checkpoint(path: Path | str) -> bool:
    try:
        resolve_prefix(path)
        return True
    except NotFoundError:
        return False


class BundleReader:
    """Random access to the tensors of one TensorBundle checkpoint.

    Example:
        >>> reader = BundleReader("ckpt/model")            # doctest: +SKIP
        >>> for rows in reader.iter_rows("emb/.ATTRIBUTES/VARIABLE_VALUE", 65536):
        ...     ...
    """

    def __init__(self, prefix: Path | str):
        self.prefix = Path(prefix)
        self.index_path = self.prefix.with_name(self.prefix.name + ".index")
        location = str(self.index_path)
        try:
            data = self.index_path.read_bytes()
        except FileNotFoundError as exc:
            raise NotFoundError("checkpoint index not found", location=location) from exc
        except OSError as exc:
            raise InvalidInputError(f"cannot read the checkpoint index: {exc.strerror}",
                                    location=location) from exc
        self.header = BundleHeader()
        self.tensors: dict[str, TensorInfo] = {}
        for raw_key, value in read_table(data, location):
            key = raw_key.decode("utf-8", errors="replace")
            if not key:
                self.header = decode_header(value, location)
                continue
            entry = decode_entry(value, f"{location}: {key}")
            self.tensors[key] = TensorInfo(key, dtype_name(entry.dtype), entry.shape, entry)
        if not self.tensors:
            raise InvalidInputError("the checkpoint holds no tensors", location=location)

    def data_path(self, shard: int) -> Path:
        return self.prefix.with_name(
            f"{self.prefix.name}.data-{shard:05d}-of-{self.header.num_shards:05d}")

    def info(self, key: str) -> TensorInfo:
        try:
            return self.tensors[key]
        except KeyError:
            raise NotFoundError(f"no tensor '{key}' in the checkpoint",
                                location=str(self.index_path)) from None

    def _span(self, info: TensorInfo) -> tuple[Path, int, int]:
        entry = info.entry
        if entry.sliced:
            raise InvalidInputError(
                f"tensor '{info.key}' is stored in slices (a partitioned variable); dissect reads "
                "whole tensors only", location=str(self.index_path))
        path = self.data_path(entry.shard_id)
        if not path.is_file():
            raise NotFoundError(f"data file of tensor '{info.key}' is missing", location=str(path))
        if entry.offset + entry.size > path.stat().st_size:
            raise InvalidInputError(
                f"tensor '{info.key}' ends at byte {entry.offset + entry.size}, past the end of "
                "the data file (truncated checkpoint?)", location=str(path))
        return path, entry.offset, entry.size

    def _numpy_dtype(self, info: TensorInfo) -> np.dtype:
        code = DTYPES.get(info.entry.dtype, (None, None, 0))[1]
        if code is None:
            raise InvalidInputError(f"tensor '{info.key}' has dtype {info.dtype}, not a number",
                                    location=str(self.index_path))
        return np.dtype((">" if self.header.big_endian else "<") + code)

    def read(self, key: str) -> np.ndarray:
        """A whole numeric tensor (for small tensors)."""
        info = self.info(key)
        rows = info.shape[0] if info.shape else 1
        array = self.read_rows(key, 0, rows)
        return array.reshape(info.shape)

    def _layout(self, info: TensorInfo) -> tuple[np.dtype, int, int]:
        """(numpy dtype, rows, items per row) of a numeric tensor, checked against its size."""
        dtype = self._numpy_dtype(info)
        rows = info.shape[0] if info.shape else 1
        row_items = int(np.prod(info.shape[1:], dtype=np.int64)) if len(info.shape) > 1 else 1
        if rows * row_items * dtype.itemsize != info.entry.size:
            raise InvalidInputError(
                f"tensor '{info.key}' has {info.entry.size} bytes, expected "
                f"{rows * row_items * dtype.itemsize} for shape {list(info.shape)} {info.dtype}",
                location=str(self.index_path))
        return dtype, rows, row_items

    def read_rows(self, key: str, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` of a numeric tensor (rank >= 1; a scalar counts as one row)."""
        for _, rows in self.iter_rows(key, max(1, stop - start), start=start, stop=stop):
            return rows.copy()
        info = self.info(key)
        return np.empty((0,) + tuple(info.shape[1:]), dtype=self._numpy_dtype(info))

    def iter_rows(self, key: str, rows_per_chunk: int, *, start: int = 0,
                  stop: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (first row, rows) chunks of a numeric tensor, reading into one reused buffer.

        Each yielded array is valid only until the next step (copy it to keep it).
        """
        info = self.info(key)
        dtype, rows, row_items = self._layout(info)
        path, offset, _ = self._span(info)
        stop = rows if stop is None else min(stop, rows)
        start = max(0, start)
        if stop <= start:
            return
        row_bytes = row_items * dtype.itemsize
        buffer = np.empty(min(stop - start, rows_per_chunk) * row_items, dtype=dtype)
        raw = memoryview(buffer).cast("B")
        shape_tail = tuple(info.shape[1:])
        fd = os.open(path, os.O_RDONLY)
        try:
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(fd, offset, info.entry.size, os.POSIX_FADV_SEQUENTIAL)
            for first in range(start, stop, rows_per_chunk):
                count = min(stop, first + rows_per_chunk) - first
                nbytes = count * row_bytes
                _pread_exact(fd, raw[:nbytes], offset + first * row_bytes, path, info.key)
                chunk = buffer[:count * row_items]
                yield first, chunk.reshape((count,) + shape_tail) if info.shape else chunk
        finally:
            os.close(fd)

    def read_strings(self, key: str) -> list[bytes]:
        """A string tensor: varint64 lengths, a 4-byte checksum of them, then the bytes."""
        info = self.info(key)
        if info.dtype != "string":
            raise InvalidInputError(f"tensor '{key}' is {info.dtype}, not a string",
                                    location=str(self.index_path))
        path, offset, size = self._span(info)
        with open(path, "rb") as handle:
            handle.seek(offset)
            data = handle.read(size)
        count = int(np.prod(info.shape, dtype=np.int64)) if info.shape else 1
        pos, lengths = 0, []
        try:
            for _ in range(count):
                length, pos = read_varint(data, pos)
                lengths.append(length)
        except ValueError as exc:
            raise InvalidInputError(f"corrupt string tensor '{key}': {exc}",
                                    location=str(path)) from exc
        pos += 4  # masked crc32c of the lengths
        values = []
        for length in lengths:
            values.append(data[pos:pos + length])
            pos += length
        if pos != size:
            raise InvalidInputError(f"string tensor '{key}' has {size} bytes, expected {pos}",
                                    location=str(path))
        return values


def _pread_exact(fd: int, view: memoryview, offset: int, path: Path, key: str) -> None:
    done = 0
    while done < len(view):
        got = os.preadv(fd, [view[done:]], offset + done)
        if got <= 0:
            raise InvalidInputError(f"unexpected end of data reading '{key}'", location=str(path))
        done += got
