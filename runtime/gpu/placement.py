"""Where a key lives in the dynamic cache, and how big a cache is: shared by GPU and reference.

A key may live in one of two sets (two-choice hashing): its primary
``set_of = ((mix64(k) >> 32) * num_sets) >> 32`` or its second set, the same multiply-shift of
the hash's low 32 bits (the next set when that equals the primary). Bit for bit what
cuda/hps_common.cuh computes. A key is in at most one way of one of its two sets; a probe reads
both sets' keys at once.
"""

from __future__ import annotations

import math

import numpy as np

from ..hashing import mix64

# Ways per set (-DHPS_WAYS of the kernels, kernels.py). A set's keys are contiguous, so a probe
# reads them all at once (8 keys: 64 bytes, one L2 fetch) and compares them: the hit is proven by
# that one read, with no digests and no second read. Measured on an H100 80GB HBM3, 1 M-key query
# at dim 32 on a full cache: 0.96 of a plain gather with 8-way sets, 0.90 with 32-way sets and
# 16-bit digests; the Zipf hit rate of 8-way sets is within 0.3 % of 32-way ones (0.9631 and
# 0.9652 of ideal).
# A constant: other widths are for kernel studies only (benchmarks/gpu_query_variants.py).
WAYS = 8
EMPTY_KEY = np.iinfo(np.int64).max
# A hit adds to its slot's score only when the key's sampling hash picks it (1 in HIT_SAMPLE;
# then it adds HIT_SAMPLE), so most hits cost no atomic write. HPS_HIT_SAMPLE_SHIFT in the
# kernels. Measured: 1 in 4 keeps the Zipf hit rate within 1 % of exact counting.
HIT_SAMPLE_SHIFT = 2
HIT_SAMPLE = 1 << HIT_SAMPLE_SHIFT
# Batches of this many keys or more are de-duplicated on the GPU before the query (fewer rows
# queried, unique misses); smaller ones query every key directly.
DEDUP_MIN_KEYS = 65536
# A de-duplicated query counts a key's sampled hits (its occurrences) in a one-byte-per-slot
# array that stays in L2, capped at HIT_WEIGHT_CAP per query; the bytes are added into the
# scores (× HIT_SAMPLE) at the latest every HIT_FOLD_EVERY such queries, so a byte never
# overflows, and before anything reads or rewrites the scores. HPS_HIT_WEIGHT_CAP in the kernels.
HIT_WEIGHT_CAP = 15
HIT_FOLD_EVERY = 17
assert HIT_WEIGHT_CAP * HIT_FOLD_EVERY <= 255
_GOLDEN = 0x9E3779B97F4A7C15


def query_seed(query_number: int) -> int:
    """The sampling seed of the n-th query of a cache (int64, as the kernel takes it)."""
    value = (query_number * _GOLDEN) & 0xFFFFFFFFFFFFFFFF
    return value - (1 << 64) if value >= 1 << 63 else value


def sampled_hits(keys: np.ndarray, seed: int) -> np.ndarray:
    """Which keys' hits count in the query with this seed (the kernel's rule)."""
    return (mix64(np.asarray(keys, np.int64) ^ np.int64(seed)) & np.uint64(HIT_SAMPLE - 1)) == 0


def counted_hits(keys: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The hits a query of ``keys`` counts, as (key positions, weights): every sampled occurrence
    once in a batch queried directly; in a de-duplicated batch (DEDUP_MIN_KEYS keys or more),
    each sampled distinct key once (its first position) with its occurrences capped at
    HIT_WEIGHT_CAP. Each weight adds HIT_SAMPLE to the key's score."""
    keys = np.asarray(keys, np.int64)
    sampled = np.flatnonzero(sampled_hits(keys, seed))
    if keys.size < DEDUP_MIN_KEYS:
        return sampled, np.ones(sampled.size, np.int64)
    _, first, counts = np.unique(keys[sampled], return_index=True, return_counts=True)
    return sampled[first], np.minimum(counts, HIT_WEIGHT_CAP)


def set_of(keys: np.ndarray, num_sets: int) -> np.ndarray:
    """The primary set index (int64) of each key."""
    h = mix64(keys)
    return (((h >> np.uint64(32)) * np.uint64(num_sets)) >> np.uint64(32)).astype(np.int64)


def sets_of(keys: np.ndarray, num_sets: int) -> tuple[np.ndarray, np.ndarray]:
    """(primary, second) set of each key (int64 each). The second set is the multiply-shift of
    the hash's low 32 bits, moved to the next set when it equals the primary, so the two differ
    whenever there are two sets (hps_common.cuh ``set2_of``)."""
    h = mix64(keys)
    n = np.uint64(num_sets)
    low = h & np.uint64(0xFFFFFFFF)
    np.right_shift(h, np.uint64(32), out=h)
    primary = ((h * n) >> np.uint64(32)).astype(np.int64)
    second = ((low * n) >> np.uint64(32)).astype(np.int64)
    if num_sets > 1:
        same = second == primary
        second[same] = (primary[same] + 1) % num_sets
    return primary, second


# dc_fold_hits reads the hit bytes and scores 16 slots at a time (16-byte loads), so both arrays
# are allocated padded to a multiple of 16 slots; padding slots never hold a key and stay 0.
FOLD_GROUP_SLOTS = 16


def padded_slots(slots: int) -> int:
    """Slots of the score and hit-byte arrays of a cache with ``slots`` slots."""
    return -(-slots // FOLD_GROUP_SLOTS) * FOLD_GROUP_SLOTS


# Slots per row the cache is meant to hold: 3 % more slots than rows, so that start-up prefill
# (prefill_plan.py: two choices per key and cuckoo moves) places every one of them. Measured in
# simulation over tables of 1 K to 8 M rows: 1.01 already places all, 1.03 leaves margin; the
# steady cache then holds up to 3 % more rows than asked for.
SLOT_HEADROOM = 1.03


def rows_to_cache(table_rows: int, gpucacheper: float) -> int:
    """The rows a dynamic cache is meant to hold: ``ceil(gpucacheper × rows)`` (rounded to 6
    decimals first, so that 0.07 × 100 is 7, not 8), at most the table's."""
    wanted = math.ceil(round(gpucacheper * table_rows, 6))
    return int(min(max(0, table_rows), max(0, wanted)))


def num_sets_for(table_rows: int, gpucacheper: float) -> int:
    """Sets of a dynamic cache for a table of ``table_rows`` keys: room for
    ``rows_to_cache`` rows (HPS: at least 64) with SLOT_HEADROOM."""
    rows = max(64, rows_to_cache(table_rows, gpucacheper))
    return max(1, math.ceil(SLOT_HEADROOM * rows / WAYS))


def tile_width(dim: int) -> int:
    """Lanes that cooperate on one key: enough 16-byte accesses to copy a row, 2 to 16."""
    per_row = max(1, math.ceil(dim / 4))
    width = 2
    while width < per_row and width < 16:
        width *= 2
    return width
