"""Start-up loading of table files into the CPU tiers.

- ``table_checksum``: the identity of a table's content, in ``table.json``'s format (taken from
  a current sidecar, else computed in one streaming CRC32 pass). RocksDB and Redis keep it in
  their bookkeeping record, so an unchanged table is not rewritten at the next start.
- ``volatile_rows``: which rows go into the volatile tier. HPS's ``initial_cache_rate`` is
  honoured (HPS v24.06 only logs it and inserts everything): the first ``round(rate × keys)``
  rows, hottest first when the table has ``meta`` (access counts), else in file order (tables
  are written hot rows first). With an ``overflow_margin``, each partition takes at most
  ``margin`` of them (the hottest), so the load never evicts what it just inserted.
- ``load_volatile``: insert those rows in chunks (bounded memory, file-order reads).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .checksum import file_crc32
from .hashing import partition_of
from .table.file_layout import KEY_FILE, META_FILE, VECTOR_FILE
from .table.reader import TableReader

LOAD_ROWS = 1 << 16


def table_checksum(reader: TableReader) -> str:
    """``Sidecar.checksum()`` of the table (computed when there is no current sidecar)."""
    if reader.sidecar is not None and reader.sidecar.dim == reader.dim:
        return reader.sidecar.checksum()
    names = [KEY_FILE, VECTOR_FILE] + ([META_FILE] if reader.has_meta else [])
    parts = []
    for name in sorted(names):
        crc, size = file_crc32(reader.path / name)
        parts.append(f"{name}:{size}:{crc:08x}")
    return f"dim={reader.dim};" + ";".join(parts)


def volatile_rows(
    reader: TableReader, rate: float, *, num_partitions: int, overflow_margin: int | None
) -> np.ndarray | None:
    """Row numbers to load, in load order; None means every row in file order."""
    n = reader.num_keys
    count = min(n, int(round(max(0.0, min(1.0, rate)) * n)))
    meta = reader.meta()
    limited = overflow_margin is not None and overflow_margin * num_partitions < n
    if count == n and not limited:
        return None
    if meta is not None:
        order = np.argsort(-np.asarray(meta), kind="stable")[:count]  # hottest first
    else:
        order = np.arange(count, dtype=np.int64)
    if limited and order.size:
        part = partition_of(np.take(reader.keys(), order), num_partitions)
        by_part = np.argsort(part, kind="stable")
        starts = np.searchsorted(part[by_part], np.arange(num_partitions))
        rank = np.empty(order.size, dtype=np.int64)
        rank[by_part] = np.arange(order.size) - starts[part[by_part]]
        order = order[rank < overflow_margin]
    return order


def load_volatile(
    tier,
    reader: TableReader,
    rows: np.ndarray | None,
    *,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Insert ``rows`` of the table (all when None) into a volatile tier; returns rows sent."""
    row_bytes = 8 + 4 * reader.dim
    sent = 0
    if rows is None:
        for chunk in reader.chunks(LOAD_ROWS):
            tier.insert(np.array(chunk.keys), np.array(chunk.vectors))
            sent += chunk.keys.size
            if progress:
                progress(chunk.keys.size * row_bytes)
        return sent
    keys, vectors = reader.keys(), reader.vectors()
    for first in range(0, rows.size, LOAD_ROWS):
        part = rows[first : first + LOAD_ROWS]
        ascending = np.sort(part)  # read in file order, insert in load order
        where = np.searchsorted(ascending, part)
        tier.insert(np.take(keys, ascending)[where], np.take(vectors, ascending, axis=0)[where])
        sent += part.size
        if progress:
            progress(part.size * row_bytes)
    return sent
