"""The compiled hash-map probe (runtime/native) answers exactly as the NumPy paths: two tables
fed the same operations, one with ``HPS_NATIVE=0``, stay identical (slots, rows, access
metadata) and answer every lookup the same. Without a compiler the NumPy paths answer."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from helpers.shm import shared_segment
from hps_cli.runtime.hashing import mix64, mix64_vectorized
from hps_cli.runtime.native.hash_probe import hash_probe
from hps_cli.runtime.native.loader import FLAGS, library_name
from hps_cli.runtime.table.synthetic import synthetic_vectors
from hps_cli.runtime.volatile.hash_map import POLICIES, HashMapTable
from hps_cli.runtime.volatile.shm_table import SharedHashMapTable

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
EDGES = np.array([0, -1, 1, INT64_MIN, INT64_MAX, INT64_MIN + 1, INT64_MAX - 1], dtype=np.int64)


@pytest.fixture
def native(monkeypatch):
    """``native(flag)`` switches the compiled probe on (True) or off; skips without one."""
    monkeypatch.delenv("HPS_NATIVE", raising=False)
    if hash_probe() is None:
        pytest.skip("no C compiler: the compiled probe is unavailable")

    def switch(on: bool) -> None:
        monkeypatch.setenv("HPS_NATIVE", "1" if on else "0")

    return switch


def _pair(make):
    """The same table twice: [0] used with the compiled probe, [1] with NumPy."""
    return make(), make()


def _on_both(native, tables, method, *args):
    """``method(*args)`` of the first table with the compiled probe and of the second without
    (each on its own copy of the array arguments): the answers must be the same."""
    answers = []
    for on, table in zip((True, False), tables):
        native(on)
        copies = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
        answers.append(getattr(table, method)(*copies))
    _assert_same(*answers)
    return answers


def _assert_same(a, b):
    if isinstance(a, tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    else:
        assert a == b


def _keys(rng, size, space):
    """Keys from a small space (so batches repeat, update and remove keys) with the edges."""
    keys = rng.integers(-space, space, size, dtype=np.int64)
    if size:
        keys[rng.integers(0, size, min(size, 4))] = rng.choice(EDGES, min(size, 4))
    return keys


def _assert_tables_equal(a: HashMapTable, b: HashMapTable) -> None:
    _assert_same(a._slots, b._slots)
    _assert_same(a._live, b._live)
    _assert_same(a._tomb, b._tomb)
    _assert_same(a._vectors[: a._top], b._vectors[: b._top])
    if a._meta is not None:
        _assert_same(a._meta[: a._top], b._meta[: b._top])
    assert a._clock == b._clock and a.evictions == b.evictions


@pytest.mark.parametrize(
    "policy, parts, margin",
    [
        ("evict_random", 1, None),
        ("evict_random", 3, 150),
        ("evict_least_used", 4, 120),
        ("evict_oldest", 5, 100),
        ("evict_oldest", 16, None),
        ("evict_least_used", 7, None),
    ],
)
def test_hash_map_answers_as_numpy_through_inserts_removals_and_evictions(
    native, rng, policy, parts, margin
):
    dim = 3
    tables = _pair(
        lambda: HashMapTable(
            dim, num_partitions=parts, overflow_margin=margin, overflow_policy=policy, seed=7
        ),
    )
    space = 2_000
    for step in range(25):
        batch = _keys(rng, int(rng.integers(0, 400)), space)
        vectors = rng.standard_normal((batch.size, dim)).astype(np.float32)
        _on_both(native, tables, "insert", batch, vectors)
        gone = _keys(rng, int(rng.integers(0, 120)), space)
        _on_both(native, tables, "remove", gone)
        for size in (0, 1, 128, 700):
            query = _keys(rng, size, space)
            if size > 2:
                query[-2:] = query[:2]  # duplicates in the batch
            out = rng.standard_normal((size, dim)).astype(np.float32)  # misses keep these
            _on_both(native, tables, "get", query, out)
            _on_both(native, tables, "get", query)
            _on_both(native, tables, "contains", query)
            _on_both(native, tables, "_find", query)
        _assert_tables_equal(*tables)
        if step == 12:
            _on_both(native, tables, "reserve", 5 * space)  # a rebuild, bigger
    assert tables[0].evictions or margin is None
    assert tables[0]._segment > 8 and len(tables[0])


def test_probing_wraps_inside_its_segment(native):
    """Keys whose home is a segment's last slot continue at its first slot, not the next
    segment's."""
    table = HashMapTable(2, num_partitions=2)
    candidates = np.arange(1, 200_000, dtype=np.int64)
    part, home = table._partition_and_home(candidates, table._segment)
    last = candidates[(part == 0) & (home == table._segment - 1)][:3]
    assert last.size == 3
    native(True)
    table.insert(last, synthetic_vectors(last, 2))
    slots = table._find(last)
    assert sorted(slots.tolist()) == [0, 1, table._segment - 1]  # two wrapped to the start
    for on in (True, False):
        native(on)
        out, hit, _ = table.get(np.concatenate([last, [123456789]]))
        np.testing.assert_array_equal(hit, [True, True, True, False])
        np.testing.assert_array_equal(out[:3], synthetic_vectors(last, 2))
        np.testing.assert_array_equal(table._find(last), slots)


def test_a_non_contiguous_out_or_keys_take_a_path_that_answers_the_same(native, rng):
    table = HashMapTable(4, num_partitions=4)
    keys = rng.integers(0, 10**6, 1000, dtype=np.int64)
    table.insert(keys, synthetic_vectors(keys, 4))
    native(True)
    query = np.concatenate([keys[:300], keys[:300] + 10**6])[::3]  # a strided view
    wide = np.zeros((query.size, 8), dtype=np.float32)
    out, hit, _ = table.get(query, wide[:, ::2])  # not C-contiguous: the NumPy path
    expected, expected_hit, _ = table.get(query)
    np.testing.assert_array_equal(hit, expected_hit)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(expected[hit], synthetic_vectors(query[hit], 4))


@pytest.mark.parametrize("policy", POLICIES)
def test_shared_memory_map_answers_as_numpy(native, rng, policy):
    tags = itertools.count()
    with shared_segment() as segment:

        def make():
            return SharedHashMapTable(
                segment,
                f"hps_et.test.n{next(tags)}",
                3,
                num_partitions=6,
                overflow_margin=200,
                overflow_policy=policy,
                expected_keys=2000,
            )

        tables = _pair(make)
        for _ in range(10):
            batch = _keys(rng, int(rng.integers(0, 500)), 3000)
            vectors = rng.standard_normal((batch.size, 3)).astype(np.float32)
            _on_both(native, tables, "insert", batch, vectors)
            gone = _keys(rng, 100, 3000)
            _on_both(native, tables, "remove", gone)
            for size in (0, 1, 128, 900):
                query = _keys(rng, size, 3000)
                _on_both(native, tables, "get", query)
                _on_both(native, tables, "contains", query)
            a, b = tables
            _assert_same(a._index, b._index)
            _assert_same(a._meta, b._meta)
            _assert_same(a.partition_sizes(), b.partition_sizes())
        assert tables[0].evictions


def test_mix64_is_bit_identical(native, rng):
    native(True)
    for keys in (
        EDGES,
        rng.integers(INT64_MIN, INT64_MAX, 10_000, dtype=np.int64, endpoint=True),
        np.arange(-1000, 1000),
        np.arange(24, dtype=np.int32).reshape(2, 3, 4),
        np.arange(40, dtype=np.int64)[::3],
        np.int64(-5),
        [1, 2, 3],
        np.empty(0, dtype=np.int64),
    ):
        got, want = mix64(keys), mix64_vectorized(keys)
        assert got.dtype == want.dtype == np.uint64 and got.shape == want.shape
        np.testing.assert_array_equal(got, want)


def test_the_cache_name_follows_the_source_and_the_command():
    command = ["cc", *FLAGS]
    a = library_name("hash_probe", b"int f(void) { return 1; }", command)
    assert a == library_name("hash_probe", b"int f(void) { return 1; }", command)
    assert a != library_name("hash_probe", b"int f(void) { return 2; }", command)
    assert a != library_name("hash_probe", b"int f(void) { return 1; }", ["clang", *FLAGS])
    assert a.startswith("hash_probe-") and a.endswith(".so")


_CHILD = textwrap.dedent(
    """
    import logging, os, sys
    import numpy as np
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(levelname)s %(message)s")
    import hps_cli.runtime.hashing
    from hps_cli.runtime.volatile.hash_map import HashMapTable
    from hps_cli.runtime.native.hash_probe import hash_probe
    cache = os.path.join(os.environ["HPS_KERNEL_CACHE"], "native")
    print("after import:", sorted(os.listdir(cache)) if os.path.isdir(cache) else [])
    t = HashMapTable(4, num_partitions=3)
    keys = np.arange(-500, 500, dtype=np.int64) * 7919
    t.insert(keys, np.repeat(keys[:, None], 4, axis=1).astype(np.float32))
    for _ in range(3):
        out, hit, _ = t.get(np.concatenate([keys, keys + 1]))
    assert hit[: keys.size].all() and not hit[keys.size :].any()
    assert (out[: keys.size] == keys[:, None].astype(np.float32)).all()
    print("native:", hash_probe() is not None)
    print("cached:", sorted(n.endswith(".so") for n in os.listdir(cache)))
    """
)


def _child(tmp_path, **env):
    cache = tmp_path / "cache"
    env = {**os.environ, "HPS_KERNEL_CACHE": str(cache), **env}
    env.pop("HPS_NATIVE", None)
    done = subprocess.run(
        [sys.executable, "-c", _CHILD], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_broken_compiler_leaves_the_numpy_path_and_one_log_line(tmp_path):
    out = _child(tmp_path, CC="/bin/false")
    assert "native: False" in out
    assert out.count("native hash_probe unavailable") == 1, out
    assert "INFO native hash_probe unavailable" in out
    assert "cached: []" in out  # no partial file left behind


@pytest.mark.skipif(hash_probe() is None, reason="no C compiler")
def test_importing_compiles_nothing_and_the_first_lookup_compiles_once(tmp_path):
    out = _child(tmp_path)
    assert "after import: []" in out
    assert "native: True" in out and "cached: [True]" in out
    assert "unavailable" not in out
