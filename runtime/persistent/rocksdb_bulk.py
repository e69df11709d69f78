"""Bulk loading tables into RocksDB in HPS's layout, and reading them back out.

Loading (``bulk_load``) builds each table's column family as SST files in a hidden folder
beside the database, then ingests them (``IngestExternalFile``, atomic per family):

1. Sort in bounded memory (an external MSD sort). RocksDB's default comparator orders keys by
   their bytes, and HPS stores keys as raw little-endian int64, so the sort key is the
   byte-swapped key (``bytewise_order_key``). A sample of the keys splits them into key ranges
   of about ``budget_bytes`` of rows each. One sequential pass over the input appends each row
   (sort key + vector) to its range's spill file in the work folder; then each range is read
   back, sorted (rows of one key keep their input order), its duplicates resolved (``first``,
   ``last`` or ``error``: a family cannot hold a key twice) and written out. Ranges come out in
   order, so the SST files never overlap. A table that fits the budget is sorted in memory
   without spilling. Memory stays at about one range plus one input chunk.
2. SST files are written by ``sst_writer.SstFileBuilder`` (NumPy, no per-row Python call).
3. Nothing touches the database until every table's files are built: a bad input fails before
   the database is opened for writing. Then each family's content is replaced atomically
   (rocksdb_replace.py): a kill at any moment leaves the old table or the new one in it, and
   the record ``{"checksum", "num_keys", "dim", "complete": true}`` is written last, so an
   interrupted load never looks complete.

Inputs come as ``BulkSource`` s: an iterator factory over (keys, vectors) chunks in input
order, plus optionally a cheap reader of keys alone (used to sample the key ranges without
reading the vectors).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from ..atomic import sweep_stale, temp_sibling
from ..errors import InvalidInputError, OutputExistsError
from .rocksdb_families import (
    FamilyState,
    family,
    family_state,
    list_families,
    open_db,
    raw_options,
)
from .rocksdb_replace import replace_family
from .sst_writer import DEFAULT_FILE_BYTES, SstFileBuilder, bytewise_order_key

DEFAULT_BUDGET_BYTES = 128 << 20
KEY_CHUNK_ROWS = 1 << 20
_SAMPLE_TARGET = 1 << 16
DEDUPE_MODES = ("first", "last", "error")


@dataclass
class BulkSource:
    """One table to load.

    ``chunks()`` yields (int64 keys, float32 (n, dim) vectors) in input order, and may be
    called more than once; ``read_keys(first, count)``, when given, returns the int64 keys of
    rows ``[first, first + count)`` without reading vectors.
    """

    tag: str
    dim: int
    num_rows: int
    chunks: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]] | None
    checksum: str
    location: str = ""
    read_keys: Callable[[int, int], np.ndarray] | None = None


@dataclass
class BuiltFamily:
    tag: str
    dim: int
    files: list[Path]
    num_keys: int
    duplicates: int
    checksum: str
    bytes: int


def family_states(db_path: Path | str, tags: Iterable[str]) -> dict[str, FamilyState]:
    """The state of each table in the database at ``db_path`` (opened read-only, so a running
    writer is no obstacle); every table is missing when there is no database."""
    tags = list(tags)
    existing = set(list_families(db_path))
    if not existing:
        return {tag: FamilyState(tag, False, None, None) for tag in tags}
    db = open_db(db_path, read_only=True)
    try:
        return {tag: family_state(db, tag, existing) for tag in tags}
    finally:
        db.close()


def check_families(db_path: Path | str, tags: Iterable[str], overwrite: bool) -> None:
    """Raise OutputExistsError when a family holds a table and ``overwrite`` is false (an empty
    family left by an interrupted load holds none)."""
    if overwrite:
        return
    for tag, state in family_states(db_path, tags).items():
        if state.holds_a_table:
            raise OutputExistsError(
                f"the database already has column family '{tag}'",
                location=str(db_path),
                hint="pass --overwrite to replace that table",
            )


def key_range_bounds(source: BulkSource, parts: int) -> np.ndarray:
    """``parts - 1`` sort-key values splitting the rows into about equal key ranges."""
    if parts <= 1:
        return np.empty(0, dtype=np.uint64)
    step = max(1, source.num_rows // _SAMPLE_TARGET)
    samples = []
    if source.read_keys is not None:
        for first in range(0, source.num_rows, KEY_CHUNK_ROWS):
            count = min(KEY_CHUNK_ROWS, source.num_rows - first)
            okeys = bytewise_order_key(source.read_keys(first, count))
            samples.append(okeys[(-first) % step :: step])
    else:
        first = 0
        for keys, _ in source.chunks():
            samples.append(bytewise_order_key(keys)[(-first) % step :: step])
            first += len(keys)
    if not samples:
        return np.empty(0, dtype=np.uint64)
    sample = np.sort(np.concatenate(samples))
    picks = (np.arange(1, parts) * sample.size) // parts
    return np.unique(sample[picks])


def select_key_range(
    source: BulkSource, lo: int | None, hi: int | None
) -> tuple[np.ndarray, np.ndarray]:
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


def resolve_duplicates(
    okeys: np.ndarray, rows: np.ndarray, dedupe: str, location: str
) -> tuple[np.ndarray, np.ndarray, int]:
    """Sort by key (rows of one key stay in input order) and keep one row per key."""
    order = np.argsort(okeys, kind="stable")
    okeys, rows = okeys[order], rows[order]
    same = okeys[1:] == okeys[:-1]
    dups = int(np.count_nonzero(same))
    if dups:
        if dedupe == "error":
            at = int(np.argmax(same))
            key = int(okeys[at : at + 1].byteswap().view(np.int64)[0])
            raise InvalidInputError(
                f"key {key} appears more than once ({dups} duplicate row(s) found in its key "
                "range)",
                location=location,
                hint="pass --dedupe first or --dedupe last to keep one row per key",
            )
        keep = np.ones(okeys.size, dtype=bool)
        if dedupe == "first":
            keep[1:] = ~same
        else:
            keep[:-1] = ~same
        okeys, rows = okeys[keep], rows[keep]
    return okeys, rows, dups


def _spill(
    source: BulkSource, bounds: np.ndarray, work: Path, progress: Callable[[int], None] | None
) -> list[tuple[Path, Path]]:
    """Append every row's sort key and vector to its key range's two files, in one sequential
    pass; a helper thread writes while the next chunk is read and grouped."""
    from concurrent.futures import ThreadPoolExecutor

    paths = [
        (work / f"range{i:05d}.key", work / f"range{i:05d}.vec") for i in range(bounds.size + 1)
    ]
    handles = [(open(k, "wb"), open(v, "wb")) for k, v in paths]
    rows = 0

    def write(okeys: np.ndarray, vectors: np.ndarray, edges: np.ndarray) -> None:
        for i, (keys_out, vectors_out) in enumerate(handles):
            lo, hi = edges[i], edges[i + 1]
            if hi > lo:
                keys_out.write(okeys[lo:hi])
                vectors_out.write(vectors[lo:hi])

    pending = None
    try:
        with ThreadPoolExecutor(1, thread_name_prefix="spill-write") as writer:
            for keys, vectors in source.chunks():
                # Sorting each chunk (not just grouping it by range) makes every range file a
                # series of sorted runs: the final sort then merges runs, and gathering the
                # vectors in key order reads a few sequential streams instead of random rows.
                okeys = bytewise_order_key(keys)
                order = np.argsort(okeys, kind="stable")
                okeys = okeys[order]
                edges = np.concatenate(
                    [[0], np.searchsorted(okeys, bounds, side="left"), [okeys.size]]
                )
                grouped = (okeys, np.ascontiguousarray(vectors, dtype="<f4")[order], edges)
                if pending is not None:
                    pending.result()
                pending = writer.submit(write, *grouped)
                rows += okeys.size
                if progress:
                    progress(okeys.size * (8 + 4 * source.dim))
            if pending is not None:
                pending.result()
    finally:
        for keys_out, vectors_out in handles:
            keys_out.close()
            vectors_out.close()
    if rows != source.num_rows:
        raise InvalidInputError(
            f"read {rows} rows, expected {source.num_rows}", location=source.location
        )
    return paths


def build_family(
    source: BulkSource,
    work: Path,
    *,
    dedupe: str = "last",
    budget_bytes: int = DEFAULT_BUDGET_BYTES,
    file_bytes: int = DEFAULT_FILE_BYTES,
    progress: Callable[[int], None] | None = None,
) -> BuiltFamily:
    """Write the SST files of one family into ``work`` (see the module doc)."""
    if dedupe not in DEDUPE_MODES:
        raise ValueError(f"dedupe must be one of {DEDUPE_MODES}")
    work.mkdir(parents=True, exist_ok=True)
    row_bytes = 8 + 4 * source.dim
    parts = max(1, -(-source.num_rows * row_bytes * 3 // budget_bytes))  # rows, sorted copy, block
    bounds = key_range_bounds(source, parts)
    files: list[Path] = []
    builder: SstFileBuilder | None = None
    written = dups = 0

    def ranges():
        if bounds.size == 0:  # one range: sort in memory, no spill
            chunks = list(source.chunks())
            okeys = (
                np.concatenate([bytewise_order_key(k) for k, _ in chunks])
                if chunks
                else np.empty(0, np.uint64)
            )
            vectors = (
                np.concatenate([v for _, v in chunks])
                if chunks
                else np.empty((0, source.dim), np.float32)
            )
            del chunks
            if progress:
                progress(okeys.size * row_bytes)
            yield okeys, vectors
            return
        paths = _spill(source, bounds, work, progress)
        most = max(p.stat().st_size for p, _ in paths) // 8
        key_buf = np.empty(most, dtype="<u8")  # reused: fresh arrays would fault every page
        vector_buf = np.empty((most, source.dim), dtype="<f4")
        for key_path, vector_path in paths:
            n = key_path.stat().st_size // 8
            okeys, vectors = key_buf[:n], vector_buf[:n]
            for path, out in ((key_path, okeys), (vector_path, vectors)):
                with open(path, "rb", buffering=0) as handle:
                    view = memoryview(out).cast("B")
                    got = 0
                    while got < len(view):
                        step = handle.readinto(view[got:])
                        if not step:
                            raise InvalidInputError(
                                "a spill file is shorter than written", location=str(path)
                            )
                        got += step
                path.unlink()
            yield okeys, vectors

    try:
        for okeys, vectors in ranges():
            okeys, rows, extra = resolve_duplicates(
                okeys, np.arange(okeys.size), dedupe, source.location
            )
            dups += extra
            if not rows.size:
                continue
            if builder is None:
                builder = SstFileBuilder(work / f"{len(files):05d}.sst", 4 * source.dim)
                files.append(builder.path)
            builder.add(okeys.byteswap().view(np.int64), vectors, order=rows)
            del vectors
            written += rows.size
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


def ingest_families(
    db_path: Path | str,
    built: list[BuiltFamily],
    *,
    overwrite: bool,
    staging: Path,
    num_threads: int | None = None,
    compact: bool = False,
) -> None:
    """Ingest built families into the database (created if missing), replacing existing ones
    only with ``overwrite``. Each family's content is replaced atomically (rocksdb_replace.py);
    with ``compact`` a replaced family is compacted at once, which frees the old table's files
    before this returns (else RocksDB's next background compaction does)."""
    check_families(db_path, [b.tag for b in built], overwrite)
    db = open_db(db_path, create=True, num_threads=num_threads)
    try:
        for item in built:
            record = {"checksum": item.checksum, "num_keys": item.num_keys, "dim": item.dim}
            replace_family(
                db,
                item.tag,
                item.files,
                record,
                staging=staging,
                family_options=raw_options(num_threads),
                compact=compact,
            )
        db.flush()
    finally:
        db.close()


def work_folder(db_path: Path | str) -> Path:
    """A hidden folder beside the database (same file system, so ingestion can move files),
    named for this process; leftovers of dead processes there are removed first."""
    db_path = Path(db_path).absolute()
    db_path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(db_path)
    path = temp_sibling(db_path)
    path.mkdir()
    return path


def bulk_load(
    db_path: Path | str,
    sources: list[BulkSource],
    *,
    overwrite: bool = False,
    dedupe: str = "last",
    budget_bytes: int = DEFAULT_BUDGET_BYTES,
    progress: Callable[[int], None] | None = None,
) -> list[BuiltFamily]:
    """Load tables into column families ``source.tag`` of the database at ``db_path``."""
    check_families(db_path, [s.tag for s in sources], overwrite)
    work = work_folder(db_path)
    try:
        built = [
            build_family(
                s, work / f"t{i}", dedupe=dedupe, budget_bytes=budget_bytes, progress=progress
            )
            for i, s in enumerate(sources)
        ]
        ingest_families(db_path, built, overwrite=overwrite, staging=work)
        return built
    finally:
        shutil.rmtree(work, ignore_errors=True)


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
                location=str(db.path()),
            )
        keys.append(key)
        values.append(value)
        if len(keys) == rows:
            yield (
                np.frombuffer(b"".join(keys), np.uint8).reshape(len(keys), key_width),
                np.frombuffer(b"".join(values), np.uint8).reshape(len(keys), value_width),
            )
            keys, values = [], []
    if keys:
        yield (
            np.frombuffer(b"".join(keys), np.uint8).reshape(len(keys), key_width),
            np.frombuffer(b"".join(values), np.uint8).reshape(len(keys), value_width),
        )


def first_value_size(db, tag: str) -> tuple[int, int] | None:
    """(key bytes, value bytes) of the family's first entry, or None when it is empty."""
    cf = family(db, tag)
    for key, value in cf.items():
        return len(key), len(value)
    return None
