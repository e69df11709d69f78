"""The hash-map volatile tiers against a dict model: the in-process map (``HashMapTable``) and,
through the ``new_table`` fixture, the shared-memory map (``SharedHashMapTable``) with the same
behaviour."""

from __future__ import annotations

import itertools
import threading

import numpy as np
import pytest
from helpers.hash_map_machine import HashMapMachine, SharedHashMapMachine
from helpers.shm import shared_segment
from hps_cli.runtime.errors import InvalidInputError
from hps_cli.runtime.hashing import mix64, partition_of
from hps_cli.runtime.table.synthetic import synthetic_vectors
from hps_cli.runtime.volatile.hash_map import POLICIES, HashMapTable, dedupe_last
from hps_cli.runtime.volatile.shm_table import SharedHashMapTable
from hypothesis import HealthCheck, settings


@pytest.fixture(params=["in_process", "shared_memory"])
def new_table(request):
    """``new_table(dim, **options)`` builds a table of the kind under test. The shared ones live
    in one segment per test, with room for ``reserve`` keys (default 60,000)."""
    if request.param == "in_process":
        yield HashMapTable
        return
    tags = itertools.count()
    with shared_segment() as segment:

        def make(dim, *, reserve=0, **options):
            tag = f"hps_et.test.t{next(tags)}"
            keys = reserve or 60_000
            return SharedHashMapTable(segment, tag, dim, expected_keys=keys, **options)

        yield make


def _rrxmrrxmsx_0(key: int) -> int:
    """HPS's mixer written with Python integers, straight from its definition."""
    mask = 2**64 - 1

    def rotr(x: int, r: int) -> int:
        return ((x >> r) | (x << (64 - r))) & mask

    x = key & mask
    x ^= rotr(x, 25) ^ rotr(x, 50)
    x = (x * 0xA24BAED4963EE407) & mask
    x ^= rotr(x, 24) ^ rotr(x, 49)
    x = (x * 0x9FB21C651E98DF25) & mask
    return x ^ (x >> 28)


def test_mix64_is_hps_mixer(rng):
    keys = np.concatenate(
        [
            rng.integers(-(2**63), 2**63 - 1, 500, dtype=np.int64),
            np.array([0, 1, -1, 2**63 - 1, -(2**63)], dtype=np.int64),
        ]
    )
    assert mix64(keys).tolist() == [_rrxmrrxmsx_0(int(k)) for k in keys]


@pytest.mark.parametrize("parts", [1, 3, 8, 16])
def test_partition_is_hps_partition(new_table, rng, parts):
    keys = rng.integers(-(2**40), 2**40, 2000)
    table = new_table(2, num_partitions=parts)
    assert np.array_equal(table.partition_of(keys), partition_of(keys, parts))


def test_insert_lookup_remove_roundtrip(new_table, rng):
    table = new_table(8, num_partitions=5)
    keys = rng.choice(np.arange(-(10**12), 10**12, 7919), 20000, replace=False)
    table.insert(keys, synthetic_vectors(keys, 8))
    assert len(table) == keys.size
    query = np.concatenate([keys[::3], keys[::5] + 1])
    out = np.full((query.size, 8), 42.0, dtype=np.float32)
    out, hit, _ = table.get(query, out)
    expected_hit = np.isin(query, keys)
    assert np.array_equal(hit, expected_hit)
    assert np.array_equal(out[hit], synthetic_vectors(query[hit], 8))
    assert (out[~hit] == 42.0).all()  # miss rows are left for the next tier
    assert table.remove(keys[:5000]) == 5000
    assert table.remove(keys[:5000]) == 0
    _, hit, _ = table.get(keys)
    assert not hit[:5000].any() and hit[5000:].all()
    assert len(table) == keys.size - 5000


def test_repeated_keys_in_one_batch_keep_the_last_vector(new_table):
    table = new_table(2, num_partitions=2)
    keys = np.array([5, 6, 5, 5, 7], dtype=np.int64)
    vectors = np.arange(10, dtype=np.float32).reshape(5, 2)
    table.insert(keys, vectors)
    out, hit, _ = table.get(np.array([5, 6, 7]))
    assert hit.all() and len(table) == 3
    assert np.array_equal(out, vectors[[3, 1, 4]])
    k, v = dedupe_last(keys, vectors)
    assert k.tolist() == [6, 5, 7] and np.array_equal(v, vectors[[1, 3, 4]])


def test_upsert_overwrites_and_growth_keeps_everything(new_table, rng):
    table = new_table(4, num_partitions=4)
    keys = np.arange(50000, dtype=np.int64) * 3
    for start in range(0, keys.size, 7000):  # many rebuilds on the way
        chunk = keys[start : start + 7000]
        table.insert(chunk, synthetic_vectors(chunk, 4))
    table.insert(keys[:100], synthetic_vectors(keys[:100], 4, seed=9))
    out, hit, _ = table.get(keys)
    assert hit.all()
    assert np.array_equal(out[:100], synthetic_vectors(keys[:100], 4, seed=9))
    assert np.array_equal(out[100:], synthetic_vectors(keys[100:], 4))


def test_tombstones_are_reclaimed(rng):
    table = HashMapTable(2, num_partitions=2)
    for round_ in range(30):  # insert/remove churn must not grow the slots without bound
        keys = rng.integers(0, 2**62, 3000) + round_
        table.insert(keys, np.zeros((keys.size, 2), np.float32))
        table.remove(keys)
    assert len(table) == 0
    assert table._slots.shape[0] < 64 * 3000


@pytest.mark.parametrize("window", [8, 16])
def test_lookups_probe_a_window_and_agree_with_the_rounds(rng, monkeypatch, window):
    """A lookup reads a window of slots per key at once; with long probe runs (a dense table,
    tombstones) and a window of 8, many keys go on probing in rounds: every answer equals the
    rounds' own from each key's home."""
    from hps_cli.runtime.volatile import hash_map

    monkeypatch.setenv("HPS_NATIVE", "0")  # the NumPy window (test_native_probe: the C probe)
    monkeypatch.setattr(hash_map, "_WINDOW", window)
    t = HashMapTable(4, num_partitions=3)
    held = rng.choice(10**9, 6000, replace=False).astype(np.int64)
    t.insert(held, synthetic_vectors(held, 4))
    gone = held[::3]
    t.remove(gone)  # tombstones inside the probe runs
    query = np.concatenate([held[:3000], rng.integers(0, 10**9, 500)])
    for size in (1, 7, 300, 4096):
        keys = rng.permutation(query)[:size]
        slots = t._find(keys)
        part, home = t._partition_and_home(keys, t._segment)
        end = part * t._segment + t._segment
        np.testing.assert_array_equal(slots, t._probe(keys, home, end))
        out, hit, _ = t.get(keys)
        live = np.isin(keys, held) & ~np.isin(keys, gone)
        np.testing.assert_array_equal(hit, live)
        np.testing.assert_array_equal(out[hit], synthetic_vectors(keys[hit], 4))


@pytest.mark.parametrize("policy", POLICIES)
def test_overflow_keeps_partitions_within_margin(new_table, policy, rng):
    table = new_table(
        2,
        num_partitions=4,
        overflow_margin=50,
        overflow_policy=policy,
        overflow_resolution_target=0.6,
    )
    held: set[int] = set()
    for _ in range(20):
        keys = np.unique(rng.integers(0, 10**6, 40))
        evicted = table.insert(keys, synthetic_vectors(keys, 2))
        held = (held | set(keys.tolist())) - set(evicted.tolist())
        sizes = table.partition_sizes()
        assert (sizes <= 50).all()
        assert set(table.keys().tolist()) == held
    assert table.evictions > 0 and len(table) <= table.capacity == 200


def test_overflow_shrinks_to_the_resolution_target(new_table):
    table = new_table(1, num_partitions=1, overflow_margin=10, overflow_resolution_target=0.5)
    table.insert(np.arange(10), np.zeros((10, 1), np.float32))
    evicted = table.insert(np.array([100]), np.zeros((1, 1), np.float32))
    # HPS: an overflowing partition shrinks to round(10 * 0.5) = 5, then takes the new key
    assert evicted.size == 5 and len(table) == 6 and table.contains(np.array([100]))[0]


def test_a_batch_larger_than_the_margin_keeps_its_last_keys(new_table):
    table = new_table(1, num_partitions=1, overflow_margin=4)
    keys = np.arange(10)
    evicted = table.insert(keys, keys[:, None].astype(np.float32))
    assert sorted(table.keys().tolist()) == [6, 7, 8, 9]
    assert sorted(evicted.tolist()) == [0, 1, 2, 3, 4, 5]


def test_evict_least_used_keeps_the_keys_looked_up(new_table):
    table = new_table(
        1,
        num_partitions=1,
        overflow_margin=20,
        overflow_policy="evict_least_used",
        overflow_resolution_target=0.5,
    )
    table.insert(np.arange(20), np.zeros((20, 1), np.float32))
    hot = np.arange(0, 20, 2)
    for _ in range(3):
        table.get(hot)
    evicted = table.insert(np.array([99]), np.zeros((1, 1), np.float32))
    assert set(evicted.tolist()) == set(range(1, 20, 2))  # the 10 never-used keys
    assert table.contains(hot).all()


@pytest.mark.parametrize("policy", POLICIES)
def test_a_batch_that_fits_keeps_its_held_keys_below_the_resolution_target(new_table, policy):
    # Found by the state machine below: 3 of the batch's 6 keys are held, 3 are new; the
    # resolution target (round(6 × 0.3) = 2) must not evict held keys the batch just updated.
    table = new_table(
        1,
        num_partitions=1,
        overflow_margin=6,
        overflow_policy=policy,
        overflow_resolution_target=0.3,
    )
    table.insert(np.array([0, 1, -1, -2]), np.zeros((4, 1), np.float32))
    batch = np.array([0, 1, -1, 2, 3, -3])
    evicted = table.insert(batch, np.ones((6, 1), np.float32))
    assert evicted.tolist() == [-2]
    out, hit, _ = table.get(batch)
    assert hit.all() and (out == 1).all()


def test_evict_oldest_drops_the_least_recently_touched(new_table):
    table = new_table(
        1,
        num_partitions=1,
        overflow_margin=10,
        overflow_policy="evict_oldest",
        overflow_resolution_target=0.5,
    )
    for k in range(10):
        table.insert(np.array([k]), np.zeros((1, 1), np.float32))
    table.get(np.array([0, 1]))  # now the most recent
    evicted = table.insert(np.array([50]), np.zeros((1, 1), np.float32))
    assert sorted(evicted.tolist()) == [2, 3, 4, 5, 6]


@pytest.mark.parametrize("reserve", [True, False])
def test_memory_stays_within_one_and_a_half_times_raw(reserve):
    n, dim = 200_000, 128
    keys = np.arange(n, dtype=np.int64) * 11
    table = HashMapTable(dim, num_partitions=16, reserve=n if reserve else 0)
    vectors = np.ones((20_000, dim), np.float32)
    for start in range(0, n, 20_000):
        table.insert(keys[start : start + 20_000], vectors)
    raw = n * (8 + 4 * dim)
    assert table.nbytes <= 1.5 * raw, table.nbytes / raw


def test_bad_arguments_raise_typed_errors(new_table):
    table = new_table(4)
    with pytest.raises(InvalidInputError, match="1-D"):
        table.get(np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(InvalidInputError, match="integers"):
        table.get(np.array([1.5, 2.0]))
    with pytest.raises(InvalidInputError, match="shape"):
        table.insert(np.array([1, 2]), np.zeros((2, 3), np.float32))
    with pytest.raises(InvalidInputError, match="overflow_policy"):
        new_table(4, overflow_policy="evict_everything")
    with pytest.raises(InvalidInputError, match="dim"):
        new_table(0)


def test_concurrent_lookups_and_inserts_never_see_a_wrong_vector(new_table):
    dim = 8
    table = new_table(dim, num_partitions=4, overflow_margin=3000, overflow_policy="evict_oldest")
    universe = np.arange(40_000, dtype=np.int64)
    table.insert(universe[:5000], synthetic_vectors(universe[:5000], dim))
    errors: list[str] = []
    stop = threading.Event()

    def reader(seed: int) -> None:
        local = np.random.default_rng(seed)
        while not stop.is_set():
            keys = local.choice(universe, 2000)
            out, hit, _ = table.get(keys)
            if not np.array_equal(out[hit], synthetic_vectors(keys[hit], dim)):
                errors.append("wrong vector")
                return

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    local = np.random.default_rng(7)
    for _ in range(40):
        keys = local.choice(universe, 1500, replace=False)
        table.insert(keys, synthetic_vectors(keys, dim))
        table.remove(local.choice(universe, 300, replace=False))
    stop.set()
    for t in threads:
        t.join()
    assert not errors


# ---------------------------------------------------------------------------------------------
# Stateful: random insert / lookup / remove / overflow sequences against a dict model.

_MACHINE_SETTINGS = settings(
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestHashMapMachine = HashMapMachine.TestCase
TestHashMapMachine.settings = _MACHINE_SETTINGS
TestSharedHashMapMachine = SharedHashMapMachine.TestCase
TestSharedHashMapMachine.settings = _MACHINE_SETTINGS
