"""Memory-mapped reading of an HPS table, chunk by chunk.

Chunks are views of the mapping (no copy). After each chunk the reader tells the kernel it no
longer needs those pages (MADV_DONTNEED), so resident memory stays at about one chunk whatever
the table size; the data stays in the page cache.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ..direct_io import whole_page_rows
from ..errors import InvalidInputError
from .file_layout import (
    KEY_DTYPE,
    KEY_FILE,
    META_DTYPE,
    META_FILE,
    VECTOR_DTYPE,
    VECTOR_FILE,
    TableLayout,
    inspect_layout,
)
from .sidecar import Sidecar, current_sidecar

DEFAULT_CHUNK_BYTES = 32 << 20
_PAGE = mmap.PAGESIZE


@dataclass(frozen=True)
class TableChunk:
    """Rows ``[start, start + len(keys))`` of a table. Arrays are read-only views."""

    start: int
    keys: np.ndarray  # (n,) int64
    vectors: np.ndarray  # (n, dim) float32
    meta: np.ndarray | None  # (n,) int64


class _Mapped:
    """A read-only mapping of one file, releasable range by range."""

    def __init__(self, path: Path, dtype: np.dtype):
        self.path = path
        self.dtype = dtype
        size = os.stat(path).st_size
        self.map: mmap.mmap | None = None
        if size:
            with open(path, "rb") as handle:
                self.map = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
            if hasattr(mmap, "MADV_SEQUENTIAL"):
                self.map.madvise(mmap.MADV_SEQUENTIAL)
        self.size = size

    def array(self, first: int, count: int, row: int | None = None) -> np.ndarray:
        """Rows ``[first, first + count)``: 1-D when ``row`` is None, else (count, row)."""
        width = row or 1
        if self.map is None or count == 0:
            return np.empty((0,) if row is None else (0, row), dtype=self.dtype)
        arr = np.frombuffer(
            self.map,
            dtype=self.dtype,
            count=count * width,
            offset=first * width * self.dtype.itemsize,
        )
        return arr if row is None else arr.reshape(count, row)

    def release(self, first: int, count: int, row: int = 1) -> None:
        if self.map is None or not hasattr(mmap, "MADV_DONTNEED"):
            return
        begin = first * row * self.dtype.itemsize
        end = begin + count * row * self.dtype.itemsize
        begin -= begin % _PAGE  # madvise needs a page-aligned start
        if end > begin:
            self.map.madvise(mmap.MADV_DONTNEED, begin, min(end, self.size) - begin)


class TableReader:
    """Read an HPS table folder without loading it whole.

    Args:
        path: the table folder.
        dim: the expected vector size; None infers it (or takes it from ``table.json``).

    Raises:
        InvalidInputError: the folder is not a structurally valid table (see ``verify`` for a
            report of every defect instead of the first).
    """

    def __init__(self, path: Path | str, dim: int | None = None):
        self.path = Path(path)
        self.sidecar: Sidecar | None = current_sidecar(self.path) if self.path.is_dir() else None
        self.layout: TableLayout = inspect_layout(
            self.path, dim, sidecar_dim=self.sidecar.dim if self.sidecar else None
        )
        if not self.layout.ok:
            first = self.layout.defects[0]
            more = len(self.layout.defects) - 1
            raise InvalidInputError(
                first.message + (f" (and {more} more defect{'s' * (more > 1)})" if more else ""),
                location=first.location,
                hint=f"run 'hps table verify {self.path}' for details",
            )
        self.num_keys = self.layout.num_keys
        self.dim: int = int(self.layout.dim)  # type: ignore[arg-type]
        self.has_meta = self.layout.meta_bytes is not None
        self._keys = _Mapped(self.path / KEY_FILE, KEY_DTYPE)
        self._vectors = _Mapped(self.path / VECTOR_FILE, VECTOR_DTYPE)
        self._meta = _Mapped(self.path / META_FILE, META_DTYPE) if self.has_meta else None

    @property
    def row_bytes(self) -> int:
        return (
            KEY_DTYPE.itemsize
            + self.dim * VECTOR_DTYPE.itemsize
            + (META_DTYPE.itemsize if self.has_meta else 0)
        )

    def rows_per_chunk(self, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
        # Chunks then start on a page of the mapped file and span whole pages: O_DIRECT-ready.
        return whole_page_rows(max(1, chunk_bytes // self.row_bytes))

    def keys(self) -> np.ndarray:
        """All keys as one read-only memory-mapped view (pages load on access)."""
        return self._keys.array(0, self.num_keys)

    def vectors(self) -> np.ndarray:
        """All vectors as one read-only memory-mapped (num_keys, dim) view."""
        return self._vectors.array(0, self.num_keys, self.dim)

    def meta(self) -> np.ndarray | None:
        return self._meta.array(0, self.num_keys) if self._meta else None

    def chunks(
        self,
        rows: int | None = None,
        *,
        start: int = 0,
        stop: int | None = None,
        release: bool = True,
    ) -> Iterator[TableChunk]:
        """Yield consecutive chunks of rows; a chunk's arrays are valid until the next one.

        Copy what you need to keep: with ``release`` (the default) the pages of a chunk are
        dropped from this process once the next chunk is requested.
        """
        rows = rows or self.rows_per_chunk()
        stop = self.num_keys if stop is None else min(stop, self.num_keys)
        first = start
        while first < stop:
            count = min(rows, stop - first)
            yield TableChunk(
                first,
                self._keys.array(first, count),
                self._vectors.array(first, count, self.dim),
                self._meta.array(first, count) if self._meta else None,
            )
            if release:
                self._keys.release(first, count)
                self._vectors.release(first, count, self.dim)
                if self._meta:
                    self._meta.release(first, count)
            first += count

    def read_rows(self, start: int, count: int) -> TableChunk:
        """Copies of rows ``[start, start + count)``."""
        count = max(0, min(count, self.num_keys - start))
        meta = self._meta.array(start, count).copy() if self._meta else None
        return TableChunk(
            start,
            self._keys.array(start, count).copy(),
            self._vectors.array(start, count, self.dim).copy(),
            meta,
        )

    def close(self) -> None:
        for mapped in (self._keys, self._vectors, self._meta):
            if mapped is not None and mapped.map is not None:
                try:
                    mapped.map.close()
                except BufferError:
                    pass  # a caller still holds a view; the mapping closes with it

    def __enter__(self) -> "TableReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_table(path: Path | str, dim: int | None = None) -> TableReader:
    """Open a table for reading (raises InvalidInputError when it is not a valid table)."""
    return TableReader(path, dim)
