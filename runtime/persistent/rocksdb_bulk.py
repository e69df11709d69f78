"""Bulk loading tables into RocksDB in HPS's layout, and reading them back out.

Loading (``bulk_load``) builds each table's column family as SST files in a hidden folder
beside the database, then ingests them (``IngestExternalFile``, atomic per family):

1. Sort in bounded memory. RocksDB's default comparator orders keys by their bytes, and HPS
   stores keys as raw little-endian int64, so the sort key is the byte-swapped key
   (``bytewise_order_key``). A sample of the keys splits them into key ranges of at most
   ``budget_bytes`` of rows each; one pass over the keys per range selects its rows, sorts them,
   resolves duplicates (``first``, ``last`` or ``error``: a family cannot hold a key twice) and
   gathers their vectors by row number. Ranges come out in order, so the SST files never overlap.
   Only the keys are read once per range; vectors are read once in all.
2. SST files are written by ``sst_writer.SstFileBuilder`` (NumPy, no per-row Python call).
3. Nothing touches the database until every table's files are built: a bad input fails before
   the database is opened for writing. Then per table: with ``overwrite`` the old family and
   its bookkeeping record are dropped, the family is created, the files are ingested (moved),
   and the record ``{"checksum", "num_keys", "dim", "complete": true}`` is written last, so an
   interrupted load never looks complete.

Inputs come as ``BulkSource`` s: a reader of key ranges and a gatherer of vectors by row
number (memory maps of the input files). Inputs that cannot be read by row number are first
staged into two raw files in the work folder (``stage_chunks``).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from ..atomic import TMP_MARK, _sibling
from ..errors import InvalidInputError, OutputExistsError
from .rocksdb_layout import (delete_table_record, family, list_families, open_db,
                             write_table_record)
from .sst_writer import DEFAULT_FILE_BYTES, SstFileBuilder, bytewise_order_key

DEFAULT_BUDGET_BYTES = 128 << 20
KEY_CHUNK_ROWS = 1 << 20
_SAMPLE_TARGET = 1 << 16
DEDUPE_MODES = ("first", "last", "error")


@dataclass
class BulkSource:
    """One table to load.

    ``read_keys(first, count)`` returns int64 keys of rows ``[first, first + count)``;
    ``gather(rows)`` returns float32 vectors (len(rows), dim) of ascending row numbers;
    ``release()`` may drop mapped pages after each pass.
    """

    tag: str
    dim: int
    num_rows: int
    read_keys: Callable[[int, int], np.ndarray]
    gather: Callable[[np.ndarray], np.ndarray] | None
    checksum: str
    location: str = ""
    release: Callable[[], None] = field(default=lambda: None)


@dataclass
class BuiltFamily:
    tag: str
    dim: int
    files: list[Path]
    num_keys: int
    duplicates: int
    checksum: str
    bytes: int


def check_families(db_path: Path | str, tags: Iterable[str], overwrite: bool) -> None:
    """Raise OutputExistsError when a family exists and ``overwrite`` is false."""
    existing = set(list_families(db_path))
    for tag in tags:
        if tag in existing and not overwrite:
            raise OutputExistsError(f"the database already has column family '{tag}'",
                                    location=str(db_path),
                                    hint="pass --overwrite to replace that table")


def key_range_bounds(source: BulkSource, parts: int) -> np.ndarray:
    """``parts - 1`` sort-key values splitting the rows into about equal key ranges."""
    if parts <= 1:
        return np.empty(0, dtype=np.uint64)
    step = max(1, source.num_rows // _SAMPLE_TARGET)
    samples = []
    for first in range(0, source.num_rows, KEY_CHUNK_ROWS):
        count = min(KEY_CHUNK_ROWS, source.num_rows - first)
        offset = (-first) % step
        samples.append(bytewise_order_key(source.read_keys(first, count))[offset::step])
    sample = np.sort(np.concatenate(samples))
    picks = (np.arange(1, parts) * sample.size) // parts
    return np.unique(sample[picks])


def select_key_range(source: BulkSource, lo: int | None, hi: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(sort keys, row numbers) of the rows whose sort key is in [lo, hi)."""
    okeys, rows = [], []
    for first in range(0, source.num_rows, KEY_CHUNK_ROWS):
        count = min(KEY_CHUNK_ROWS, source.num_rows - first)
        ok = bytewise_order_key(source.read_keys(first, count))
        if lo is None and hi is None:
            okeys.append(ok)
            rows.append(np.arange(first, first + count, dtype=np.int64))
            continue
        mask = np.ones(count, dtype=bool)
        if lo is not None:
            mask &= ok >= np.uint64(lo)
        if hi is not None:
            mask &= ok < np.uint64(hi)
        hit = np.flatnonzero(mask)
        okeys.append(ok[hit])
        rows.append(hit + first)
    return np.concatenate(okeys), np.concatenate(rows)


def resolve_duplicates(okeys: np.ndarray, rows: np.ndarray, dedupe: str,
             location: str) -> tuple[np.ndarray, np.ndarray, int]:
    """Sort by key (rows of one key stay in input order) and keep one row per key."""
    order = np.argsort(okeys, kind="stable")
    okeys, rows = okeys[order], rows[order]
    same = okeys[1:] == okeys[:-1]
    dups = int(np.count_nonzero(same))
    if dups:
        if dedupe == "error":
            at = int(np.argmax(same))
            key = int(okeys[at:at + 1].byteswap().view(np.int64)[0])
            raise InvalidInputError(
                f"key {key} appears more than once (rows {int(rows[at])} and {int(rows[at + 1])}); "
                f"{dups} duplicate row(s) in this key range", location=location,
                hint="pass --dedupe first or --dedupe last to keep one row per key")
        keep = np.ones(okeys.size, dtype=bool)
        if dedupe == "first":
            keep[1:] = ~same
        else:
            keep[:-1] = ~same
        okeys, rows = okeys[keep], rows[keep]
    return okeys, rows, dups


def build_family(source: BulkSource, work: Path, *, dedupe: str = "last",
                 budget_bytes: int = DEFAULT_BUDGET_BYTES, file_bytes: int = DEFAULT_FILE_BYTES,
                 progress: Callable[[int], None] | None = None) -> BuiltFamily:
    """Write the SST files of one family into ``work`` (see the module doc)."""
    if dedupe not in DEDUPE_MODES:
        raise ValueError(f"dedupe must be one of {DEDUPE_MODES}")
    work.mkdir(parents=True, exist_ok=True)
    per_row = 24 + 8 * source.dim  # sort key, row number, order; vectors twice while permuting
    parts = max(1, -(-source.num_rows * per_row // budget_bytes))
    bounds = [None, *key_range_bounds(source, parts).tolist(), None]
    files: list[Path] = []
    builder: SstFileBuilder | None = None
    written = dups = 0
    value_bytes = 4 * source.dim
    try:
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            okeys, rows, extra = resolve_duplicates(*select_key_range(source, lo, hi), dedupe, source.location)
            dups += extra
            if not rows.size:
                continue
            by_row = np.argsort(rows)
            gathered = source.gather(rows[by_row])
            if gathered.shape != (rows.size, source.dim):
                raise InvalidInputError(f"gathered vectors of shape {gathered.shape}, expected "
                                        f"({rows.size}, {source.dim})", location=source.location)
            vectors = np.empty_like(gathered)
            vectors[by_row] = gathered
            del gathered
            source.release()
            if builder is None:
                builder = SstFileBuilder(work / f"{len(files):05d}.sst", value_bytes)
                files.append(builder.path)
            builder.add(okeys.byteswap().view(np.int64), vectors)
            written += rows.size
            if progress:
                progress((rows.size + extra) * (8 + value_bytes))
            if builder.file_bytes >= file_bytes:
                builder.finish()
                builder = None
        if builder is not None:
            builder.finish()
    except BaseException:
        if builder is not None:
            builder.abort()
        raise
    size = sum(p.stat().st_size for p in files)
    return BuiltFamily(source.tag, source.dim, files, written, dups, source.checksum, size)


def ingest_families(db_path: Path | str, built: list[BuiltFamily], *, overwrite: bool,
                    num_threads: int | None = None) -> None:
    """Ingest built families into the database (created if missing), replacing existing ones
    only with ``overwrite``. Each family is replaced atomically; its record is written last."""
    import rocksdict as rd

    check_families(db_path, [b.tag for b in built], overwrite)
    db = open_db(db_path, create=True, num_threads=num_threads)
    try:
        for item in built:
            present = item.tag in set(list_families(db_path))
            if present:
                delete_table_record(db, item.tag)
                db.drop_column_family(item.tag)
            cf = family(db, item.tag, create=True, num_threads=num_threads)
            if item.files:
                options = rd.IngestExternalFileOptions()
                options.set_move_files(True)
                cf.ingest_external_file([str(p) for p in item.files], options)
            del cf
            write_table_record(db, item.tag, {"checksum": item.checksum, "num_keys": item.num_keys,
                                              "dim": item.dim, "complete": True})
        db.flush()
    finally:
        db.close()


def work_folder(db_path: Path | str) -> Path:
    """A hidden folder beside the database (same file system, so ingestion can move files)."""
    db_path = Path(db_path).absolute()
    db_path.parent.mkdir(parents=True, exist_ok=True)
    path = _sibling(db_path, TMP_MARK)
    path.mkdir()
    return path


def bulk_load(db_path: Path | str, sources: list[BulkSource], *, overwrite: bool = False,
              dedupe: str = "last", budget_bytes: int = DEFAULT_BUDGET_BYTES,
              progress: Callable[[int], None] | None = None) -> list[BuiltFamily]:
    """Load tables into column families ``source.tag`` of the database at ``db_path``."""
    check_families(db_path, [s.tag for s in sources], overwrite)
    work = work_folder(db_path)
    try:
        built = [build_family(s, work / f"t{i}", dedupe=dedupe, budget_bytes=budget_bytes,
                              progress=progress) for i, s in enumerate(sources)]
        ingest_families(db_path, built, overwrite=overwrite)
        return built
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Staging rows that cannot be read by row number


class StagedRows:
    """Rows written to two raw files (int64 keys, float32 vectors) to be read by row number."""

    def __init__(self, folder: Path, dim: int):
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.dim, self.num_rows = folder, dim, 0
        self._keys = open(folder / "key", "wb")
        self._vectors = open(folder / "emb_vector", "wb")
        self._kmap = self._vmap = None

    def append(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        self._keys.write(np.ascontiguousarray(keys, dtype="<i8").tobytes())
        self._vectors.write(np.ascontiguousarray(vectors, dtype="<f4").tobytes())
        self.num_rows += len(keys)

    def finish(self) -> None:
        self._keys.close()
        self._vectors.close()

    def read_keys(self, first: int, count: int) -> np.ndarray:
        return np.fromfile(self.folder / "key", dtype="<i8", count=count, offset=first * 8)

    def gather(self, rows: np.ndarray) -> np.ndarray:
        if self._vmap is None:
            self._vmap = np.memmap(self.folder / "emb_vector", dtype="<f4", mode="r",
                                   shape=(self.num_rows, self.dim))
        return np.asarray(self._vmap[rows])

    def release(self) -> None:
        self._vmap = None  # dropping the map releases its pages


def stage_chunks(chunks: Iterator, folder: Path, dim: int) -> StagedRows:
    staged = StagedRows(folder, dim)
    try:
        for chunk in chunks:
            staged.append(chunk.keys, chunk.vectors)
    finally:
        staged.finish()
    return staged


# ---------------------------------------------------------------------------------------------
# Reading a family back


def family_rows(db, tag: str) -> int:
    """Rows of a family, counted by iterating its keys (no values are read)."""
    cf = family(db, tag)
    return sum(1 for _ in cf.keys())


def iter_family(db, tag: str, rows: int = 1 << 16) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(raw key bytes as a (n, width) uint8 array, raw value bytes as (n, value_bytes) uint8) in
    key order, ``rows`` at a time. Every key and every value must have the same length."""
    cf = family(db, tag)
    keys: list[bytes] = []
    values: list[bytes] = []
    key_width = value_width = None
    for key, value in cf.items():
        if key_width is None:
            key_width, value_width = len(key), len(value)
        if len(key) != key_width or len(value) != value_width:
            raise InvalidInputError(
                f"column family '{tag}' mixes key or value sizes ({len(key)}/{len(value)} bytes "
                f"after {key_width}/{value_width}): not a table in HPS's layout",
                location=str(db.path()))
        keys.append(key)
        values.append(value)
        if len(keys) == rows:
            yield (np.frombuffer(b"".join(keys), np.uint8).reshape(len(keys), key_width),
                   np.frombuffer(b"".join(values), np.uint8).reshape(len(keys), value_width))
            keys, values = [], []
    if keys:
        yield (np.frombuffer(b"".join(keys), np.uint8).reshape(len(keys), key_width),
               np.frombuffer(b"".join(values), np.uint8).reshape(len(keys), value_width))


def first_value_size(db, tag: str) -> tuple[int, int] | None:
    """(key bytes, value bytes) of the family's first entry, or None when it is empty."""
    cf = family(db, tag)
    for key, value in cf.items():
        return len(key), len(value)
    return None

