"""Where everything lives in the shared-memory segment of ``multi_process_hash_map``: sizes and
offsets only (no I/O), so that the start-up sizing check and the tables compute the same.

Segment: a 4 KiB header, a directory of ``MAX_TABLES`` entries (one per table tag: its layout,
its region and its load record), then one region per table, page-aligned, handed out in order.

Table region (``P`` partitions; per partition ``C`` entries of room, ``R = C + spare`` rows and
``S = ceil(C / SLOT_LOAD)`` index slots):

    headers   (P + 1) × 8 int64   row 0: the table (LRU clock); row 1 + p: partition p's
                                  write sequence, live, tombstones, rows handed out, free rows,
                                  commit stamp, evictions, index epoch (one cache line each)
    index     P × S × (key, row)  open addressing per partition; row -1 empty, -2 deleted
    meta      P × R int64         access count (LFU) or clock (LRU)
    free      P × R int64         a stack of free rows per partition
    rows      P × R × W float32   per row: its commit stamp and its key (int64 each: 0 = free,
                                  else the row holds that key's vector), then the vector
                                  (W = 4 + dim, rounded up to even)

The rows are the truth: the index is a cache of (key → row) over them, and a partition whose
writer died half-way is rebuilt from them. ``spare`` rows let an update write new vectors
beside the old ones (copy-on-write), so that no row is rewritten while it is live.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MAX_TABLES = 512
TAG_BYTES = 240
RECORD_BYTES = 1024
SEGMENT_HEADER_BYTES = 4096
PAGE = 4096
SLOT_LOAD = 0.5  # index slots per partition = room / SLOT_LOAD
MAX_LOAD = 0.75  # live + deleted above this share of the slots: the partition's index is rebuilt
HEADROOM = 1.25  # without an overflow_margin: room for 25 % more keys than the table file has
HEADER_COLUMNS = 8
# header columns of a partition (row 1 + p of the headers)
SEQ, LIVE, TOMB, TOP, NFREE, STAMP, EVICTED, EPOCH = range(8)
ROW_HEADER = 4  # float32 words before a row's vector: its stamp and its key (two int64)
CLOCK = 0  # header column of the table row (row 0)


def align(value: int, to: int = 64) -> int:
    return (value + to - 1) // to * to


def partition_room(num_keys: int, num_partitions: int, overflow_margin: int | None) -> int:
    """Entries one partition has room for: ``overflow_margin`` when it is the smaller, else the
    table file's share of keys per partition (plus four standard deviations and 16) × HEADROOM.
    """
    share = num_keys / num_partitions
    room = int(math.ceil((share + 4 * math.sqrt(share) + 16) * HEADROOM))
    return room if overflow_margin is None else min(int(overflow_margin), room)


@dataclass(frozen=True)
class TableLayout:
    """Sizes and byte offsets (from the region's start) of one table's arrays."""

    dim: int
    partitions: int
    room: int  # entries per partition
    rows: int  # rows per partition (room + spare)
    slots: int  # index slots per partition
    width: int  # float32 words per row (ROW_HEADER + dim, rounded up to even)
    headers: int
    index: int
    meta: int
    free: int
    row_data: int  # offset of the rows (stamp, key, vector)
    nbytes: int


def table_layout(dim: int, partitions: int, room: int) -> TableLayout:
    rows = room + max(16, room // 32)
    slots = max(8, int(math.ceil(room / SLOT_LOAD)) + 1)
    width = ROW_HEADER + dim + dim % 2
    offset = 0
    fields = {}
    for name, size in (
        ("headers", (partitions + 1) * HEADER_COLUMNS * 8),
        ("index", partitions * slots * 16),
        ("meta", partitions * rows * 8),
        ("free", partitions * rows * 8),
        ("row_data", partitions * rows * width * 4),
    ):
        fields[name] = offset
        offset = align(offset + size)
    return TableLayout(
        dim, partitions, room, rows, slots, width, nbytes=align(offset, PAGE), **fields
    )


def directory_bytes() -> int:
    return align(MAX_TABLES * ENTRY_BYTES, PAGE)


def first_region() -> int:
    """Offset of the first table region."""
    return SEGMENT_HEADER_BYTES + directory_bytes()


ENTRY_BYTES = 2048  # one directory entry (see shm_segment.ENTRY, which must fit)
