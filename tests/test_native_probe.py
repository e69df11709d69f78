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


def test_lookups_follow_the_arrays_through_growth_rebuilds_and_clear(native, rng):
    """The map keeps its arrays' addresses for the compiled probe: every lookup after the rows
    grew, the slots were rebuilt or the map was cleared reads the new arrays, and the kept
    addresses belong to the arrays the map holds."""
    native(True)
    table = HashMapTable(8, num_partitions=2)
    keys = rng.choice(10**9, 20_000, replace=False).astype(np.int64)
    table.insert(keys[:10], synthetic_vectors(keys[:10], 8))
    for upto in (10, 100, 1_000, 20_000):  # each insert below grows rows and slots
        if upto > 10:
            table.insert(keys[:upto], synthetic_vectors(keys[:upto], 8) + upto)
        out, hit, _ = table.get(keys[:upto])
        assert hit.all()
        expected = synthetic_vectors(keys[:upto], 8) + (upto if upto > 10 else 0)
        np.testing.assert_array_equal(out, expected)
        kept_slots, kept_vectors = table._addresses[:2]
        assert kept_slots is table._slots and kept_vectors is table._vectors
    table.clear()
    out, hit, _ = table.get(keys[:100])
    assert not hit.any()
    table.insert(keys[:5], synthetic_vectors(keys[:5], 8))
    out, hit, _ = table.get(keys[:5])
    assert hit.all()
    np.testing.assert_array_equal(out, synthetic_vectors(keys[:5], 8))


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


# ---------------------------------------------------------------- the shared map's compiled read


def _shared(segment, tag, dim, **options):
    return SharedHashMapTable(segment, tag, dim, **options)


@pytest.fixture
def count_native_reads(monkeypatch):
    """How many passes ``SharedHashMapTable._read_native`` made (the compiled read was used)."""
    calls = [0]
    original = SharedHashMapTable._read_native

    def counted(self, *args):
        calls[0] += 1
        return original(self, *args)

    monkeypatch.setattr(SharedHashMapTable, "_read_native", counted)
    return calls


@pytest.mark.parametrize(
    "policy, parts, dim, margin",
    [
        ("evict_random", 1, 3, 300),
        ("evict_least_used", 5, 16, 150),
        ("evict_oldest", 4, 1, 120),
        ("evict_least_used", 3, 1100, None),  # a vector beyond the C code's stack row
    ],
)
def test_shared_memory_reads_answer_as_numpy_through_rebuilds_repairs_and_evictions(
    native, count_native_reads, rng, policy, parts, dim, margin
):
    """Two tables fed the same updates (upserts, removals, evictions, index rebuilds from
    tombstones, repairs after a "dead" writer), read with and without the compiled read: the
    same vectors, hits, untouched misses and access metadata."""
    tags = itertools.count()
    space = 1_500
    with shared_segment() as segment:
        tables = _pair(
            lambda: _shared(
                segment,
                f"hps_et.nr.t{next(tags)}",
                dim,
                num_partitions=parts,
                overflow_margin=margin,
                overflow_policy=policy,
                expected_keys=2 * space + 50,
            )
        )
        for step in range(16):
            batch = _keys(rng, int(rng.integers(0, 300)), space)
            vectors = rng.standard_normal((batch.size, dim)).astype(np.float32)
            _on_both(native, tables, "insert", batch, vectors)
            _on_both(native, tables, "remove", _keys(rng, 150, space))
            if step % 5 == 4:  # a writer "died" mid-update: the next write repairs
                for table in tables:
                    table._seq[0] += 1
                _on_both(native, tables, "insert", batch[:3], vectors[:3])
            for size in (1, 128, 2048):
                query = _keys(rng, size, space)
                if size > 2:
                    query[-2:] = query[:2]  # duplicates in the batch
                out = rng.standard_normal((size, dim)).astype(np.float32)  # misses keep these
                _on_both(native, tables, "get", query, out)
                _on_both(native, tables, "get", query)
                _on_both(native, tables, "contains", query)
                wide = np.zeros((size, 2 * dim), dtype=np.float32)
                for on, table in zip((True, False), tables):  # not C-contiguous: NumPy pass
                    native(on)
                    got, hit, _ = table.get(query, wide[:, ::2])
                    np.testing.assert_array_equal(got[hit], table.get(query[hit])[0])
            a, b = tables
            _assert_same(a._index, b._index)
            _assert_same(a._meta, b._meta)
            _assert_same(a._headers, b._headers)
        assert (tables[0]._epoch > 2).any() and count_native_reads[0]  # rebuilt since a repair
        assert tables[0].evictions or margin is None


def _torn_states(table: SharedHashMapTable, keys: np.ndarray, rng):
    """States a lock-free reader can meet mid-write, made by hand: a row freed under the
    reader (stamp 0), a row reused for another key, a partition whose index is being rebuilt
    (epoch odd), a partition without an empty slot (a probe that goes a full lap)."""
    part, _ = table._locate(keys)
    _, rows = table._probe(keys, table._locate(keys)[1], part, None)
    held = np.flatnonzero(rows >= 0)
    pick = rng.choice(held, 4, replace=False)
    freed, reused = rows[pick[:2]], rows[pick[2:]]

    @contextmanager_state
    def stamp_zero():
        saved = table._stamps[freed].copy()
        table._stamps[freed] = 0
        yield
        table._stamps[freed] = saved

    @contextmanager_state
    def other_key():
        saved = table._row_keys[reused].copy()
        table._row_keys[reused] = saved + 1
        yield
        table._row_keys[reused] = saved

    @contextmanager_state
    def odd_epoch():
        table._epoch[1] += 1
        yield
        table._epoch[1] -= 1

    @contextmanager_state
    def full_lap():
        segment = table._index[2 * table._S : 3 * table._S]
        saved = segment.copy()
        segment[segment[:, 1] == -1, 1] = -2  # tombstones everywhere: no probe ends
        yield
        segment[:] = saved

    return [stamp_zero, other_key, odd_epoch, full_lap]


def contextmanager_state(function):
    from contextlib import contextmanager

    return contextmanager(function)


@pytest.mark.parametrize("with_out", [True, False])
def test_one_compiled_pass_retries_what_one_numpy_pass_retries(native, rng, with_out):
    """One pass of each over the same torn states: the same positions to read again, the same
    hits and vectors, and rows of ``out`` left as they were for every key not found."""
    with shared_segment() as segment:
        table = _shared(segment, "hps_et.torn.t", 5, num_partitions=4, expected_keys=4000)
        keys = rng.integers(0, 10**9, 3000)
        table.insert(keys, synthetic_vectors(keys, 5))
        query = np.concatenate([keys[:1500], keys[:200] + 1, keys[:5]])
        probe = hash_probe()
        part, home = table._locate(query)

        def native_pass(keys, part, home, pending, out, hit):  # a first pass locates in C
            if pending.size == keys.size:
                part = home = pending = None
            return table._read_native(probe, keys, part, home, pending, out, hit)

        for state in _torn_states(table, query[:1500], rng):
            with state():
                answers = []
                for one_pass in (native_pass, table._read_optimistic):
                    out = np.full((query.size, 5), -7.0, np.float32) if with_out else None
                    hit = np.zeros(query.size, dtype=bool)
                    pending = np.arange(query.size)
                    for subset in (pending, pending[::2]):  # every key, and some
                        again = one_pass(query, part, home, subset, out, hit)
                        answers.append((again, hit.copy(), None if out is None else out.copy()))
                native_answers, numpy_answers = answers[:2], answers[2:]
                for (again, hit, out), (again_np, hit_np, out_np) in zip(
                    native_answers, numpy_answers
                ):
                    np.testing.assert_array_equal(again, again_np)
                    np.testing.assert_array_equal(hit, hit_np)
                    if with_out:
                        np.testing.assert_array_equal(out, out_np)
                        np.testing.assert_array_equal(out[hit], synthetic_vectors(query[hit], 5))
                        assert (out[~hit] == -7).all()
                assert native_answers[0][0].size  # the state did make keys read again
            out, hit, _ = table.get(query)  # after each state, every key reads as before
            assert hit[:1500].all() and not hit[1500:1700].any() and hit[1700:].all()
            np.testing.assert_array_equal(out[hit], synthetic_vectors(query[hit], 5))


_WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from hps_cli.runtime.table.synthetic import synthetic_vectors
    from hps_cli.runtime.volatile.shm_segment import SharedSegment
    from hps_cli.runtime.volatile.shm_table import SharedHashMapTable
    name, tag, dim, space, margin = sys.argv[1:3] + [int(a) for a in sys.argv[3:]]
    segment = SharedSegment(name, 1 << 30, auto_remove=False)
    table = SharedHashMapTable(
        segment, tag, dim, num_partitions=4, overflow_margin=margin, expected_keys=space
    )
    rng = np.random.default_rng(3)
    step = 0
    while True:  # every key always gets its own vector: readers know what each must read
        batch = rng.integers(0, space, int(rng.integers(1, 3000)))
        table.insert(batch, synthetic_vectors(batch, dim))  # new rows, upserts, evictions
        table.remove(rng.integers(0, space, int(rng.integers(1, 2000))))  # tombstones
        if step % 97 == 96:
            table.clear()
        if step == 0:
            print("started", flush=True)
        step += 1
    """
)


@pytest.mark.timeout(120)
def test_compiled_reads_beside_a_writer_process_never_see_a_wrong_row(native, monkeypatch, rng):
    """A writer process inserts, upserts (copy-on-write), evicts, removes, rebuilds indexes and
    clears without pause while reader threads of this process read with the compiled pass:
    every hit is its key's own vector and every miss leaves its row of ``out`` as it was."""
    import threading
    import time

    native(True)
    dim, space, margin, tag = 8, 6_000, 1_000, "hps_et.race.t"
    passes, retried = [0], [0]
    original = SharedHashMapTable._read_native

    def counted(self, *args):
        again = original(self, *args)
        passes[0] += 1
        retried[0] += again.size
        return again

    monkeypatch.setattr(SharedHashMapTable, "_read_native", counted)
    with shared_segment() as segment:
        table = SharedHashMapTable(
            segment, tag, dim, num_partitions=4, overflow_margin=margin, expected_keys=space
        )
        writer = subprocess.Popen(
            [sys.executable, "-c", _WRITER, segment.path.name, tag, str(dim), str(space)]
            + [str(margin)],
            stdout=subprocess.PIPE,
            text=True,
        )
        errors: list[str] = []
        seen = {"hits": 0, "misses": 0, "reads": 0}

        def read(seed: int) -> None:
            local = np.random.default_rng(seed)
            until = time.monotonic() + 3.0
            while time.monotonic() < until and not errors:
                query = local.integers(0, space, int(local.choice([1, 7, 128, 2048])))
                out = np.full((query.size, dim), 1e9, np.float32)
                got, hit, _ = table.get(query, out)
                if not np.array_equal(got[hit], synthetic_vectors(query[hit], dim)):
                    errors.append("a hit read another key's vector or a torn row")
                if not (got[~hit] == 1e9).all():
                    errors.append("a miss changed its row of out")
                known = table.contains(query)
                if known.size != query.size:
                    errors.append("contains answered the wrong size")
                seen["hits"] += int(hit.sum())
                seen["misses"] += int((~hit).sum())
                seen["reads"] += 1

        try:
            assert writer.stdout.readline().strip() == "started"
            readers = [threading.Thread(target=read, args=(seed,)) for seed in (1, 2)]
            for reader in readers:
                reader.start()
            for reader in readers:
                reader.join()
            assert writer.poll() is None, "the writer stopped"
        finally:
            writer.kill()
            writer.wait(30)
        assert not errors, errors[0]
        assert seen["reads"] > 20 and seen["hits"] and seen["misses"]
        assert passes[0] >= seen["reads"]
        assert retried[0], "no read met a write: the race was not exercised"
        print(f"reads {seen}, compiled passes {passes[0]}, keys read again {retried[0]}")


def test_a_compiled_pass_without_room_for_its_scratch_row_reads_in_numpy(native, rng, monkeypatch):
    """``hps_shm_read`` answers None when it cannot allocate its scratch row (dim above its stack
    buffer); that pass then runs in NumPy, the first pass (nothing located yet) included."""
    native(True)
    monkeypatch.setattr(type(hash_probe()), "shm_read", lambda self, *args: None)
    with shared_segment() as segment:
        table = SharedHashMapTable(segment, "hps_et.test.noscratch", 4, expected_keys=500)
        keys = np.arange(300, dtype=np.int64) * 7
        vectors = rng.standard_normal((keys.size, 4)).astype(np.float32)
        table.insert(keys, vectors)
        query = np.concatenate([keys[::3], np.array([1, 2, 3], np.int64)])
        out = np.full((query.size, 4), -5.0, np.float32)
        got, hit, _ = table.get(query, out)
        assert hit.tolist() == [True] * keys[::3].size + [False] * 3
        np.testing.assert_array_equal(got[: keys[::3].size], vectors[::3])
        assert (got[keys[::3].size :] == -5.0).all()  # misses untouched


def test_the_native_switch_is_read_at_each_call(monkeypatch):
    """HPS_NATIVE is read from the environment at each call (a fast read of os.environ's own
    mapping on POSIX): set, changed and removed between calls, each call sees the current
    value."""
    from hps_cli.runtime.native.loader import native_enabled

    for value, expected in (("0", False), (" 0 ", False), ("1", True), ("", True), ("0", False)):
        monkeypatch.setenv("HPS_NATIVE", value)
        assert native_enabled() is expected
    monkeypatch.delenv("HPS_NATIVE")
    assert native_enabled() is True
