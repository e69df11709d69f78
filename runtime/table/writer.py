"""Streaming, atomic writing of HPS tables.

Rows are appended chunk by chunk (memory stays at one chunk whatever the table size) into a
hidden folder beside the destination, which is renamed into place only by ``commit``; an error
or a crash leaves no half-written table. Checksums and statistics for ``table.json`` are computed
on the way, so nothing is read twice.
"""

from __future__ import annotations

import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import AtomicDirectory, check_destination
from ..checksum import crc32
from ..direct_io import DirectFile
from ..errors import InvalidInputError
from .duplicates import DuplicateCounter, DuplicateStats
from .file_layout import (
    EMPTY_KEY_INT64,
    KEY_DTYPE,
    KEY_FILE,
    META_DTYPE,
    META_FILE,
    VECTOR_DTYPE,
    VECTOR_FILE,
)
from .finite import check_finite, non_finite_rows
from .sidecar import FileRecord, Sidecar, write_sidecar


@dataclass(frozen=True)
class TableSummary:
    """What ``TableWriter.commit`` wrote."""

    path: Path
    num_keys: int
    dim: int
    bytes: int
    duplicates: DuplicateStats | None
    non_finite: int | None
    seconds: float
    checksum: str

    def to_dict(self) -> dict:
        return {
            "path": str(self.path),
            "num_keys": self.num_keys,
            "dim": self.dim,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
            "duplicates": None if self.duplicates is None else self.duplicates.extra_rows,
            "non_finite": self.non_finite,
            "checksum": self.checksum,
        }


_DIRECT_MIN_BYTES = 64 << 20  # files at least this big (when announced) bypass the page cache


class _Sink:
    """One output file with a running CRC32 (runtime/direct_io.py says how it is written)."""

    def __init__(self, path: Path, expected_bytes: int = 0):
        self.path = path
        self.file = DirectFile(
            path, expected_bytes=expected_bytes, direct=expected_bytes >= _DIRECT_MIN_BYTES
        )
        self.crc = 0

    @property
    def bytes(self) -> int:
        return self.file.bytes

    def update_crc(self, view: memoryview) -> None:
        self.crc = crc32(view, self.crc)

    def write(self, view: memoryview) -> None:
        self.file.write(view)

    def close(self, sync: bool) -> FileRecord:
        self.file.close(sync)
        return FileRecord(self.bytes, f"{self.crc:08x}", os.stat(self.path).st_mtime_ns)

    def discard(self) -> None:
        self.file.discard()


class TableWriter:
    """Write one HPS table by appending chunks of rows.

    Args:
        dest: the table folder to create.
        dim: floats per vector.
        overwrite: replace ``dest`` if it exists (else OutputExistsError).
        with_meta: also write ``meta`` (one int64 per key; pass ``meta`` to every ``append``).
        sidecar: write ``table.json``.
        source: free-form description of where the rows came from, kept in the sidecar.
        atomic: build beside ``dest`` and rename at commit. Pass False only when ``dest`` is
            already inside a folder that is itself being built atomically.
        count_duplicates / scan_values: gather these statistics for the sidecar.
        allow_non_finite: accept vectors holding NaN or Inf (counted in the sidecar); by
            default ``append`` refuses them, naming the row and key (finite.py), and the
            caller's abort leaves nothing behind. Checked only with ``scan_values``.
        sync: fsync the files at commit.
        expected_rows: how many rows will be appended, when known: the files are allocated up
            front (faster writes; a full disk fails before copying) and trimmed at commit if
            fewer came.

    Example:
        >>> with TableWriter("out/users", dim=16) as w:   # doctest: +SKIP
        ...     w.append(keys, vectors)
    """

    def __init__(
        self,
        dest: Path | str,
        dim: int,
        *,
        overwrite: bool = False,
        with_meta: bool = False,
        sidecar: bool = True,
        source: dict | None = None,
        atomic: bool = True,
        count_duplicates: bool = True,
        scan_values: bool = True,
        sync: bool = True,
        expected_rows: int | None = None,
        allow_non_finite: bool = False,
    ):
        if int(dim) <= 0:
            raise InvalidInputError(f"dim must be positive, got {dim}", location=str(dest))
        self.dest = Path(dest)
        self.dim = int(dim)
        self.with_meta = with_meta
        self.source = dict(source or {})
        self.sync = sync
        self._want_sidecar = sidecar
        self.allow_non_finite = allow_non_finite
        self._started = time.perf_counter()
        if atomic:
            self._work: AtomicDirectory | None = AtomicDirectory(self.dest, overwrite=overwrite)
            folder = self._work.path
        else:
            check_destination(self.dest, overwrite=False)
            self._work = None
            self.dest.mkdir(parents=True)
            folder = self.dest
        self.folder = folder
        rows = max(0, int(expected_rows or 0))
        opened: list[_Sink] = []
        try:
            for name, nbytes in (
                (KEY_FILE, rows * 8),
                (VECTOR_FILE, rows * 4 * self.dim),
                (META_FILE, rows * 8),
            ):
                if name != META_FILE or with_meta:
                    opened.append(_Sink(folder / name, nbytes))
        except BaseException:  # e.g. no space for the announced rows: leave nothing behind
            for sink in opened:
                sink.discard()
            if self._work is not None:
                self._work.abort()
            else:
                shutil.rmtree(self.dest, ignore_errors=True)
            raise
        self._keys, self._vectors = opened[0], opened[1]
        self._meta = opened[2] if with_meta else None
        self._dups = DuplicateCounter() if count_duplicates else None
        self._non_finite: int | None = 0 if scan_values else None
        self._crc_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hps-table-crc")
        self.num_keys = 0
        self._closed = False

    def append(self, keys: np.ndarray, vectors: np.ndarray, meta: np.ndarray | None = None) -> None:
        """Append rows: ``keys`` (n,) integers, ``vectors`` (n, dim) floats, ``meta`` (n,)."""
        keys = _as_keys(keys, self.dest, self.num_keys)
        vectors = np.asarray(vectors)
        if vectors.ndim != 2 or vectors.shape != (keys.size, self.dim):
            raise InvalidInputError(
                f"rows {self.num_keys}..{self.num_keys + keys.size}: got vectors of shape "
                f"{vectors.shape}, expected ({keys.size}, {self.dim})",
                location=str(self.dest),
            )
        if not (
            np.issubdtype(vectors.dtype, np.floating) or np.issubdtype(vectors.dtype, np.integer)
        ):
            raise InvalidInputError(
                f"vectors of dtype {vectors.dtype} are not numbers", location=str(self.dest)
            )
        vectors = np.ascontiguousarray(vectors, dtype=VECTOR_DTYPE)
        if self.with_meta:
            if meta is None or np.shape(meta) != keys.shape:
                raise InvalidInputError(
                    "meta must hold one integer per key", location=str(self.dest)
                )
            meta = np.ascontiguousarray(meta, dtype=META_DTYPE)
        elif meta is not None:
            raise InvalidInputError(
                "meta given to a writer created without with_meta", location=str(self.dest)
            )
        if not keys.size:
            return
        parts = [(self._keys, keys), (self._vectors, vectors)]
        if self._meta is not None and meta is not None:
            parts.append((self._meta, meta))
        views = [(sink, memoryview(array).cast("B")) for sink, array in parts]
        # The checks (CRC32, duplicate count, NaN/Inf scan; all release the GIL) run on a
        # helper thread while this one writes the same chunk, so the disk never waits for them;
        # both finish before append returns, so the caller may reuse its arrays right away.
        dups, scan = self._dups, self._non_finite is not None

        def helper() -> np.ndarray:
            for sink, view in views:
                sink.update_crc(view)
            if dups is not None:
                dups.add(keys)
            return non_finite_rows(vectors) if scan else np.empty(0, dtype=np.int64)

        checks = self._crc_pool.submit(helper)
        try:
            for sink, view in views:
                sink.write(view)
        finally:
            bad_rows = checks.result()
        if bad_rows.size and not self.allow_non_finite:
            check_finite(keys, vectors, str(self.dest), first_row=self.num_keys)
        if scan:
            self._non_finite += bad_rows.size
        self.num_keys += keys.size

    def commit(self) -> TableSummary:
        """Finish the files, write ``table.json`` and move the table into place."""
        if self._closed:
            raise RuntimeError("TableWriter already closed")
        self._crc_pool.shutdown(wait=True)
        try:
            if self.num_keys == 0:
                raise InvalidInputError(
                    "no rows to write: HPS cannot load an empty table", location=str(self.dest)
                )
            records = {
                KEY_FILE: self._keys.close(self.sync),
                VECTOR_FILE: self._vectors.close(self.sync),
            }
            if self._meta is not None:
                records[META_FILE] = self._meta.close(self.sync)
            dups = self._dups.finish() if self._dups is not None else None
            sidecar = Sidecar(
                dim=self.dim,
                num_keys=self.num_keys,
                files=records,
                duplicates=None if dups is None else dups.extra_rows,
                sentinel_keys=0,
                non_finite=self._non_finite,
                source=self.source,
            )
            if self._want_sidecar:
                write_sidecar(self.folder, sidecar)
            if self._work is not None:
                self._work.commit()
        except BaseException:
            self.abort()
            raise
        self._closed = True
        total = sum(r.bytes for r in records.values())
        return TableSummary(
            self.dest,
            self.num_keys,
            self.dim,
            total,
            dups,
            self._non_finite,
            time.perf_counter() - self._started,
            sidecar.checksum(),
        )

    def abort(self) -> None:
        """Discard everything written (nothing appears at ``dest``)."""
        if self._closed:
            return
        self._closed = True
        self._crc_pool.shutdown(wait=True)
        for sink in (self._keys, self._vectors, self._meta):
            if sink is not None:
                sink.discard()
        if self._dups is not None:
            self._dups.finish()
        if self._work is not None:
            self._work.abort()
        else:
            shutil.rmtree(self.dest, ignore_errors=True)

    def __enter__(self) -> "TableWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def _as_keys(keys: np.ndarray, dest: Path, offset: int) -> np.ndarray:
    keys = np.asarray(keys)
    if keys.ndim != 1:
        raise InvalidInputError(f"keys must be 1-D, got shape {keys.shape}", location=str(dest))
    if keys.size and not np.issubdtype(keys.dtype, np.integer):
        raise InvalidInputError(f"keys must be integers, got {keys.dtype}", location=str(dest))
    if keys.dtype == np.uint64 and keys.size and keys.max() > np.iinfo(np.int64).max:
        row = int(np.argmax(keys > np.iinfo(np.int64).max)) + offset
        raise InvalidInputError(
            f"key {keys.max()} at row {row} does not fit int64", location=str(dest)
        )
    keys = np.ascontiguousarray(keys, dtype=KEY_DTYPE)
    hits = np.flatnonzero(keys == EMPTY_KEY_INT64)
    if hits.size:
        raise InvalidInputError(
            f"key {EMPTY_KEY_INT64} at row {int(hits[0]) + offset} is the GPU cache's empty-slot "
            "marker and can never be looked up",
            location=str(dest),
            hint="remap or drop that key before writing the table",
        )
    return keys


def write_table(
    dest: Path | str,
    keys: np.ndarray,
    vectors: np.ndarray,
    meta: np.ndarray | None = None,
    **options,
) -> TableSummary:
    """Write a whole table from in-memory arrays (convenience for small tables and tests)."""
    vectors = np.asarray(vectors)
    dim = vectors.shape[1] if vectors.ndim == 2 else 0
    options.setdefault("expected_rows", len(np.asarray(keys).reshape(-1)))
    writer = TableWriter(dest, dim, with_meta=meta is not None, **options)
    try:
        writer.append(keys, vectors, meta)
    except BaseException:
        writer.abort()
        raise
    return writer.commit()
