"""The embedding cache inside the hierarchy: HPS(config) with caches built per the config.

Every test runs with the NumPy reference cache (the CPU fallback: CI) and, marked ``gpu``, with
the GPU cache (the GPU machine); both must behave the same.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers.runtime_configs import make_tables
from helpers.runtime_configs import ps_config as _ps_config
from hps_cli.runtime import HPS
from hps_cli.runtime.errors import CapacityError, ConfigError, InvalidInputError
from hps_cli.runtime.gpu.cache_factory import EmbeddingCacheFactory
from hps_cli.runtime.persistent.rocksdb_families import list_families
from hps_cli.runtime.table.synthetic import synthetic_vectors
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule


@pytest.fixture(params=["reference", pytest.param("gpu", marks=pytest.mark.gpu)])
def backend(request, monkeypatch):
    monkeypatch.setenv("HPS_CACHE_BACKEND", request.param)
    return request.param


def ps_config(*args, **kwargs):
    kwargs.setdefault("gpucache", True)
    return _ps_config(*args, **kwargs)


def _hps(doc, worker_timeout=10.0, **factory_options):
    factory = EmbeddingCacheFactory(**factory_options)
    return HPS(doc, cache_factory=factory, worker_timeout=worker_timeout), factory


class _ChangedFactory:
    """An EmbeddingCacheFactory whose caches ``change(cache, model, table)`` edits (a
    seams.CacheFactory: HPS closes it)."""

    def __init__(self, change, **options):
        self.base = EmbeddingCacheFactory(**options)
        self.change = change

    def __call__(self, model, table, device_id, tiers):
        cache = self.base(model, table, device_id, tiers)
        self.change(cache, model, table)
        return cache

    def holds_whole_table(self, model, table):
        return self.base.holds_whole_table(model, table)

    def close(self):
        self.base.close()


@pytest.fixture
def tables(tmp_path):
    return make_tables(tmp_path, {"users": (4000, 8), "items": (3000, 32)}, with_meta=True)


DIMS = {"users": 8, "items": 32}


def test_dynamic_cache_is_exact_and_prefilled(tmp_path, tables, backend):
    doc = ps_config(
        tables,
        DIMS,
        persistent={"type": "rocks_db", "path": str(tmp_path / "db")},
        gpucacheper=0.25,
        hit_rate_threshold=1.0,
    )
    hps, factory = _hps(doc)
    with hps:
        front = hps.front_cache("m", "users")
        assert front is not None and front.stats()["inserted"] > 0  # prefilled at start-up
        rng = np.random.default_rng(0)
        for _ in range(20):
            keys = rng.integers(0, 4500, 700)  # some beyond the table: defaults
            got = hps.lookup(keys, "m", "users")
            expected = synthetic_vectors(keys, 8)
            expected[keys >= 4000] = 0.0
            np.testing.assert_array_equal(got, expected)
        stats = front.stats()
        assert stats["hits"] > 0 and stats["misses"] > 0
        assert stats["capacity"] >= 1000
        factory.close()


def test_prefill_takes_the_hottest_rows(tmp_path, tables, backend):
    doc = ps_config(tables, DIMS, gpucacheper=0.1, hit_rate_threshold=1.0)
    hps, factory = _hps(doc)
    with hps:
        front = hps.front_cache("m", "users")
        from hps_cli.runtime.table import TableReader

        with TableReader(tables["users"]) as reader:
            meta, keys = np.array(reader.meta()), np.array(reader.keys())
        hottest = keys[np.argsort(-meta, kind="stable")[:400]]  # ceil(0.1 × 4000)
        before = front.stats()["misses"]
        hps.lookup(hottest, "m", "users")
        assert front.stats()["misses"] == before  # every one of them placed
    factory.close()


@pytest.mark.parametrize("gpucacheper", [0.25, 0.5, 1.0])
def test_a_full_cache_holds_the_hottest_rows_and_every_row_at_one(tmp_path, backend, gpucacheper):
    """After prefill the cache holds the ceil(p × rows) hottest rows (by meta); at p = 1 a
    lookup of every key of the table hits, whatever the table's size."""
    for rows in (777, 30_000, 100_000):
        tables = make_tables(tmp_path / str(rows), {"t": (rows, 4)}, with_meta=True, seed=rows)
        doc = ps_config(tables, {"t": 4}, gpucacheper=gpucacheper, hit_rate_threshold=1.0)
        hps, factory = _hps(doc)
        with hps:
            from hps_cli.runtime.gpu.placement import rows_to_cache
            from hps_cli.runtime.table import TableReader

            with TableReader(tables["t"]) as reader:
                meta, keys = np.array(reader.meta()), np.array(reader.keys())
            wanted = rows_to_cache(rows, gpucacheper)
            hottest = keys[np.argsort(-meta, kind="stable")[:wanted]]
            front = hps.front_cache("m", "t")
            cached = np.isin(hottest, front.backend.dump())
            assert cached.all(), (rows, cached.mean())
            lookup = hottest if gpucacheper < 1 else np.random.default_rng(1).permutation(keys)
            got = hps.lookup(lookup, "m", "t")
            np.testing.assert_array_equal(got, synthetic_vectors(lookup, 4, rows))
            assert front.stats()["misses"] == 0
        factory.close()


@pytest.mark.parametrize("threshold", [1.0, 0.5])
def test_concurrent_lookups_and_inserts_stay_exact(tmp_path, tables, backend, threshold):
    """Lookups that miss (their rows inserted later, in batches) run on three threads while a
    fourth changes keys with HPS.insert: every lookup of a key not being changed is exact, and
    once all is done the cache serves every key's last value (no fetched row put back over a
    newer one)."""
    import threading

    doc = ps_config(tables, DIMS, gpucacheper=0.1, hit_rate_threshold=threshold)
    hps, factory = _hps(doc, prefill=False)
    changing = np.arange(0, 4000, 7, dtype=np.int64)  # the keys the writer changes
    latest = {}
    errors: list = []

    def writer() -> None:
        rng = np.random.default_rng(0)
        try:
            for step in range(60):
                keys = rng.choice(changing, 40, replace=False)
                value = float(step + 1)
                hps.insert("m", "users", keys, np.full((keys.size, 8), value, np.float32))
                for k in keys.tolist():
                    latest[k] = value
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    def reader(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            for _ in range(60):
                keys = rng.integers(0, 4000, 300)
                got = hps.lookup(keys, "m", "users")
                steady = ~np.isin(keys, changing)
                expected = synthetic_vectors(keys[steady], 8)
                if threshold == 1.0:
                    np.testing.assert_array_equal(got[steady], expected)
                else:  # asynchronous misses: the default value until they arrive
                    ok = (got[steady] == expected).all(axis=1) | (got[steady] == 0.0).all(axis=1)
                    assert ok.all()
        except BaseException as exc:
            errors.append(exc)

    with hps:
        threads = [threading.Thread(target=writer)] + [
            threading.Thread(target=reader, args=(seed,)) for seed in (1, 2, 3)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors[0]
        factory.flush()
        everything = np.arange(4000, dtype=np.int64)
        expected = synthetic_vectors(everything, 8)
        for k, value in latest.items():
            expected[k] = value
        for _ in range(2):  # the second time from the cache, filled by the first
            np.testing.assert_array_equal(hps.lookup(everything, "m", "users"), expected)
            factory.flush()
        assert hps.front_cache("m", "users").stats()["hits"] > 0
    factory.close()


def test_hit_rate_threshold_async_returns_defaults_then_values(tmp_path, tables, backend):
    doc = ps_config(
        tables,
        DIMS,
        gpucacheper=0.5,
        hit_rate_threshold=0.5,
        default_value_for_each_table=[-1.0, -1.0],
    )
    hps, factory = _hps(doc, prefill=False)
    with hps:
        warm = np.arange(100, dtype=np.int64)
        hps.lookup(warm, "m", "users")  # nothing cached: hit rate 0 < 0.5, synchronous
        factory.flush()  # its rows go into the cache in the background
        keys = np.concatenate([warm, [3000, 3001]])  # 100 of 102 unique keys hit: asynchronous
        first = hps.lookup(keys, "m", "users")
        np.testing.assert_array_equal(first[:100], synthetic_vectors(warm, 8))
        assert (first[100:] == -1.0).all()
        factory.flush()
        np.testing.assert_array_equal(hps.lookup(keys, "m", "users"), synthetic_vectors(keys, 8))
    factory.close()


def test_insert_and_remove_reach_cached_copies(tmp_path, tables, backend):
    doc = ps_config(
        tables,
        DIMS,
        persistent={"type": "rocks_db", "path": str(tmp_path / "db")},
        gpucacheper=1.0,
        hit_rate_threshold=1.0,
    )
    hps, factory = _hps(doc)
    with hps:
        keys = np.array([5, 6, 7], dtype=np.int64)
        hps.lookup(keys, "m", "items")  # cached now
        new = np.full((2, 32), 9.5, np.float32)
        hps.insert("m", "items", np.array([6, 90001]), new)
        got = hps.lookup(np.array([5, 6, 90001]), "m", "items")
        np.testing.assert_array_equal(got[0], synthetic_vectors(np.array([5]), 32)[0])
        assert (got[1:] == 9.5).all()
        hps.remove("m", "items", np.array([5]))
        assert (hps.lookup(np.array([5]), "m", "items") == 0.0).all()
    factory.close()


@pytest.mark.parametrize(
    "cache_type, extra",
    [("static", {}), ("uvm", {"gpucacheper": 0.3}), ("static", {"enable_pagelock": True})],
)
def test_static_and_uvm_caches_answer_from_the_whole_table(
    tmp_path, tables, backend, cache_type, extra
):
    doc = ps_config(
        tables,
        DIMS,
        embedding_cache_type=cache_type,
        default_value_for_each_table=[0.5, 0.5],
        **extra,
    )
    hps, factory = _hps(doc)
    with hps:
        keys = np.array([0, 3999, 17, 5000, 17])
        got = hps.lookup(keys, "m", "users")
        expected = synthetic_vectors(keys, 8)
        expected[3] = 0.5
        np.testing.assert_array_equal(got, expected)
        assert hps.front_cache("m", "users").stats()["hits"] == 4
        with pytest.raises(InvalidInputError, match="read-only"):
            hps.insert("m", "users", np.array([1]), np.zeros((1, 8), np.float32))
        with pytest.raises(InvalidInputError, match="read-only"):
            hps.remove("m", "users", np.array([1]))
        tiers = hps.table_backend("m", "users")  # the cache holds the one copy of the table
        assert tiers.volatile is None and tiers.persistent is None
    factory.close()


@pytest.mark.parametrize("cache_type", ["static", "uvm"])
def test_static_and_uvm_tables_leave_no_copy_in_the_cpu_tiers(tmp_path, tables, cache_type):
    """Their caches hold every row: no hash-map table, no RocksDB family (a read-only database
    need not have one), and lookups stay exact."""
    db = tmp_path / "db"
    doc = ps_config(
        tables,
        DIMS,
        embedding_cache_type=cache_type,
        persistent={"type": "rocks_db", "path": str(db)},
    )
    doc["models"].append(dict(doc["models"][0], model="dyn", embedding_cache_type="dynamic"))
    with HPS(doc) as hps:
        for name in DIMS:
            tiers = hps.table_backend("m", name)
            assert tiers.volatile is None and tiers.persistent is None
            assert hps.table_backend("dyn", name).persistent is not None
        keys = np.array([5, 3999, 10**9])
        expected = synthetic_vectors(keys, 8)
        expected[2] = 0.0
        np.testing.assert_array_equal(hps.lookup(keys, "m", "users"), expected)
    families = set(list_families(db))
    assert not {f for f in families if f.startswith("hps_et.m.")}
    assert {"hps_et.dyn.users", "hps_et.dyn.items"} <= families
    doc["persistent_db"]["read_only"] = True
    with HPS(doc) as hps:  # the read-only database lacks hps_et.m.*: not needed
        np.testing.assert_array_equal(hps.lookup(keys, "m", "users"), expected)


@pytest.mark.slow
def test_static_and_uvm_start_up_memory_against_the_copying_start_up(tmp_path):
    """benchmarks/bench_static_memory.py on a ~100 MB table: without CPU-tier copies the
    start-up grows RSS by about the table (the reference cache's one copy) and writes no
    RocksDB; the copying start-up (its baseline) grows it by twice that and more."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_static_memory.py"
    out = subprocess.run(
        [sys.executable, str(script), "--rows", "400000", "--dim", "64"],
        capture_output=True,
        text=True,
        check=True,
    )
    report = json.loads(out.stdout)
    table = report["table_mib"]
    assert table > 95
    for run in report["runs"]:
        assert run["lookups_exact"]
        if run["cpu_tier_copies"]:
            assert run["rss_growth_mib"] > 2 * table and run["rocksdb_mib"] > table
        else:
            assert run["rss_growth_mib"] < 1.3 * table and run["rocksdb_mib"] == 0
            assert not run["volatile_tier"] and not run["persistent_tier"]


def test_gpucache_false_uses_the_cpu_tiers_only(tmp_path, tables, backend):
    hps, factory = _hps(ps_config(tables, DIMS, gpucache=False))
    with hps:
        assert hps.front_cache("m", "users") is None
        np.testing.assert_array_equal(
            hps.lookup(np.array([1, 2]), "m", "users"), synthetic_vectors(np.array([1, 2]), 8)
        )
    factory.close()


def test_one_cache_per_device_and_lookups_routed_by_device(tmp_path, tables, monkeypatch):
    monkeypatch.setenv("HPS_CACHE_BACKEND", "reference")  # two devices: the reference stands in
    doc = ps_config(tables, DIMS, devices=(0, 1), hit_rate_threshold=1.0, gpucacheper=0.5)
    hps, factory = _hps(doc, prefill=False)
    with hps:
        a, b = hps.front_cache("m", "users", 0), hps.front_cache("m", "users", 1)
        assert a is not b
        hps.lookup(np.arange(50), "m", "users", device_id=0)
        assert a.stats()["keys"] == 50 and b.stats()["keys"] == 0
        hps.lookup(np.arange(50), "m", "users")  # the last deployed device, as in HPS
        assert b.stats()["keys"] == 50
    factory.close()


def test_worker_buffers_exhausted_wait_then_fail(tmp_path, tables, monkeypatch):
    monkeypatch.setenv("HPS_CACHE_BACKEND", "reference")
    doc = ps_config(tables, DIMS, num_of_worker_buffer_in_pool=1, hit_rate_threshold=1.0)
    hps, factory = _hps(doc, worker_timeout=0.2)
    with hps:
        pool = hps.worker_pool("m")
        taken = pool.acquire()  # another lookup holds the only buffer
        with pytest.raises(CapacityError, match="worker buffer"):
            hps.lookup(np.arange(5), "m", "users")
        pool.release(taken)
        assert hps.lookup(np.arange(5), "m", "users").shape == (5, 8)
    factory.close()


@pytest.mark.parametrize("cache_type", ["dynamic", "uvm"])
def test_lookup_tables_overlaps_and_matches_single_lookups(tmp_path, tables, backend, cache_type):
    """Every table's query is queued before any is waited for; the rows, misses (resolved
    exactly) and counters are those of one lookup per table."""
    doc = ps_config(
        tables, DIMS, gpucacheper=0.3, hit_rate_threshold=1.0, embedding_cache_type=cache_type
    )
    hps, factory = _hps(doc, prefill=False)
    with hps:
        rng = np.random.default_rng(4)
        for _ in range(6):
            keys = [rng.integers(0, 4500, 900), rng.integers(0, 3300, 1700)]
            got = hps.lookup_tables(keys, "m")
            for k, rows, (dim, table_rows) in zip(keys, got, ((8, 4000), (32, 3000))):
                in_table = (k < table_rows)[:, None]  # keys past the table: default 0
                np.testing.assert_array_equal(
                    rows, np.where(in_table, synthetic_vectors(k, dim), np.float32(0))
                )
        for name, keys_per_call in (("users", 900), ("items", 1700)):
            stats = hps.front_cache("m", name).stats()
            assert stats["lookups"] == 6 and stats["keys"] == 6 * keys_per_call
            assert hps.worker_pool("m").waits == 0  # one buffer for both tables
        assert hps.stats()["m"]["users"]["latency"]["count"] == 6
    factory.close()


def test_lookup_tables_failing_table_waits_for_the_others(tmp_path, tables, backend):
    """When one table's lookup fails (its CPU tier is down), the call raises that error after
    the other tables' queued lookups finished, and the worker buffer goes back."""

    def down(keys):
        raise ConnectionError("volatile tier unreachable")

    def change(cache, model, table):
        if table.index == 0:
            cache.fetch = down

    factory = _ChangedFactory(change, prefill=False)
    doc = ps_config(tables, DIMS, num_of_worker_buffer_in_pool=1, hit_rate_threshold=1.0)
    with HPS(doc, cache_factory=factory) as hps:
        items = hps.front_cache("m", "items")
        pool = hps.worker_pool("m")
        with pytest.raises(ConnectionError, match="unreachable"):
            hps.lookup_tables([np.arange(5), np.arange(7)], "m")  # both miss: both fetch
        assert items.stats()["lookups"] == 0  # queued after table 0: waited for, rows dropped
        assert pool.waits == 0
        np.testing.assert_array_equal(
            hps.lookup(np.arange(7), "m", "items"), synthetic_vectors(np.arange(7), 32)
        )
        assert pool.waits == 0  # the only buffer had come back


class _RecordingBackend:
    """A real cache backend whose launches and waits are logged in one shared list."""

    def __init__(self, backend, name, log):
        self._backend, self._name, self._log = backend, name, log

    def __getattr__(self, attr):
        return getattr(self._backend, attr)

    def launch_query(self, keys, default_value=0.0, slot=0):
        from hps_cli.runtime.gpu.pending import Launched

        launched = self._backend.launch_query(keys, default_value, slot)
        self._log.append(("launch", self._name, slot))

        def wait():
            self._log.append(("wait", self._name, slot))
            return launched.wait()

        return Launched(wait)


def test_lookup_tables_queues_every_table_before_waiting(tmp_path, tables, backend):
    """The overlap itself: every table's query is launched before the first wait, all with
    the call's one worker buffer."""
    log: list = []

    def change(cache, model, table):
        cache.backend = _RecordingBackend(cache.backend, table.name, log)

    factory = _ChangedFactory(change, prefill=False)
    with HPS(ps_config(tables, DIMS, hit_rate_threshold=1.0), cache_factory=factory) as hps:
        for _ in range(3):
            log.clear()
            keys = [np.arange(100), np.arange(50, 250)]
            got = hps.lookup_tables(keys, "m")
            assert [(event, name) for event, name, _ in log] == [
                ("launch", "users"),
                ("launch", "items"),
                ("wait", "users"),
                ("wait", "items"),
            ]
            assert len({slot for _, _, slot in log}) == 1
            np.testing.assert_array_equal(got[1], synthetic_vectors(keys[1], 32))


class _ClosingBackend(_RecordingBackend):
    """Logs inserts (slowly, so background ones are still queued at shutdown) and close."""

    def replace(self, keys, rows):
        import time

        time.sleep(0.02)
        self._log.append(("replace", self._name))
        return self._backend.replace(keys, rows)

    def close(self):
        self._log.append(("close", self._name))
        self._backend.close()


def test_closing_finishes_background_inserts_before_freeing_the_caches(tmp_path, tables, backend):
    """HPS.close: refreshes stop, queued background inserts run into open caches, and only then
    each cache's device memory is freed (once)."""
    log: list = []

    def change(cache, model, table):
        cache.backend = _ClosingBackend(cache.backend, table.name, log)

    factory = _ChangedFactory(change, prefill=False)  # HPS closes the factory it was given
    doc = ps_config(tables, DIMS, hit_rate_threshold=0.0)  # misses inserted in the background
    with HPS(doc, cache_factory=factory) as hps:
        for start in range(0, 400, 50):
            hps.lookup(np.arange(start, start + 50), "m", "users")
    closes = [i for i, event in enumerate(log) if event[0] == "close"]
    inserts = [i for i, event in enumerate(log) if event[0] == "replace"]
    assert len(inserts) == 8 and len(closes) == 2  # every insert ran; each table closed once
    assert max(inserts) < min(closes)


def test_launched_query_resolves_once_and_a_dropped_one_is_waited_for(
    tmp_path, tables, monkeypatch
):
    monkeypatch.setenv("HPS_CACHE_BACKEND", "reference")
    doc = ps_config(tables, DIMS, num_of_worker_buffer_in_pool=1, hit_rate_threshold=1.0)
    hps, factory = _hps(doc, worker_timeout=0.2, prefill=False)
    with hps:
        front = hps.front_cache("m", "users")
        pool = hps.worker_pool("m")
        slot = pool.acquire()  # the query's worker buffer is HPS's
        try:
            started = front.launch_query(np.arange(10), slot)
            first = started.result()
            assert started.result() is first  # no second resolution
            assert front.stats()["lookups"] == 1
            front.launch_query(np.arange(10), slot).abandon()  # waited for, nothing counted
            assert front.stats()["lookups"] == 1
            dropped = front.launch_query(np.arange(10), slot)
            del dropped  # collected without result(): waited for
            np.testing.assert_array_equal(
                front.query(np.arange(3), slot), synthetic_vectors(np.arange(3), 8)
            )
        finally:
            pool.release(slot)
        np.testing.assert_array_equal(  # the only buffer is free again
            hps.lookup(np.arange(3), "m", "users"), synthetic_vectors(np.arange(3), 8)
        )
        assert pool.waits == 0
    factory.close()


def test_fp8_quant_is_refused(tmp_path, tables):
    with pytest.raises(ConfigError, match="fp8_quant"):
        _hps(ps_config(tables, DIMS, embedding_cache_type="static", fp8_quant=True))


def test_refresh_reloads_changed_values_periodically(tmp_path, tables, monkeypatch):
    monkeypatch.setenv("HPS_CACHE_BACKEND", "reference")
    doc = ps_config(
        tables,
        DIMS,
        gpucacheper=1.0,
        hit_rate_threshold=1.0,
        refresh_interval=1,
        cache_refresh_percentage_per_iteration=0.25,
    )
    hps, factory = _hps(doc)
    with hps:
        front = hps.front_cache("m", "users")
        keys = np.array([1, 2], dtype=np.int64)
        hps.lookup(keys, "m", "users")
        front.update(keys, np.zeros((2, 8), np.float32))  # cached copies go stale
        refresher = factory.refreshers[("m", 0)]
        # a whole round that started after the update: the one running may have passed
        rounds = refresher.rounds + 2
        deadline = time.monotonic() + 10
        while refresher.rounds < rounds and time.monotonic() < deadline:
            time.sleep(0.05)
        assert refresher.rounds >= rounds and front.stats()["refreshed"] > 0
        np.testing.assert_array_equal(hps.lookup(keys, "m", "users"), synthetic_vectors(keys, 8))
    factory.close()


class CachedHierarchy(RuleBasedStateMachine):
    """HPS with a small dynamic cache in front of hash map + RocksDB behaves like a dict."""

    keys = st.integers(0, 400)

    @initialize()
    def start(self):
        import tempfile
        from pathlib import Path

        self.tmp = Path(tempfile.mkdtemp(prefix="hps-cache-sm-"))
        tables = make_tables(self.tmp, {"t": (300, 4)})
        doc = ps_config(
            tables,
            {"t": 4},
            gpucacheper=0.25,
            hit_rate_threshold=1.0,
            volatile={
                "type": "hash_map",
                "num_partitions": 2,
                "overflow_margin": 60,
                "overflow_policy": "evict_oldest",
            },
            persistent={"type": "rocks_db", "path": str(self.tmp / "db")},
        )
        self.factory = EmbeddingCacheFactory()
        self.hps = HPS(doc, cache_factory=self.factory)
        keys = np.arange(300)
        self.model = dict(zip(keys.tolist(), synthetic_vectors(keys, 4)))

    @rule(keys=st.lists(keys, min_size=1, max_size=40))
    def lookup(self, keys):
        got = self.hps.lookup(np.array(keys, np.int64), "m", "t")
        for row, key in zip(got, keys):
            np.testing.assert_array_equal(row, self.model.get(key, np.zeros(4, np.float32)))

    @rule(keys=st.lists(keys, min_size=1, max_size=10, unique=True), value=st.floats(-5, 5))
    def insert(self, keys, value):
        vectors = np.full((len(keys), 4), value, np.float32)
        self.hps.insert("m", "t", np.array(keys, np.int64), vectors)
        for key, row in zip(keys, vectors):
            self.model[key] = row

    @rule(keys=st.lists(keys, min_size=1, max_size=10))
    def remove(self, keys):
        self.hps.remove("m", "t", np.array(keys, np.int64))
        for key in keys:
            self.model.pop(key, None)

    @invariant()
    def cache_never_exceeds_capacity(self):
        if hasattr(self, "hps"):
            cache = self.hps.front_cache("m", "t")
            assert cache.backend.occupancy() <= cache.backend.capacity

    def teardown(self):
        if hasattr(self, "hps"):
            self.hps.close()
            self.factory.close()
            import shutil

            shutil.rmtree(self.tmp, ignore_errors=True)


CachedHierarchy.TestCase.settings = settings(
    max_examples=25,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.mark.parametrize("backend_name", ["reference", pytest.param("gpu", marks=pytest.mark.gpu)])
def test_cached_hierarchy_behaves_like_a_dict(backend_name, monkeypatch):
    monkeypatch.setenv("HPS_CACHE_BACKEND", backend_name)
    CachedHierarchy.TestCase().runTest()


def test_hps_builds_the_configured_caches_by_default(tmp_path, tables, monkeypatch):
    monkeypatch.setenv("HPS_CACHE_BACKEND", "reference")
    with HPS(ps_config(tables, DIMS, hit_rate_threshold=1.0)) as hps:
        assert hps.front_cache("m", "users") is not None
        hps.lookup(np.arange(10), "m", "users")
        cache_stats = hps.stats()["m"]["users"]["cache"][0]
        assert cache_stats["keys"] == 10 and cache_stats["type"] == "dynamic"
    with HPS(ps_config(tables, DIMS, gpucache=False)) as hps:
        assert hps.front_cache("m", "users") is None
