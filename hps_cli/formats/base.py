"""The common shape of every input of ``hps convert``: a source table yielding chunks of rows.

A ``SourceTable`` knows its name, row count and dim before reading any row (so bad sizes fail
before anything is written), and yields ``Chunk`` s of int64 keys and float32 vectors in file
order, reading one chunk at a time. Tables stored as raw arrays in files (SOK, HugeCTR, HPS,
``.npy``) also offer random access to those arrays, so key-only passes (sampling key ranges,
finding duplicates) read 8 bytes a row instead of whole rows.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from ..runtime.direct_io import ALIGN, aligned_view, whole_page_rows
from ..runtime.errors import InvalidInputError

DEFAULT_CHUNK_BYTES = 32 << 20
INT64_MAX = np.iinfo(np.int64).max


@dataclass(frozen=True)
class Chunk:
    """Rows ``[start, start + len(keys))`` of a table, converted: int64 keys, float32 vectors."""

    start: int
    keys: np.ndarray
    vectors: np.ndarray
    meta: np.ndarray | None = None


@dataclass
class SkippedFile:
    path: str
    reason: str

    def to_dict(self) -> dict:
        return {"path": self.path, "reason": self.reason}


class SourceTable:
    """One table of an input. Subclasses implement ``_read(first, count)`` (rows by number), or
    override ``chunks`` when their input can only be streamed (RocksDB families).

    Attributes:
        name: the output table name (SOK variable, HDF5 layer or dataset, HPS folder name).
        format: the input format's name (``sok-v2``, ``hdf5``, ...).
        location: the file or folder the rows come from (used in errors).
        num_rows, dim: known up front.
        has_meta: rows carry an int64 ``meta`` (access counts) as HPS tables may.
        input_bytes: payload bytes read from the input for all rows.
        details: format facts worth showing (dtypes, header fields, inferred widths).
        checksum: the HPS sidecar checksum of the rows when known without reading them.
    """

    format = "?"

    def __init__(
        self,
        name: str,
        location: str,
        num_rows: int,
        dim: int,
        *,
        has_meta: bool = False,
        input_bytes: int = 0,
        details: dict | None = None,
    ):
        self.name = name
        self.location = str(location)
        self.num_rows = int(num_rows)
        self.dim = int(dim)
        self.has_meta = has_meta
        self.input_bytes = int(input_bytes)
        self.details = dict(details or {})
        self.checksum: str | None = None

    @property
    def row_bytes(self) -> int:
        return 8 + 4 * self.dim + (8 if self.has_meta else 0)

    def rows_per_chunk(self, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
        return whole_page_rows(max(1, chunk_bytes // self.row_bytes))

    def chunks(self, rows: int | None = None) -> Iterator[Chunk]:
        """Consecutive chunks of converted rows, in the input's order."""
        rows = rows or self.rows_per_chunk()
        for first in range(0, self.num_rows, rows):
            count = min(rows, self.num_rows - first)
            keys, vectors, meta = self._read(first, count)
            yield Chunk(first, keys, vectors, meta)

    def _read(self, first: int, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Keys, vectors and meta of rows ``[first, first + count)``."""
        raise TypeError(f"{type(self).__name__} streams its rows: use chunks(), not row ranges")

    def random_access(self) -> "RandomAccess | None":
        """The raw arrays by row number, or None when the input cannot offer them."""
        return None

    def close(self) -> None:
        """Release open files and mappings."""

    def describe(self) -> dict:
        return {
            "name": self.name,
            "format": self.format,
            "location": self.location,
            "rows": self.num_rows,
            "dim": self.dim,
            "meta": self.has_meta,
            **({"details": self.details} if self.details else {}),
        }


# ---------------------------------------------------------------------------------------------
# Raw arrays in files (SOK v1/v2, HugeCTR, HPS tables, .npy)

_BUFFER_POOL = 4  # read buffers kept per file: the chunk being written, the one being read


@dataclass
class RawArray:
    """``rows`` (× ``width``) items of ``dtype`` stored raw in ``path`` from byte ``offset``."""

    path: Path
    offset: int
    dtype: np.dtype
    rows: int
    width: int = 1
    _handle: object = field(default=None, repr=False)
    _pool: list = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self.dtype = np.dtype(self.dtype)

    @property
    def row_bytes(self) -> int:
        return self.dtype.itemsize * self.width

    def _buffer(self, nbytes: int) -> np.ndarray:
        """A byte buffer for the next read: a pooled one nobody uses any more, else a new one.

        Fresh large arrays fault in every page on first write (a third of a conversion's time
        here); recycling finished buffers avoids that. A buffer is free when only the pool,
        this loop and getrefcount refer to it: any array handed out (or a view of it, or a
        memoryview a writer holds) keeps it busy, so nothing a caller still holds is reused.
        """
        # The pool holds each buffer's owning array: NumPy points every view (and view of a
        # view) at the owner, so the owner's reference count sees all of them. Slices start on
        # a 4 KiB boundary, for O_DIRECT writes of the rows read into them.
        for owner in self._pool:
            if owner.nbytes - ALIGN >= nbytes and sys.getrefcount(owner) <= 3:
                return aligned_view(owner, nbytes)
        owner = np.empty(nbytes + ALIGN, dtype=np.uint8)
        if len(self._pool) < _BUFFER_POOL:
            self._pool.append(owner)
        return aligned_view(owner, nbytes)

    def read(self, first: int, count: int) -> np.ndarray:
        """Rows ``[first, first + count)`` read from the file (a buffer no one else holds)."""
        if self._handle is None:
            self._handle = open(self.path, "rb", buffering=0)
        nbytes = count * self.width * self.dtype.itemsize
        out = self._buffer(nbytes)[:nbytes].view(self.dtype)
        view = memoryview(out).cast("B")
        got = (
            os.preadv(self._handle.fileno(), [view], self.offset + first * self.row_bytes)
            if hasattr(os, "preadv")
            else self._seek_read(first, view)
        )
        while got < len(view):  # reads may be short; a zero-length read means the file shrank
            more = os.pread(
                self._handle.fileno(), len(view) - got, self.offset + first * self.row_bytes + got
            )
            if not more:
                raise InvalidInputError(
                    f"the file ended early: rows {first}..{first + count} are missing "
                    "(it was truncated while being read)",
                    location=str(self.path),
                )
            view[got : got + len(more)] = more
            got += len(more)
        return out if self.width == 1 else out.reshape(count, self.width)

    def _seek_read(self, first: int, view: memoryview) -> int:  # pragma: no cover - non-Linux
        self._handle.seek(self.offset + first * self.row_bytes)
        return self._handle.readinto(view) or 0

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        self._pool = []


@dataclass
class RandomAccess:
    """The raw arrays of a table; convert what they read with ``as_keys``/``as_vectors``."""

    keys: RawArray
    vectors: RawArray
    meta: RawArray | None = None


def as_keys(raw: np.ndarray, location: str, first_row: int = 0) -> np.ndarray:
    """Keys of any integer dtype as int64 (uint64 keys above INT64 max are an error)."""
    if raw.dtype == np.int64:
        return raw
    if raw.dtype == np.uint64 and raw.size:
        too_big = raw > np.uint64(INT64_MAX)
        if too_big.any():
            row = int(np.argmax(too_big))
            raise InvalidInputError(
                f"key {int(raw[row])} at row {first_row + row} does not fit int64 (HPS keys are "
                "int64)",
                location=location,
            )
    return raw.astype(np.int64)


def as_vectors(raw: np.ndarray) -> np.ndarray:
    """Vectors of any float dtype as C-contiguous float32."""
    return np.ascontiguousarray(raw, dtype=np.float32)


class RawRowsTable(SourceTable):
    """A table whose keys, vectors (and meta) are raw arrays in files."""

    def __init__(
        self,
        name: str,
        location: str,
        keys: RawArray,
        vectors: RawArray,
        meta: RawArray | None = None,
        *,
        details: dict | None = None,
    ):
        super().__init__(
            name,
            location,
            keys.rows,
            vectors.width,
            has_meta=meta is not None,
            input_bytes=keys.rows
            * (keys.row_bytes + vectors.row_bytes + (meta.row_bytes if meta else 0)),
            details=details,
        )
        self._keys, self._vectors, self._meta = keys, vectors, meta

    def _read(self, first, count):
        keys = as_keys(self._keys.read(first, count), str(self._keys.path), first)
        vectors = as_vectors(self._vectors.read(first, count))
        meta = self._meta.read(first, count).astype(np.int64, copy=False) if self._meta else None
        return keys, vectors, meta

    def random_access(self) -> RandomAccess:
        return RandomAccess(self._keys, self._vectors, self._meta)

    def close(self) -> None:
        for arr in (self._keys, self._vectors, self._meta):
            if arr is not None:
                arr.close()


def file_size(path: Path, what: str = "file") -> int:
    """Size of a file, with one-line errors for a missing or unreadable one."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InvalidInputError(f"the {what} does not exist", location=str(path)) from None
    except OSError as exc:
        raise InvalidInputError(
            f"cannot read the {what}: {exc.strerror}", location=str(path)
        ) from None
    if not os.access(path, os.R_OK):
        raise InvalidInputError(f"cannot read the {what}: permission denied", location=str(path))
    return st.st_size


def rows_of(path: Path, payload: int, item: int, width: int, what: str) -> int:
    """Rows in ``payload`` bytes of ``width`` items of ``item`` bytes, or a one-line error."""
    row = item * width
    if payload % row:
        raise InvalidInputError(
            f"{payload} bytes of {what} are not a whole number of rows of {width} × {item} bytes "
            "(the file is truncated, or the dim or dtype is wrong)",
            location=str(path),
        )
    return payload // row
