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
    SLOT_HEADROOM,
    WAYS,
    num_sets_for,
    query_seed,
    rows_to_cache,
    sampled_hits,
    set_of,
    sets_of,
    tile_width,
)
from hps_cli.runtime.gpu.ref_backends import RefDynamicBackend, RefIndexedBackend
from hps_cli.runtime.gpu.reference import (
    RefDynamicCache,
    ref_dedup,
    ref_gather,
    ref_scatter,
    replace_rounds,
)
from hps_cli.runtime.hashing import mix64
from hps_cli.runtime.table import TableReader, write_table
from hps_cli.runtime.table.synthetic import synthetic_vectors
from hps_cli.runtime.worker_pool import WorkerPool
from hypothesis import given, settings
from hypothesis import strategies as st


class SpecCache:
    """The dynamic cache's contract written as plainly as possible (one key at a time): a key
    lives in one of its two sets; LFU-DA over the 16 ways of both."""

    def __init__(self, num_sets: int, dim: int):
        self.num_sets, self.dim = num_sets, dim
        self.keys = [[EMPTY_KEY] * WAYS for _ in range(num_sets)]
        self.scores = [[0] * WAYS for _ in range(num_sets)]
        self.floors = [0] * num_sets
        self.values = {}
        self.queries = 0

    def _sets(self, key: int) -> tuple[int, int]:
        primary, second = sets_of(np.array([key]), self.num_sets)
        return int(primary[0]), int(second[0])

    def _find(self, key: int):
        for s in self._sets(key):
            if key != EMPTY_KEY and key in self.keys[s]:
                return s, self.keys[s].index(key)
        return None

    def query(self, keys):
        out, misses = [], []
        seed = query_seed(self.queries)
        self.queries += 1
        for i, key in enumerate(keys):
            found = self._find(key)
            if found is not None:
                s, way = found
                if sampled_hits(np.array([key]), seed)[0]:  # 1 hit in HIT_SAMPLE counts
                    self.scores[s][way] += HIT_SAMPLE
                out.append(self.values[(s, way)])
            else:
                out.append(None)
                misses.append(i)
        return out, misses

    def replace(self, keys, rows):
        for key, row in zip(keys, rows):
            found = self._find(key)
            if found is not None:
                s, way = found
                self.scores[s][way] += 1
                continue
            a, b = self._sets(key)
            ways = [(a, w) for w in range(WAYS)] + [(b, w) for w in range(WAYS)]
            free = [(s, w) for s, w in ways if self.keys[s][w] == EMPTY_KEY]
            if free:
                s, way = free[0]  # the primary's first empty way, then the second set's
                start = max(self.floors[a], self.floors[b])
            else:  # the smallest score; ties: the primary first, then the lowest way
                scores = [self.scores[s][w] for s, w in ways]
                s, way = ways[min(range(2 * WAYS), key=lambda p: (scores[p], p))]
                start = self.floors[s] = self.scores[s][way]
            self.keys[s][way] = key
            self.scores[s][way] = start + 1
            self.values[(s, way)] = row

    def invalidate(self, keys):
        for key in set(keys):
            found = self._find(key)
            if found is not None:
                s, way = found
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
@given(num_sets=st.integers(1, 4), operations=ops)
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
    keys = np.array([0, 1, -1, 2**62, 123456789, 77, 78, 79], dtype=np.int64)
    sets = set_of(keys, 1000)
    assert ((sets >= 0) & (sets < 1000)).all()
    hashed = [int(h) for h in mix64(keys)]
    assert sets.tolist() == [((h >> 32) * 1000) >> 32 for h in hashed]  # hps_common.cuh set_of
    for num_sets in (1, 2, 3, 1000, 2**31 - 1):
        primary, second = sets_of(keys, num_sets)
        expected = []
        for h, s1 in zip(hashed, primary.tolist()):  # hps_common.cuh set2_of
            s2 = ((h & 0xFFFFFFFF) * num_sets) >> 32
            if s2 == s1 and num_sets > 1:
                s2 = 0 if s1 + 1 == num_sets else s1 + 1
            expected.append(s2)
        assert second.tolist() == expected
        assert primary.tolist() == set_of(keys, num_sets).tolist()
        assert num_sets == 1 or (primary != second).all()
    # room for ceil(p × rows) rows (at least 64) with 3 % more slots
    assert num_sets_for(1000, 0.2) == -(-int(200 * SLOT_HEADROOM) // WAYS) == 26
    assert num_sets_for(10, 0.5) == -(-int(64 * SLOT_HEADROOM) // WAYS) == 9
    assert rows_to_cache(100, 0.07) == 7 and rows_to_cache(10**6, 0.25) == 250_000
    assert rows_to_cache(3, 1.0) == 3 and rows_to_cache(1001, 0.5) == 501
    assert [tile_width(d) for d in (1, 8, 16, 32, 64, 128)] == [2, 2, 4, 8, 16, 16]


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "numpy"])
def test_replace_rounds_touch_disjoint_sets_in_batch_order(compiled):
    from hps_cli.runtime.native.insert_rounds import insert_rounds

    if compiled and insert_rounds() is None:
        pytest.skip("no C compiler: the compiled rounds are unavailable")
    rng = np.random.default_rng(8)
    for num_sets in (1, 2, 7, 1000):
        keys = rng.integers(0, 50, 300).astype(np.int64)  # repeats too
        primary, second = sets_of(keys, num_sets)
        order, offsets = replace_rounds(primary, second, num_sets if compiled else None)
        assert sorted(order.tolist()) == list(range(keys.size))
        last_round = {}  # set -> (round, batch position) of its latest key
        for r in range(offsets.size - 1):
            members = order[offsets[r] : offsets[r + 1]]
            assert members.size
            touched = [s for i in members for s in {int(primary[i]), int(second[i])}]
            assert len(touched) == len(set(touched)), "a set twice in one round"
            for i in members.tolist():
                for s in {int(primary[i]), int(second[i])}:
                    if s in last_round:  # each set sees its keys in batch order
                        assert last_round[s][1] < i and last_round[s][0] < r
                    last_round[s] = (r, i)
    order, offsets = replace_rounds(
        np.empty(0, np.int64), np.empty(0, np.int64), 5 if compiled else None
    )
    assert order.size == 0 and offsets.tolist() == [0]


def test_compiled_replace_rounds_equal_the_numpy_rounds():
    from hps_cli.runtime.gpu.reference import replace_rounds_vectorized
    from hps_cli.runtime.native.insert_rounds import insert_rounds

    compiled = insert_rounds()
    if compiled is None:
        pytest.skip("no C compiler: the compiled rounds are unavailable")
    rng = np.random.default_rng(9)
    for num_sets, n in ((1, 50), (3, 1000), (4096, 60_000), (135_005, 67_000)):
        keys = rng.choice(2**62, n, replace=False).astype(np.int64)
        primary, second = sets_of(keys, num_sets)
        for got, want in zip(
            compiled(primary, second, num_sets), replace_rounds_vectorized(primary, second)
        ):
            np.testing.assert_array_equal(got, want)


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
    inserter.flush()
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


class _Tier:
    """A CPU tier whose values can change, and that can run an update of the cache (as
    ``HPS.insert`` does: the tier first, then the cache) while a fetch is under way."""

    def __init__(self):
        self.values: dict[int, float] = {}
        self.during_fetch = None

    def fetch(self, keys):
        rows = np.array([[self.values.get(int(k), float(k))] * 8 for k in keys], np.float32)
        hook, self.during_fetch = self.during_fetch, None
        if hook is not None:
            hook()
        return rows.reshape(-1, 8)

    def expected(self, keys):
        return np.array([[self.values.get(int(k), float(k))] * 8 for k in keys], np.float32)


@pytest.mark.parametrize("threshold", [1.0, 0.5])
def test_a_row_fetched_before_an_update_never_lands_in_the_cache(threshold):
    """A lookup fetches key 7, then HPS.insert changes key 7 (tier, then cache: not cached yet,
    nothing to overwrite), then the fetched row would be inserted: the update generation drops
    it, so the cache never serves the old value. Synchronous lookups (threshold 1) insert later
    in a batch; asynchronous ones (0.5) fetch and insert in the background."""
    tier = _Tier()
    inserter = AsyncInserter(1)
    cache = DynamicEmbeddingCache(
        RefDynamicBackend(8, 8),
        fetch=tier.fetch,
        hit_rate_threshold=threshold,
        default_value=-1.0,
        inserter=inserter,
    )
    warm = np.array([1, 2, 3])
    cache.query(warm)
    inserter.flush()

    def update():
        tier.values[7] = 70.0
        cache.update(np.array([7]), np.full((1, 8), 70.0, np.float32))

    tier.during_fetch = update
    first = cache.query(np.array([1, 2, 3, 7]))  # 3 of 4 hit: asynchronous below 0.75
    inserter.flush()
    assert first[3, 0] == (7.0 if threshold == 1.0 else -1.0)  # before the update: either
    assert cache.stats()["stale_inserts"] == 1
    np.testing.assert_array_equal(cache.query(np.array([7])), tier.expected([7]))  # a miss: exact
    inserter.flush()
    assert 7 in cache.backend.dump()  # the next miss put in the new value
    np.testing.assert_array_equal(cache.query(np.array([7])), tier.expected([7]))
    inserter.close()


def test_refresh_never_writes_back_a_value_updated_meanwhile():
    tier = _Tier()
    cache = DynamicEmbeddingCache(
        RefDynamicBackend(8, 8), fetch=tier.fetch, hit_rate_threshold=1.0, default_value=0.0
    )
    cache.query(np.array([4, 5]))

    def update():
        tier.values[5] = 50.0
        cache.update(np.array([5]), np.full((1, 8), 50.0, np.float32))

    tier.during_fetch = update  # while the refresh fetches 4 and 5
    assert cache.refresh() == 1  # 4 only
    np.testing.assert_array_equal(cache.query(np.array([4, 5])), tier.expected([4, 5]))


def test_deferred_inserts_go_in_batches_in_order():
    from hps_cli.runtime.gpu.deferred_insert import InsertQueue

    batches = []
    inserter = AsyncInserter(2)
    queue = InsertQueue(lambda k, r, s: batches.append(k.tolist()), inserter.submit, delay_s=0.05)
    for i in range(5):
        assert queue.add(np.array([i, i + 10]), np.zeros((2, 1)), np.zeros(2, np.int64))
    inserter.flush()
    assert batches == [[0, 10, 1, 11, 2, 12, 3, 13, 4, 14]]  # one batch, queue order
    queue.batch_keys = 4
    queue.add(np.arange(4), np.zeros((4, 1)), np.zeros(4, np.int64))  # a full batch: no wait
    inserter.flush()
    assert batches[-1] == [0, 1, 2, 3]
    full = AsyncInserter(1, max_pending=1)
    blocked = __import__("threading").Event()
    full.submit(blocked.wait)
    refused = InsertQueue(lambda k, r, s: batches.append(k.tolist()), full.submit)
    assert not refused.add(np.array([1]), np.zeros((1, 1)), np.zeros(1, np.int64))
    blocked.set()
    full.flush()
    inserter.close()
    full.close()


def test_a_drain_inserts_each_key_once_with_its_latest_fetch():
    """Hot keys missed by several lookups before a drain go in once, with the row and counts of
    their latest fetch (an update between two fetches leaves only the later row fresh)."""
    from hps_cli.runtime.gpu.deferred_insert import InsertQueue

    batches = []
    inserter = AsyncInserter(1)
    queue = InsertQueue(
        lambda k, r, s: batches.append((k.tolist(), r[:, 0].tolist(), s.tolist())),
        inserter.submit,
        delay_s=0.05,
    )
    queue.add(np.array([7, 8]), np.array([[1.0], [2.0]]), np.array([0, 0]))
    queue.add(np.array([8, 9]), np.array([[3.0], [4.0]]), np.array([1, 0]))
    queue.add(np.array([7]), np.array([[5.0]]), np.array([2]))
    inserter.flush()
    inserter.close()
    assert len(batches) == 1
    keys, rows, seen = batches[0]
    got = {k: (r, s) for k, r, s in zip(keys, rows, seen)}
    assert sorted(keys) == [7, 8, 9]
    assert got == {7: (5.0, 2), 8: (3.0, 1), 9: (4.0, 0)}


def test_the_miss_sketch_ranks_keys_by_how_often_they_missed():
    from hps_cli.runtime.gpu.deferred_insert import MissFrequency, hottest

    frequency = MissFrequency(1 << 12)
    keys = np.arange(-5, 1000, dtype=np.int64) * 7919
    frequency.note(keys)
    for _ in range(3):
        frequency.note(keys[[17, 400]])
    frequency.note(keys[[900]])
    assert hottest(keys, keys.size, frequency) is None  # room for all: no ranking
    assert keys[hottest(keys, 2, frequency)].tolist() == keys[[17, 400]].tolist()
    assert keys[hottest(keys, 3, frequency)].tolist() == keys[[17, 400, 900]].tolist()


def test_a_drain_over_its_limit_inserts_the_hottest_keys_and_counts_the_rest():
    """Under a flood of misses one insert must not take everything queued (its time grows
    faster than its size): a drain takes the keys that missed most often, once each."""
    from hps_cli.runtime.gpu.deferred_insert import InsertQueue

    batches = []
    inserter = AsyncInserter(1)
    queue = InsertQueue(
        lambda k, r, s: batches.append(sorted(k.tolist())),
        inserter.submit,
        delay_s=0.05,
        max_keys=2,
    )
    queue.batch_keys = 1000  # the drain waits delay_s: all three lookups' misses go together
    queue.add(np.array([1, 2, 3]), np.zeros((3, 1)), np.zeros(3, np.int64))
    queue.add(np.array([2, 3]), np.zeros((2, 1)), np.zeros(2, np.int64))
    queue.add(np.array([3]), np.zeros((1, 1)), np.zeros(1, np.int64))
    inserter.flush()
    inserter.close()
    assert batches == [[2, 3]]  # 3 missed three times, 2 twice, 1 once
    assert queue.skipped_keys == 4  # of the 6 fetches queued, 2 went in


def test_a_stalled_drain_keeps_a_bounded_queue():
    """Fetched rows wait for a drain; when inserts cannot keep up, the oldest go (counted),
    so a flood of misses cannot grow the host memory without bound."""
    import threading

    from hps_cli.runtime.gpu.deferred_insert import QUEUED_DRAINS, InsertQueue

    blocked = threading.Event()
    inserted = []

    def insert(keys, rows, seen):
        blocked.wait()
        inserted.append(keys.size)

    inserter = AsyncInserter(1)
    queue = InsertQueue(insert, inserter.submit, delay_s=0.0, max_keys=4)
    queue.add(np.arange(4), np.zeros((4, 1)), np.zeros(4, np.int64))  # the drain takes it
    deadline = __import__("time").monotonic() + 5
    while queue._queued and __import__("time").monotonic() < deadline:
        __import__("time").sleep(0.001)
    for i in range(1, 20):
        queue.add(np.arange(4) + 10 * i, np.zeros((4, 1)), np.zeros(4, np.int64))
        assert queue._queued <= QUEUED_DRAINS * 4
    assert queue.skipped_keys == 19 * 4 - QUEUED_DRAINS * 4  # the oldest went
    blocked.set()
    inserter.flush()
    inserter.close()
    # The first drain's 4 keys, then one drain of everything left queued: its 4 hottest.
    assert inserted == [4, 4]
    assert queue.skipped_keys == 19 * 4 - 4


def test_large_misses_are_fetched_in_parts_on_several_threads():
    from hps_cli.runtime.gpu.embedding_cache import FETCH_PART_KEYS

    calls = []

    def fetch(keys):
        calls.append((keys.size, __import__("threading").get_ident()))
        return synthetic_vectors(keys, 8)

    cache = DynamicEmbeddingCache(
        RefDynamicBackend(64, 8), fetch=fetch, hit_rate_threshold=1.0, default_value=0.0
    )
    keys = np.random.default_rng(2).choice(10**12, 3 * FETCH_PART_KEYS + 5, replace=False)
    np.testing.assert_array_equal(cache.query(keys), synthetic_vectors(keys, 8))
    assert len(calls) >= 2 and sum(n for n, _ in calls) == keys.size
    assert len({thread for _, thread in calls}) >= 2


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


def test_prefill_takes_the_hottest_rows_by_meta(tmp_path, tiers):
    keys = np.arange(1000, 1400, dtype=np.int64)
    meta = np.arange(400, dtype=np.int64)  # hottest rows last in the file
    write_table(tmp_path / "t", keys, synthetic_vectors(keys, 8), meta)
    cache = _cache(tiers, 1.0, sets=64 // WAYS)  # 64 slots: room for 62 rows with the headroom
    with TableReader(tmp_path / "t") as reader:
        assert cache.prefill(reader) == int(64 / SLOT_HEADROOM) == 62
    np.testing.assert_array_equal(cache.backend.dump(), keys[-62:])  # every one of them placed
    np.testing.assert_array_equal(cache.query(keys[-62:]), synthetic_vectors(keys[-62:], 8))
    assert not tiers.calls  # all hits


def test_prefill_in_file_order_without_meta(tmp_path, tiers):
    keys = np.arange(500, dtype=np.int64)
    write_table(tmp_path / "t", keys, synthetic_vectors(keys, 8))
    cache = _cache(tiers, 1.0, sets=64 // WAYS)  # 64 slots
    with TableReader(tmp_path / "t") as reader:
        cache.prefill(reader, limit=40)
    np.testing.assert_array_equal(cache.backend.dump(), np.arange(40))


def test_prefill_plans_each_key_once(tmp_path, tiers):
    keys = np.array([5, 9, 5, 7, 11, 9, 12], dtype=np.int64)  # a table with repeated keys
    vectors = synthetic_vectors(np.arange(keys.size), 8)
    write_table(tmp_path / "t", keys, vectors)
    cache = _cache(tiers, 1.0, sets=64 // WAYS)
    with TableReader(tmp_path / "t") as reader:
        assert cache.prefill(reader) == 5
    np.testing.assert_array_equal(cache.backend.dump(), [5, 7, 9, 11, 12])
    out = cache.query(np.array([5, 9, 7, 11, 12]))  # each key with its first occurrence's row
    np.testing.assert_array_equal(out, vectors[[0, 1, 3, 4, 6]])


@pytest.mark.parametrize("gpucacheper", [0.25, 0.5, 1.0])
@pytest.mark.parametrize(
    "rows,key_kind",
    [(1_000, "sequential"), (4_096, "random"), (20_000, "sequential"), (300_000, "random")],
)
def test_prefill_places_the_hottest_rows_of_any_table(tmp_path, gpucacheper, rows, key_kind):
    """A cache sized by num_sets_for holds at least 99.9 % of the ceil(p × rows) hottest rows
    after prefill (in practice all of them); at p = 1 every key of the table hits."""
    rng = np.random.default_rng(rows)
    if key_kind == "sequential":
        keys = np.arange(rows, dtype=np.int64) + 10**9
    else:
        keys = rng.choice(2**62, rows, replace=False).astype(np.int64) - 2**61
    meta = rng.permutation(rows).astype(np.int64)
    write_table(tmp_path / "t", keys, synthetic_vectors(keys, 2), meta)
    wanted = rows_to_cache(rows, gpucacheper)
    cache = DynamicEmbeddingCache(
        RefDynamicBackend(num_sets_for(rows, gpucacheper), 2),
        fetch=lambda k: synthetic_vectors(k, 2),
        hit_rate_threshold=1.0,
        default_value=0.0,
    )
    with TableReader(tmp_path / "t") as reader:
        loaded = cache.prefill(reader)
    assert loaded >= wanted
    hottest = keys[np.argsort(-meta, kind="stable")[:wanted]]
    placed = np.isin(hottest, cache.backend.dump())
    assert placed.mean() >= 0.999, (placed.mean(), wanted)
    assert placed.all()  # what the simulations showed for every table size
    if gpucacheper == 1.0:
        out = cache.query(rng.permutation(keys))
        assert cache.stats()["misses"] == 0
        assert out.shape == (rows, 2)


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
    assert num_sets_for(8000, 1.0) == -(-int(8000 * SLOT_HEADROOM) // WAYS)
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
