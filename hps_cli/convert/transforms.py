"""Streams between a source table and a sink: deduplication and hot-first reordering.

Both keep memory bounded whatever the table size:

- ``Deduplicated`` (``--dedupe first|last``) sorts the keys by key range exactly as the RocksDB
  bulk loader does (one pass over the keys per range of at most ``budget_bytes``; keys are read
  from the input when it offers random access, else staged to a temporary file, 8 bytes a row),
  marks the losing rows in a bitmap (1 bit per row) and then streams the input again, dropping
  them. The kept rows stay in input order.
- ``HotFirst`` orders rows by ``meta`` descending (ties keep input order), as HPS pre-fills the
  GPU cache in file order. A sample of ``meta`` splits the rows into meta ranges of about
  ``budget_bytes``; rows are spilled to one file per range, then each range is sorted in memory.
  Rows sharing one meta value are never split, so a range can exceed the budget only by the
  rows of a single value; those are copied in input order without sorting.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

from ..formats.base import Chunk, SourceTable, as_keys
from ..runtime.persistent.rocksdb_bulk import (
    BulkSource,
    key_range_bounds,
    resolve_duplicates,
    select_key_range,
)

DEFAULT_BUDGET_BYTES = 128 << 20


class Stream:
    """Chunks of one table as they go to a sink; ``num_rows`` is known before the first chunk."""

    def __init__(self, table: SourceTable):
        self.table = table
        self.num_rows = table.num_rows
        self.dim = table.dim
        self.has_meta = table.has_meta
        self.duplicates: int | None = None  # extra rows found by a dedupe pass
        self.dropped = 0
        self.reordered = False

    def chunks(self) -> Iterator[Chunk]:
        return self.table.chunks()

    def close(self) -> None:
        pass


def _key_reader(table: SourceTable, tmp: Path):
    """read_keys(first, count) of a table: from its files, or from a staged key file."""
    access = table.random_access()
    if access is not None:
        loc = str(access.keys.path)
        return lambda first, count: as_keys(access.keys.read(first, count), loc, first)
    path = tmp / "keys"
    with open(path, "wb") as handle:
        for chunk in table.chunks():
            handle.write(np.ascontiguousarray(chunk.keys, dtype="<i8").tobytes())
    return lambda first, count: np.fromfile(path, dtype="<i8", count=count, offset=first * 8)


class Deduplicated(Stream):
    def __init__(
        self, inner: Stream, mode: str, tmp: Path, budget_bytes: int = DEFAULT_BUDGET_BYTES
    ):
        super().__init__(inner.table)
        self.inner = inner
        table = inner.table
        n = table.num_rows
        source = BulkSource(
            "", table.dim, n, None, "", table.location, read_keys=_key_reader(table, tmp)
        )
        parts = max(1, -(-n * 24 // budget_bytes))
        bounds = [None, *key_range_bounds(source, parts).tolist(), None]
        keep = np.zeros((n + 7) // 8, dtype=np.uint8)
        found = 0
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            okeys, rows = select_key_range(source, lo, hi)
            _, kept, extra = resolve_duplicates(okeys, rows, mode, table.location)
            found += extra
            np.bitwise_or.at(keep, kept >> 3, (1 << (kept & 7)).astype(np.uint8))
        self._keep = keep
        self.duplicates = found
        self.dropped = found
        self.num_rows = n - found

    def chunks(self) -> Iterator[Chunk]:
        out = 0
        for chunk in self.inner.chunks():
            n = chunk.keys.size
            first, skip = divmod(chunk.start, 8)
            packed = self._keep[first : (chunk.start + n + 7) // 8]
            mask = np.unpackbits(packed, bitorder="little")[skip : skip + n].astype(bool)
            if mask.all():
                yield Chunk(out, chunk.keys, chunk.vectors, chunk.meta)
            else:
                yield Chunk(
                    out,
                    chunk.keys[mask],
                    chunk.vectors[mask],
                    None if chunk.meta is None else chunk.meta[mask],
                )
            out += int(mask.sum())


class HotFirst(Stream):
    def __init__(self, inner: Stream, tmp: Path, budget_bytes: int = DEFAULT_BUDGET_BYTES):
        super().__init__(inner.table)
        self.inner, self.tmp, self.budget = inner, tmp, budget_bytes
        self.num_rows, self.duplicates = inner.num_rows, inner.duplicates
        self.dropped = inner.dropped
        self.reordered = True
        self._record = np.dtype([("k", "<i8"), ("m", "<i8"), ("v", "<f4", (inner.dim,))])

    def _bounds(self, parts: int) -> np.ndarray:
        step = max(1, self.num_rows // 65536)
        sample = [(-chunk.meta[(-chunk.start) % step :: step]) for chunk in self.inner.chunks()]
        sample = np.sort(np.concatenate(sample))
        picks = (np.arange(1, parts) * sample.size) // parts
        return np.unique(sample[picks])

    def _single_value(self, path: Path, rows_per_read: int) -> bool:
        first = None
        with open(path, "rb") as handle:
            while block := handle.read(rows_per_read * self._record.itemsize):
                meta = np.frombuffer(block, dtype=self._record)["m"]
                first = meta[0] if first is None else first
                if (meta != first).any():
                    return False
        return True

    def chunks(self) -> Iterator[Chunk]:
        parts = max(1, -(-self.num_rows * self._record.itemsize * 2 // self.budget))
        if parts == 1:
            chunks = list(self.inner.chunks())
            if not chunks:
                return
            keys = np.concatenate([c.keys for c in chunks])
            vectors = np.concatenate([c.vectors for c in chunks])
            meta = np.concatenate([c.meta for c in chunks])
            del chunks
            order = np.argsort(-meta, kind="stable")
            yield Chunk(0, keys[order], vectors[order], meta[order])
            return
        bounds = self._bounds(parts)
        folder = Path(tempfile.mkdtemp(prefix="hot-", dir=self.tmp))
        try:
            files = [open(folder / f"{i:04d}", "wb") for i in range(bounds.size + 1)]
            try:
                for chunk in self.inner.chunks():
                    bucket = np.searchsorted(bounds, -chunk.meta, side="right")
                    order = np.argsort(bucket, kind="stable")
                    edges = np.searchsorted(bucket[order], np.arange(bounds.size + 2))
                    rec = np.empty(chunk.keys.size, dtype=self._record)
                    rec["k"], rec["m"], rec["v"] = chunk.keys, chunk.meta, chunk.vectors
                    rec = rec[order]
                    for b in range(bounds.size + 1):
                        if edges[b + 1] > edges[b]:
                            files[b].write(rec[edges[b] : edges[b + 1]].tobytes())
            finally:
                for handle in files:
                    handle.close()
            out = 0
            rows_per_read = max(1, self.budget // self._record.itemsize)
            for b in range(bounds.size + 1):
                path = folder / f"{b:04d}"
                rows = path.stat().st_size // self._record.itemsize
                single = rows and self._single_value(path, rows_per_read)
                if rows * self._record.itemsize <= 2 * self.budget or not single:
                    # (a range is larger than the budget only when one meta value holds most of
                    # its rows; if it also holds others it is sorted in memory all the same)
                    rec = np.fromfile(path, dtype=self._record)
                    rec = rec[np.argsort(-rec["m"], kind="stable")]
                    yield Chunk(out, rec["k"].copy(), rec["v"].copy(), rec["m"].copy())
                    out += rows
                else:  # all rows share one meta value: already in input order
                    with open(path, "rb") as handle:
                        while block := handle.read(rows_per_read * self._record.itemsize):
                            rec = np.frombuffer(block, dtype=self._record)
                            yield Chunk(out, rec["k"].copy(), rec["v"].copy(), rec["m"].copy())
                            out += rec.size
                path.unlink()
        finally:
            shutil.rmtree(folder, ignore_errors=True)
