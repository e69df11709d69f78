"""Where a key lives in the dynamic cache, and how big a cache is: shared by GPU and reference.

Bit for bit what cuda/hps_common.cuh computes: ``set = ((mix64(k) >> 32) * num_sets) >> 32`` and
``digest = mix64(k) & (2**DIGEST_BITS - 1)`` (0 replaced by 1; 0 marks an empty way).
"""

from __future__ import annotations

import math
import os

import numpy as np

from ..hashing import mix64

WAYS = 32  # HPS_WAYS in cuda/hps_common.cuh: one warp holds a set
# Bits of a way's digest (HPS_DIGEST_BITS): a probe compares the set's digests first and then
# the key of the first match. 16 bits: another key with the same digest earlier in the set (the
# probe's wrong guess, whose row must be copied again) is rare (≈ 0.02 % of hits instead of ≈ 5 %
# with 8 bits); measured faster at dim 128 and no slower at dim 32 (docs/benchmarks.md).
# HPS_DIGEST_BITS in the environment overrides it (for the kernel study in
# benchmarks/gpu_query_variants.py).
DIGEST_BITS = int(os.environ.get("HPS_DIGEST_BITS", "16"))
if DIGEST_BITS not in (8, 16):
    raise ValueError(f"HPS_DIGEST_BITS must be 8 or 16, not {DIGEST_BITS}")
DIGEST_DTYPE = np.uint8 if DIGEST_BITS == 8 else np.uint16
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


def set_and_digest(keys: np.ndarray, num_sets: int) -> tuple[np.ndarray, np.ndarray]:
    """(set index int64, digest DIGEST_DTYPE) of each key."""
    h = mix64(keys)
    sets = ((h >> np.uint64(32)) * np.uint64(num_sets)) >> np.uint64(32)
    digest = (h & np.uint64((1 << DIGEST_BITS) - 1)).astype(DIGEST_DTYPE)
    digest[digest == 0] = 1
    return sets.astype(np.int64), digest


def num_sets_for(table_rows: int, gpucacheper: float) -> int:
    """Sets of a dynamic cache for a table of ``table_rows`` keys (HPS: at least 64 slots)."""
    slots = max(64, int(math.floor(gpucacheper * table_rows)))
    return max(1, math.ceil(slots / WAYS))


def tile_width(dim: int) -> int:
    """Lanes that cooperate on one key: enough 16-byte accesses to copy a row, 2 to 16."""
    per_row = max(1, math.ceil(dim / 4))
    width = 2
    while width < per_row and width < 16:
        width *= 2
    return width
