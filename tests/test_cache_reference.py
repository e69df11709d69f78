"""The NumPy reference of the GPU cache against a plain-Python specification, and the cache
semantics (HPS's hit_rate_threshold, prefill, updates) through the reference (the CPU fallback)."""

from __future__ import annotations

import numpy as np
import pytest
from hps_cli.runtime.errors import CapacityError, InvalidInputError
from hps_cli.runtime.gpu.embedding_cache import (
    AsyncInserter,
    DynamicEmbeddingCache,
    IndexedEmbeddingCache,
)
from hps_cli.runtime.gpu.placement import (
    EMPTY_KEY,
    HIT_SAMPLE,
    WAYS,
    num_sets_for,
    query_seed,
    sampled_hits,
    set_of,
    tile_width,
)
from hps_cli.runtime.gpu.ref_backends import RefDynamicBackend, RefIndexedBackend
from hps_cli.runtime.gpu.reference import (
    RefDynamicCache,
    group_by_set,
    ref_dedup,
    ref_gather,
    ref_scatter,
)
from hps_cli.runtime.hashing import mix64
from hps_cli.runtime.table import TableReader, write_table
from hps_cli.runtime.table.synthetic import synthetic_vectors
from hps_cli.runtime.worker_pool import WorkerPool
from hypothesis import given, settings
from hypothesis import strategies as st


class SpecCache:
    """The dynamic cache's contract written as plainly as possible (one key at a time)."""

    def __init__(self, num_sets: int, dim: int):
        self.num_sets, self.dim = num_sets, dim
        self.keys = [[EMPTY_KEY] * WAYS for _ in range(num_sets)]
        self.scores = [[0] * WAYS for _ in range(num_sets)]
        self.floors = [0] * num_sets
        self.values = {}
        self.queries = 0

    def _set(self, key: int) -> int:
        return int(set_of(np.array([key]), self.num_sets)[0])

    def query(self, keys):
        out, misses = [], []
        seed = query_seed(self.queries)
        self.queries += 1
        for i, key in enumerate(keys):
            s = self._set(key)
            if key != EMPTY_KEY and key in self.keys[s]:
                way = self.keys[s].index(key)
                if sampled_hits(np.array([key]), seed)[0]:  # 1 hit in HIT_SAMPLE counts
                    self.scores[s][way] += HIT_SAMPLE
                out.append(self.values[(s, way)])
            else:
                out.append(None)
                misses.append(i)
        return out, misses

    def replace(self, keys, rows):
        for key, row in zip(keys, rows):
            s = self._set(key)
            ways = self.keys[s]
            if key in ways:
                self.scores[s][ways.index(key)] += 1
                continue
            if EMPTY_KEY in ways:
                way = ways.index(EMPTY_KEY)
            else:
                way = min(range(WAYS), key=lambda w: (self.scores[s][w], w))
                self.floors[s] = self.scores[s][way]
            ways[way] = key
            self.scores[s][way] = self.floors[s] + 1
            self.values[(s, way)] = row

    def invalidate(self, keys):
        for key in set(keys):
            s = self._set(key)
            if key in self.keys[s]:
                way = self.keys[s].index(key)
                self.keys[s][way] = EMPTY_KEY
                self.scores[s][way] = 0


ops = st.lists(
    st.tuples(
        st.sampled_from(["query", "replace", "invalidate"]),
        st.lists(st.integers(0, 150), min_size=1, max_size=60),
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=60, deadline=None)
@given(num_sets=st.integers(1, 3), operations=ops)
def test_reference_matches_the_specification(num_sets, operations):
    dim = 3
    ref, spec = RefDynamicCache(num_sets, dim), SpecCache(num_sets, dim)
    for op, raw in operations:
        keys = np.array(raw, dtype=np.int64)
        if op == "query":
            out, miss_keys, miss_pos = ref.query(keys, default_value=-1.0)
            expected, misses = spec.query(keys.tolist())
            assert miss_pos.tolist() == misses
            for i, row in enumerate(expected):
                if row is not None:
                    np.testing.assert_array_equal(out[i], row)
                else:
                    assert (out[i] == -1.0).all()
        elif op == "replace":
            rows = synthetic_vectors(keys, dim)
            ref.replace(keys, rows)
            spec.replace(keys.tolist(), list(rows))
        else:
            ref.invalidate(keys)
            spec.invalidate(keys.tolist())
        assert ref.keys.tolist() == spec.keys
        assert ref.scores.tolist() == spec.scores
        assert ref.floors.tolist() == spec.floors


def test_hits_of_a_deduplicated_batch_are_capped_per_key():
    """A batch of DEDUP_MIN_KEYS keys or more counts a key's sampled hits at most
    HIT_WEIGHT_CAP times (the GPU's hit byte); a smaller batch counts every occurrence."""
    from hps_cli.runtime.gpu.placement import DEDUP_MIN_KEYS, HIT_WEIGHT_CAP

    cache = RefDynamicCache(4096 // WAYS, 2)
    keys = np.arange(1, 1001, dtype=np.int64) * 7919
    cache.replace(keys, synthetic_vectors(keys, 2))
    keys = cache.dump()  # the ones that found a way
    assert keys.size > 900
    before = cache.scores.copy()
    seed = query_seed(cache.queries)
    hot = keys[sampled_hits(keys, seed)][:2]  # two cached keys this query samples
    cold = keys[~sampled_hits(keys, seed)][0]
    absent = np.arange(10**12, 10**12 + DEDUP_MIN_KEYS, dtype=np.int64)  # misses
    batch = np.concatenate(
        [np.repeat(hot[0], 100), np.repeat(hot[1], 5), np.repeat(cold, 50), absent]
    )
    cache.query(batch)
    gained = dict(
        zip(
            keys.tolist(),
            (cache.scores - before)[np.nonzero(cache.keys == keys[:, None, None])[1:]].tolist(),
        )
    )
    assert gained[int(hot[0])] == HIT_WEIGHT_CAP * HIT_SAMPLE
    assert gained[int(hot[1])] == 5 * HIT_SAMPLE
    assert gained[int(cold)] == 0
    assert sum(gained.values()) == (HIT_WEIGHT_CAP + 5) * HIT_SAMPLE

    small = RefDynamicCache(4096 // WAYS, 2)
    small.replace(keys, synthetic_vectors(keys, 2))
    before = small.scores.copy()
    seed = query_seed(small.queries)
    hot = keys[sampled_hits(keys, seed)][0]
    small.query(np.repeat(hot, 100))  # queried directly: every occurrence counts
    assert small.scores.sum() - before.sum() == 100 * HIT_SAMPLE


def test_placement_matches_the_kernel_formulas():
    keys = np.array([0, 1, -1, 2**62, 123456789], dtype=np.int64)
    sets = set_of(keys, 1000)
    assert ((sets >= 0) & (sets < 1000)).all()
    hashed = [int(h) for h in mix64(keys)]
    assert sets.tolist() == [((h >> 32) * 1000) >> 32 for h in hashed]  # hps_common.cuh set_of
    # 200 slots; at least 64 slots
    assert num_sets_for(1000, 0.2) == -(-200 // WAYS) and num_sets_for(10, 0.5) == 64 // WAYS
    assert [tile_width(d) for d in (1, 8, 16, 32, 64, 128)] == [2, 2, 4, 8, 16, 16]


def test_group_by_set_is_stable():
    order, seg_sets, offsets = group_by_set(np.array([3, 1, 3, 0, 1]))
    assert seg_sets.tolist() == [0, 1, 3]
    assert offsets.tolist() == [0, 1, 3, 5]
    assert order.tolist() == [3, 1, 4, 0, 2]


def test_batch_ops_reference():
    keys = np.array([5, 3, 5, 9, 3, 5])
    unique, inverse, counts = ref_dedup(keys)
    assert (unique[inverse] == keys).all()
    assert dict(zip(unique.tolist(), counts.tolist())) == {3: 2, 5: 3, 9: 1}
    table = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.testing.assert_array_equal(ref_gather(table, [2, 0, 2]), table[[2, 0, 2]])
    out = np.zeros((4, 3), np.float32)
    ref_scatter(table, np.array([1, 3]), np.array([0, 2]), out)
    np.testing.assert_array_equal(out[[0, 2]], table[[1, 3]])


# --- the cache semantics through the reference backend -----------------------------------


@pytest.fixture
def tiers():
    """A stand-in for the CPU tiers that is exact and counts its calls."""
    calls = []

    def fetch(keys):
        calls.append(np.array(keys))
        return synthetic_vectors(keys, 8)

    fetch.calls = calls
    return fetch


def _cache(fetch, threshold, sets=4, inserter=None):
    return DynamicEmbeddingCache(
        RefDynamicBackend(sets, 8),
        fetch=fetch,
        hit_rate_threshold=threshold,
        default_value=-2.0,
        inserter=inserter,
        name="m.t",
    )


def test_synchronous_lookups_are_exact(tiers):
    cache = _cache(tiers, 1.0)
    keys = np.array([1, 2, 3, 2, 1, 99])
    np.testing.assert_array_equal(cache.query(keys), synthetic_vectors(keys, 8))
    assert tiers.calls[0].tolist() == [1, 2, 3, 99]  # unique misses, fetched once
    np.testing.assert_array_equal(cache.query(keys), synthetic_vectors(keys, 8))
    assert len(tiers.calls) == 1  # all hits now
    stats = cache.stats()
    assert stats["keys"] == 12 and stats["hits"] == 6 and stats["misses"] == 6


def test_asynchronous_misses_get_defaults_then_arrive(tiers):
    inserter = AsyncInserter(2)
    cache = _cache(tiers, 0.5, inserter=inserter)
    warm = np.array([10, 11, 12])
    cache.query(warm)  # hit rate 0 < 0.5: synchronous, exact
    inserter.flush()
    keys = np.array([10, 11, 12, 13])  # 3 of 4 unique keys hit: 0.75 >= 0.5 → asynchronous
    first = cache.query(keys)
    np.testing.assert_array_equal(first[:3], synthetic_vectors(warm, 8))
    assert (first[3] == -2.0).all()  # the default value for now
    inserter.flush()
    np.testing.assert_array_equal(cache.query(keys), synthetic_vectors(keys, 8))
    assert cache.stats()["async_batches"] == 1 and cache.stats()["sync_batches"] == 1
    inserter.close()


def test_hit_rate_counts_unique_keys(tiers):
    inserter = AsyncInserter(1)
    cache = _cache(tiers, 0.6, inserter=inserter)
    cache.query(np.array([1]))
    # 1 hit key repeated 9 times + 1 missing key: unique hit rate 0.5 < 0.6 → synchronous,
    # although 90 % of the occurrences hit.
    out = cache.query(np.array([1] * 9 + [7]))
    np.testing.assert_array_equal(out[-1], synthetic_vectors(np.array([7]), 8)[0])
    assert cache.stats()["sync_batches"] == 2
    inserter.close()


def test_threshold_above_one_is_never_asynchronous(tiers):
    cache = _cache(tiers, 1.5, inserter=AsyncInserter(1))
    cache.query(np.array([1, 2, 3]))
    out = cache.query(np.array([1, 2, 3, 4]))
    np.testing.assert_array_equal(out, synthetic_vectors(np.array([1, 2, 3, 4]), 8))


def test_update_and_remove_reach_cached_copies(tiers):
    cache = _cache(tiers, 1.0)
    keys = np.array([4, 5, 6])
    cache.query(keys)
    new = np.full((2, 8), 7.5, np.float32)
    assert cache.update(np.array([5, 77]), new) == 1  # 77 is not cached
    out = cache.query(keys)
    assert (out[1] == 7.5).all() and (out[0] == synthetic_vectors(np.array([4]), 8)).all()
    assert cache.remove(np.array([4])) == 1
    cache.query(keys)
    assert tiers.calls[-1].tolist() == [4]  # fetched again after removal


def test_eviction_keeps_results_exact(tiers):
    cache = _cache(tiers, 1.0, sets=1)  # WAYS slots
    rng = np.random.default_rng(3)
    for _ in range(30):
        keys = rng.integers(0, 500, 100)
        np.testing.assert_array_equal(cache.query(keys), synthetic_vectors(keys, 8))
    assert cache.backend.occupancy() == WAYS


def test_refresh_reloads_values(tiers):
    cache = _cache(tiers, 1.0)
    cache.query(np.array([1, 2]))
    stale = np.zeros((2, 8), np.float32)
    cache.update(np.array([1, 2]), stale)
    assert cache.refresh() == 2
    np.testing.assert_array_equal(
        cache.query(np.array([1, 2])), synthetic_vectors(np.array([1, 2]), 8)
    )


def test_prefill_hottest_first_by_meta(tmp_path, tiers):
    keys = np.arange(1000, 1400, dtype=np.int64)
    meta = np.arange(400, dtype=np.int64)  # hottest rows last in the file
    write_table(tmp_path / "t", keys, synthetic_vectors(keys, 8), meta)
    cache = _cache(tiers, 1.0, sets=64 // WAYS)  # 64 slots
    with TableReader(tmp_path / "t") as reader:
        assert cache.prefill(reader) > 0
    cached = cache.backend.dump()
    hottest = keys[-64:]  # the 64 rows prefill takes
    assert set(cached.tolist()) <= set(hottest.tolist())
    # a set that more of them share than it has ways keeps its hottest ones
    sets = set_of(hottest, cache.backend.num_sets)
    for s in range(cache.backend.num_sets):
        expected = np.sort(hottest[sets == s])[-WAYS:]  # larger key, larger meta here
        np.testing.assert_array_equal(
            np.sort(cached[set_of(cached, cache.backend.num_sets) == s]), expected
        )


def test_prefill_keeps_the_hottest_of_a_full_set_when_every_row_fits(tmp_path, tiers):
    """As many slots as rows: sets still overflow, and each keeps its hottest rows."""
    keys = np.arange(5000, 5000 + 16 * WAYS, dtype=np.int64)
    meta = np.random.default_rng(4).permutation(keys.size).astype(np.int64)
    write_table(tmp_path / "t", keys, synthetic_vectors(keys, 8), meta)
    cache = _cache(tiers, 1.0, sets=16)  # 16 × WAYS slots: every row "fits"
    with TableReader(tmp_path / "t") as reader:
        cache.prefill(reader)
    cached = cache.backend.dump()
    sets = set_of(keys, 16)
    assert np.bincount(sets, minlength=16).max() > WAYS  # some set overflows
    for s in range(16):
        in_set = np.flatnonzero(sets == s)
        hottest = keys[in_set[np.argsort(meta[in_set])][-WAYS:]]
        np.testing.assert_array_equal(np.sort(cached[set_of(cached, 16) == s]), np.sort(hottest))


def test_prefill_in_file_order_without_meta(tmp_path, tiers):
    keys = np.arange(500, dtype=np.int64)
    write_table(tmp_path / "t", keys, synthetic_vectors(keys, 8))
    cache = _cache(tiers, 1.0, sets=64 // WAYS)  # 64 slots
    with TableReader(tmp_path / "t") as reader:
        cache.prefill(reader)
    assert set(cache.backend.dump().tolist()) <= set(range(64))


def test_static_cache_answers_from_the_whole_table_and_is_read_only(tmp_path):
    keys = np.arange(50, 150, dtype=np.int64)
    write_table(tmp_path / "t", keys, synthetic_vectors(keys, 4))
    with TableReader(tmp_path / "t") as reader:
        backend = RefIndexedBackend(reader, device_rows=30)
    cache = IndexedEmbeddingCache(backend, default_value=0.5)
    query = np.array([60, 149, 5, 60])
    out = cache.query(query)
    np.testing.assert_array_equal(out[[0, 1, 3]], synthetic_vectors(query[[0, 1, 3]], 4))
    assert (out[2] == 0.5).all()
    assert cache.stats()["hits"] == 3
    with pytest.raises(InvalidInputError, match="read-only"):
        cache.update(query, out)


def test_worker_pool_waits_boundedly():
    pool = WorkerPool(2, timeout=0.05, name="m@0")
    a, b = pool.acquire(), pool.acquire()
    with pytest.raises(CapacityError, match="worker buffer"):
        pool.acquire()
    pool.release(a)
    assert pool.acquire() == a
    pool.release(b)


def test_zipf_hit_rate_reaches_95_percent_of_ideal():
    """LFU-DA in 8-way sets keeps the hot set: steady hit rate ≥ 0.95 × the top-20 % share."""
    n, per, alpha = 50_000, 0.2, 1.05
    rng = np.random.default_rng(0)
    p = np.arange(1, n + 1, dtype=np.float64) ** -alpha
    p /= p.sum()
    ideal = p[: int(per * n)].sum()
    keys_of_rank = rng.permutation(n).astype(np.int64) * 7919 + 13
    cache = DynamicEmbeddingCache(
        RefDynamicBackend(num_sets_for(n, per), 2),
        fetch=lambda k: np.zeros((k.size, 2), np.float32),
        hit_rate_threshold=1.0,
        default_value=0.0,
    )
    cdf = np.cumsum(p)
    for batch in range(160):
        ranks = np.minimum(np.searchsorted(cdf, rng.random(4096)), n - 1)
        if batch == 80:
            cache.counters = type(cache.counters)()  # steady state: measure the second half
        cache.query(keys_of_rank[ranks])
    steady = cache.stats()["hit_rate"]
    assert steady >= 0.95 * ideal, (steady, ideal)


def test_sets_have_eight_ways_whatever_the_environment():
    """WAYS is a constant of the runtime: HPS_WAYS in the environment (a knob of the kernel
    studies in benchmarks/) changes neither the reference nor the kernels' flags."""
    import os
    import subprocess
    import sys

    code = """
from hps_cli.runtime.gpu.kernels import kernel_defines
from hps_cli.runtime.gpu.placement import WAYS
assert WAYS == 8 and kernel_defines()["HPS_WAYS"] == "8"
print("ok")
"""
    env = {**os.environ, "HPS_WAYS": "4"}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


def test_placement_reference_and_kernel_flags_share_the_ways():
    from hps_cli.runtime.gpu.kernels import kernel_defines

    assert kernel_defines()["HPS_WAYS"] == str(WAYS)
    assert num_sets_for(1000, 0.2) == -(-200 // WAYS)
    c = RefDynamicCache(8, 4)
    assert c.keys.shape == (8, WAYS) and c.capacity == 8 * WAYS
    keys = np.arange(1, 257, dtype=np.int64) * 7919
    rows = np.random.default_rng(0).random((256, 4), dtype=np.float32)
    assert c.replace(keys, rows) == 256
    assert c.occupancy() == 8 * WAYS  # every way of every set taken, the rest evicted
    out, _, miss_pos = c.query(keys, 0.0)
    present = np.isin(keys, c.dump())
    assert present.sum() == 8 * WAYS == 256 - len(miss_pos)
    assert np.array_equal(out[present], rows[present])
