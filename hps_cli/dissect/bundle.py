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
    1: ("float32", "f4", 4),
    2: ("float64", "f8", 8),
    3: ("int32", "i4", 4),
    4: ("uint8", "u1", 1),
    5: ("int16", "i2", 2),
    6: ("int8", "i1", 1),
    7: ("string", None, 0),
    9: ("int64", "i8", 8),
    10: ("bool", "b1", 1),
    14: ("bfloat16", "u2", 2),
    17: ("uint16", "u2", 2),
    19: ("float16", "f2", 2),
    22: ("uint32", "u4", 4),
    23: ("uint64", "u8", 8),
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
        return path.with_name(path.name[: -len(".index")])
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
            return indexes[0].with_name(indexes[0].name[: -len(".index")])
    raise NotFoundError(
        "no TensorFlow checkpoint here (expected a prefix with a .index file)", location=str(path)
    )


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
            raise InvalidInputError(
                f"cannot read the checkpoint index: {exc.strerror}", location=location
            ) from exc
        self.header = BundleHeader()
        self.tensors: dict[str, TensorInfo] = {}
        self._slices: dict[bytes, BundleEntry] = {}
        for raw_key, value in read_table(data, location):
            if not raw_key:
                self.header = decode_header(value, location)
                continue
            if raw_key.startswith(b"\x00"):  # one slice of a partitioned tensor
                self._slices[raw_key] = decode_entry(value, location)
                continue
            key = raw_key.decode("utf-8", errors="surrogateescape")
            entry = decode_entry(value, f"{location}: {key}")
            self.tensors[key] = TensorInfo(key, dtype_name(entry.dtype), entry.shape, entry)
        if not self.tensors:
            raise InvalidInputError("the checkpoint holds no tensors", location=location)

    def data_path(self, shard: int) -> Path:
        return self.prefix.with_name(
            f"{self.prefix.name}.data-{shard:05d}-of-{self.header.num_shards:05d}"
        )

    def info(self, key: str) -> TensorInfo:
        try:
            return self.tensors[key]
        except KeyError:
            raise NotFoundError(
                f"no tensor '{key}' in the checkpoint", location=str(self.index_path)
            ) from None

    def _span(self, info: TensorInfo, entry: BundleEntry | None = None) -> tuple[Path, int, int]:
        entry = entry or info.entry
        path = self.data_path(entry.shard_id)
        if not path.exists():
            raise NotFoundError(f"data file of tensor '{info.key}' is missing", location=str(path))
        if not path.is_file():
            raise InvalidInputError(
                "the checkpoint data file is not a regular file", location=str(path)
            )
        if entry.offset + entry.size > path.stat().st_size:
            raise InvalidInputError(
                f"tensor '{info.key}' ends at byte {entry.offset + entry.size}, past the end of "
                "the data file (truncated checkpoint?)",
                location=str(path),
            )
        return path, entry.offset, entry.size

    def _numpy_dtype(self, info: TensorInfo) -> np.dtype:
        code = DTYPES.get(info.entry.dtype, (None, None, 0))[1]
        if code is None:
            raise InvalidInputError(
                f"tensor '{info.key}' has dtype {info.dtype}, not a number",
                location=str(self.index_path),
            )
        return np.dtype((">" if self.header.big_endian else "<") + code)

    def read(self, key: str) -> np.ndarray:
        """A whole numeric tensor (for small tensors)."""
        info = self.info(key)
        rows = info.shape[0] if info.shape else 1
        array = self.read_rows(key, 0, rows)
        return array.reshape(info.shape)

    def _layout(self, info: TensorInfo) -> tuple[np.dtype, int, int]:
        """(numpy dtype, rows, items per row) of a numeric tensor."""
        dtype = self._numpy_dtype(info)
        rows = info.shape[0] if info.shape else 1
        row_items = int(np.prod(info.shape[1:], dtype=np.int64)) if len(info.shape) > 1 else 1
        return dtype, rows, row_items

    def _parts(self, info: TensorInfo) -> list[tuple[int, int, BundleEntry]]:
        """(first row, rows, entry) of each stored piece of a tensor, in row order.

        A whole tensor is one piece. A partitioned one (``ShardedVariable``, a
        ``MaxShardSizePolicy`` checkpoint) is stored as slices along the first axis, each under
        a key that encodes the tensor name and the slice (``EncodeTensorNameSlice``).
        """
        dtype, rows, row_items = self._layout(info)
        row_bytes = row_items * dtype.itemsize
        if not info.entry.sliced:
            parts = [(0, rows, info.entry)]
        else:
            parts = []
            for extents in info.entry.slices:
                if any(
                    ext != (0, -1) and ext != (0, dim)
                    for ext, dim in zip(extents[1:], info.shape[1:])
                ):
                    raise InvalidInputError(
                        f"tensor '{info.key}' is partitioned along an axis other than the first",
                        location=str(self.index_path),
                    )
                start, length = extents[0] if extents else (0, -1)
                length = rows - start if length < 0 else length
                entry = self._slices.get(slice_key(info.key, extents))
                if entry is None:
                    raise InvalidInputError(
                        f"slice {start}:{start + length} of '{info.key}' is missing from the index",
                        location=str(self.index_path),
                    )
                parts.append((start, length, entry))
            parts.sort(key=lambda p: p[0])
        expected = 0
        for start, count, entry in parts:
            if start != expected:
                raise InvalidInputError(
                    f"slices of '{info.key}' do not cover row {expected}",
                    location=str(self.index_path),
                )
            if count * row_bytes != entry.size:
                raise InvalidInputError(
                    f"tensor '{info.key}' rows {start}..{start + count} have {entry.size} bytes, "
                    f"expected {count * row_bytes} for {info.dtype} rows of {row_items}",
                    location=str(self.index_path),
                )
            expected = start + count
        if expected != rows:
            raise InvalidInputError(
                f"slices of '{info.key}' cover {expected} of {rows} rows",
                location=str(self.index_path),
            )
        return parts

    def read_rows(self, key: str, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` of a numeric tensor (rank >= 1; a scalar counts as one row)."""
        info = self.info(key)
        parts = [
            rows.copy()
            for _, rows in self.iter_rows(key, max(1, stop - start), start=start, stop=stop)
        ]
        if not parts:
            return np.empty((0,) + tuple(info.shape[1:]), dtype=self._numpy_dtype(info))
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def iter_rows(
        self,
        key: str,
        rows_per_chunk: int,
        *,
        start: int = 0,
        stop: int | None = None,
        buffers: int = 1,
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (first row, rows) chunks of a numeric tensor, reading into reused buffers.

        Chunk ``i`` lives in buffer ``i % buffers``: it stays valid for ``buffers - 1`` more
        steps (copy it to keep it longer). More than one buffer lets a prefetching consumer read
        ahead while earlier chunks are still in use.
        """
        info = self.info(key)
        dtype, rows, row_items = self._layout(info)
        stop = rows if stop is None else min(stop, rows)
        start = max(0, start)
        if stop <= start:
            return
        row_bytes = row_items * dtype.itemsize
        pool = [
            np.empty(min(stop - start, rows_per_chunk) * row_items, dtype=dtype)
            for _ in range(max(1, buffers))
        ]
        shape_tail = tuple(info.shape[1:])
        step = 0
        for part_start, part_rows, entry in self._parts(info):
            first, last = max(start, part_start), min(stop, part_start + part_rows)
            if first >= last:
                continue
            path, offset, _ = self._span(info, entry)
            fd = _open_readable(path)
            try:
                if hasattr(os, "posix_fadvise"):
                    os.posix_fadvise(fd, offset, entry.size, os.POSIX_FADV_SEQUENTIAL)
                for row in range(first, last, rows_per_chunk):
                    count = min(last, row + rows_per_chunk) - row
                    buffer = pool[step % len(pool)]
                    step += 1
                    _pread_exact(
                        fd,
                        memoryview(buffer).cast("B")[: count * row_bytes],
                        offset + (row - part_start) * row_bytes,
                        path,
                        info.key,
                    )
                    chunk = buffer[: count * row_items]
                    yield row, chunk.reshape((count,) + shape_tail) if info.shape else chunk
            finally:
                os.close(fd)

    def read_strings(self, key: str) -> list[bytes]:
        """A string tensor: varint64 lengths, a 4-byte checksum of them, then the bytes."""
        info = self.info(key)
        if info.dtype != "string":
            raise InvalidInputError(
                f"tensor '{key}' is {info.dtype}, not a string", location=str(self.index_path)
            )
        path, offset, size = self._span(info)
        fd = _open_readable(path)
        try:
            data = bytearray(size)
            _pread_exact(fd, memoryview(data), offset, path, key)
            data = bytes(data)
        finally:
            os.close(fd)
        count = int(np.prod(info.shape, dtype=np.int64)) if info.shape else 1
        pos, lengths = 0, []
        try:
            for _ in range(count):
                length, pos = read_varint(data, pos)
                lengths.append(length)
        except ValueError as exc:
            raise InvalidInputError(
                f"corrupt string tensor '{key}': {exc}", location=str(path)
            ) from exc
        pos += 4  # masked crc32c of the lengths
        values = []
        for length in lengths:
            values.append(data[pos : pos + length])
            pos += length
        if pos != size:
            raise InvalidInputError(
                f"string tensor '{key}' has {size} bytes, expected {pos}", location=str(path)
            )
        return values


_HEADER_BITS = [
    (0x00, 0x00),
    (0x80, 0x00),
    (0xC0, 0x00),
    (0xE0, 0x00),
    (0xF0, 0x00),
    (0xF8, 0x00),
    (0xFC, 0x00),
    (0xFE, 0x00),
    (0xFF, 0x00),
    (0xFF, 0x80),
    (0xFF, 0xC0),
]
_BITS_TO_LENGTH = (
    [1] * 7 + [2] * 7 + [3] * 7 + [4] * 7 + [5] * 7 + [6] * 7 + [7] * 7 + [8] * 7 + [9] * 7 + [10]
)


def _ordered_num(value: int) -> bytes:
    """OrderedCode::WriteNumIncreasing: a length byte, then the value big-endian."""
    body = value.to_bytes((value.bit_length() + 7) // 8, "big") if value else b""
    return bytes([len(body)]) + body


def _ordered_signed(value: int) -> bytes:
    """OrderedCode::WriteSignedNumIncreasing (tensorflow/core/lib/strings/ordered_code.cc)."""
    x = ~value if value < 0 else value
    if x < 64:
        return bytes([(_HEADER_BITS[1][0] ^ value) & 0xFF])
    length = _BITS_TO_LENGTH[x.bit_length()]
    buf = bytearray(
        (b"\xff\xff" if value < 0 else b"\x00\x00") + (value & (2**64 - 1)).to_bytes(8, "big")
    )
    begin = buf[len(buf) - length :]
    begin[0] ^= _HEADER_BITS[length][0]
    begin[1] ^= _HEADER_BITS[length][1]
    return bytes(begin)


def slice_key(name: str, extents) -> bytes:
    """The index key of one slice of ``name`` (checkpoint::EncodeTensorNameSlice)."""
    escaped = _escape(name.encode("utf-8", "surrogateescape"))
    out = _ordered_num(0) + escaped + b"\x00\x01" + _ordered_num(len(extents))
    for start, length in extents:
        out += _ordered_signed(start) + _ordered_signed(length)
    return out


def _escape(raw: bytes) -> bytes:
    out = bytearray()
    for byte in raw:
        if byte == 0x00:
            out += b"\x00\xff"
        elif byte == 0xFF:
            out += b"\xff\x00"
        else:
            out.append(byte)
    return bytes(out)


def _open_readable(path: Path) -> int:
    try:
        return os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise InvalidInputError(f"cannot read: {exc.strerror}", location=str(path)) from exc


def _pread_exact(fd: int, view: memoryview, offset: int, path: Path, key: str) -> None:
    done = 0
    while done < len(view):
        try:
            got = os.preadv(fd, [view[done:]], offset + done)
        except OSError as exc:
            raise InvalidInputError(
                f"cannot read '{key}': {exc.strerror}", location=str(path)
            ) from exc
        if got <= 0:
            raise InvalidInputError(f"unexpected end of data reading '{key}'", location=str(path))
        done += got
