"""HPS, the lookup runtime: start-up loading, the lookup flow, updates, bad input, the
front-cache seam, thread safety, and the whole hierarchy against a dict model."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest
from helpers.cli import run_hps
from helpers.hierarchy_machine import HierarchyMachine
from helpers.runtime_configs import make_tables, ps_config, rocks_db
from hps_cli.runtime import HPS
from hps_cli.runtime.errors import ConfigError, InvalidInputError, NotFoundError, OutputExistsError
from hps_cli.runtime.persistent.rocksdb_families import open_db, read_table_record
from hps_cli.runtime.seams import FinishedQuery
from hps_cli.runtime.table import TableReader, write_table
from hps_cli.runtime.table.synthetic import synthetic_vectors, write_synthetic_table
from hypothesis import HealthCheck, settings


@pytest.fixture
def two_tables(tmp_path):
    tables = make_tables(tmp_path, {"users": (500, 8), "items": (300, 4)})
    return tmp_path, tables, {"users": 8, "items": 4}


def test_importing_the_runtime_loads_no_backend_client():
    code = (
        "import hps_cli.runtime as r; r.HPS; r.TableTiers\n"
        "import hps_cli.runtime.volatile.redis_cluster, hps_cli.runtime.persistent.rocksdb_tier\n"
        "import sys; print(','.join(sorted(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    roots = {m.split(".")[0] for m in out.stdout.strip().split(",")}
    assert not roots & {"rocksdict", "redis", "click", "rich", "tensorflow", "pycuda"}


def test_lookup_every_table_through_hash_map_and_rocksdb(two_tables):
    tmp, tables, dims = two_tables
    doc = ps_config(
        tables, dims, defaults={"users": 0.5, "items": -2.0}, persistent=rocks_db(tmp / "db")
    )
    with HPS(doc) as runtime:
        users = np.array([0, 499, 500, -3], dtype=np.int64)
        out = runtime.lookup(users, "m", "users")
        assert out.dtype == np.float32 and out.shape == (4, 8)
        assert np.array_equal(out[:2], synthetic_vectors(users[:2], 8))
        assert (out[2:] == 0.5).all()
        items = np.array([299, 300], dtype=np.int64)
        by_table = runtime.lookup_tables([users, items], "m")
        assert np.array_equal(by_table[0], out)
        assert np.array_equal(by_table[1][0], synthetic_vectors(items[:1], 4)[0])
        assert (by_table[1][1] == -2.0).all()
        flat = runtime.lookup_concatenated(np.concatenate([users, items]), [4, 2], "m")
        assert np.array_equal(flat, np.concatenate([out.ravel(), by_table[1].ravel()]))
        assert runtime.lookup(np.array([], dtype=np.int64), "m", 1).shape == (0, 4)
        counters = runtime.counters("m", "users")
        assert counters["volatile_hits"] == 6 and counters["defaults"] == 6
        assert counters["persistent_hits"] == 0 and counters["lookups"] == 3


def test_each_tier_alone(two_tables):
    tmp, tables, dims = two_tables
    keys = np.array([1, 2, 10**6], dtype=np.int64)
    rocks_only = ps_config(
        tables, dims, volatile={"type": "disabled"}, persistent=rocks_db(tmp / "db")
    )
    with HPS(rocks_only) as runtime:
        assert runtime.table_backend("m", "users").volatile is None
        out = runtime.lookup(keys, "m", "users")
        assert runtime.counters("m", "users")["persistent_hits"] == 2
    with HPS(ps_config(tables, dims)) as runtime:  # hash map only
        assert runtime.table_backend("m", "users").persistent is None
        assert np.array_equal(runtime.lookup(keys, "m", "users"), out)
    assert np.array_equal(out[:2], synthetic_vectors(keys[:2], 8)) and (out[2] == 0).all()


def test_uint32_keys_when_supportlonglong_is_false(tmp_path):
    tables = make_tables(tmp_path, {"t": (100, 4)})
    doc = ps_config(tables, {"t": 4}, supportlonglong=False, persistent=rocks_db(tmp_path / "db"))
    with HPS(doc) as runtime:
        expect = synthetic_vectors(np.array([5, 99]), 4)
        assert np.array_equal(runtime.lookup(np.array([5, 99], dtype=np.uint32), "m", "t"), expect)
        assert np.array_equal(runtime.lookup(np.array([5, 99], dtype=np.int64), "m", "t"), expect)
        with pytest.raises(InvalidInputError, match="fit uint32") as err:
            runtime.lookup(np.array([2**32], dtype=np.int64), "m", "t")
        assert "keys" in err.value.location and "'m'" in err.value.location
        with pytest.raises(InvalidInputError, match="uint32"):
            runtime.lookup(np.array([1], dtype=np.int32), "m", "t")
    db = open_db(tmp_path / "db", read_only=True)
    assert {len(k) for k in db.get_column_family("hps_et.m.t").keys()} == {4}
    db.close()


def test_bad_lookups_raise_typed_errors(two_tables):
    _, tables, dims = two_tables
    with HPS(ps_config(tables, dims, devices=(0, 2))) as runtime:
        keys = np.array([1, 2], dtype=np.int64)
        with pytest.raises(NotFoundError, match="no model 'nope'") as err:
            runtime.lookup(keys, "nope", "users")
        assert err.value.location == "model" and "m" in err.value.hint
        with pytest.raises(NotFoundError, match="no table 'nope'"):
            runtime.lookup(keys, "m", "nope")
        with pytest.raises(NotFoundError, match="no table 5"):
            runtime.lookup(keys, "m", 5)
        with pytest.raises(InvalidInputError, match="int64"):
            runtime.lookup(keys.astype(np.float64), "m", "users")
        with pytest.raises(InvalidInputError, match="int64"):
            runtime.lookup(keys.astype(np.int32), "m", "users")
        with pytest.raises(InvalidInputError, match="1-D"):
            runtime.lookup(keys.reshape(1, 2), "m", "users")
        with pytest.raises(InvalidInputError, match="deployed_device_list"):
            runtime.lookup(keys, "m", "users", device_id=1)
        with pytest.raises(InvalidInputError, match="num_keys"):
            runtime.lookup_concatenated(keys, [1], "m")
        with pytest.raises(InvalidInputError, match="sum"):
            runtime.lookup_concatenated(keys, [1, 2], "m")
        with pytest.raises(InvalidInputError, match="shape"):
            runtime.insert("m", "users", keys, np.zeros((2, 3), np.float32))


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda d: d.update(update_source={"type": "kafka_message_queue"}), "update_source"),
        (lambda d: d["volatile_db"].update(type="disabled"), "every lookup would return default"),
        (lambda d: d["models"][0]["embedding_vecsize_per_table"].__setitem__(1, 5), "dim 5"),
    ],
)
def test_configs_the_runtime_cannot_honour_write_nothing(two_tables, change, match):
    tmp, tables, dims = two_tables
    doc = ps_config(tables, dims)
    change(doc)
    if "persistent_db" not in doc and doc["volatile_db"].get("type") != "disabled":
        doc["persistent_db"] = rocks_db(tmp / "db")
    with pytest.raises(ConfigError, match=match):
        HPS(doc)
    assert not (tmp / "db").exists()  # validation comes before any write


def test_uint32_config_with_keys_beyond_uint32_is_refused(tmp_path):
    keys = np.array([1, 2**33], dtype=np.int64)
    write_table(tmp_path / "t", keys, np.zeros((2, 2), np.float32))
    doc = ps_config(
        {"t": tmp_path / "t"}, {"t": 2}, supportlonglong=False, persistent=rocks_db(tmp_path / "db")
    )
    with pytest.raises(ConfigError, match="uint32"):
        HPS(doc)
    assert not (tmp_path / "db").exists()


def test_read_only_database_errors(two_tables):
    tmp, tables, dims = two_tables
    doc = ps_config(tables, dims, persistent=rocks_db(tmp / "db", read_only=True))
    with pytest.raises(ConfigError, match="no RocksDB database"):
        HPS(doc)
    only_users = ps_config(
        {"users": tables["users"]}, {"users": 8}, persistent=rocks_db(tmp / "db")
    )
    HPS(only_users).close()
    with pytest.raises(ConfigError, match="no column family 'hps_et.m.items'"):
        HPS(doc)
    holder = subprocess.Popen(  # a read-write user in another process holds the lock
        [
            sys.executable,
            "-c",
            "import sys\n"
            "from hps_cli.runtime.persistent.rocksdb_tier import RocksDbStore\n"
            "store = RocksDbStore(sys.argv[1])\n"
            "print('ready', flush=True)\n"
            "sys.stdin.read()\n",
            str(tmp / "db"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(OutputExistsError, match="locked"):
            HPS(ps_config(tables, dims, persistent=rocks_db(tmp / "db")))
    finally:
        holder.stdin.close()
        holder.wait(60)


def test_runtimes_of_one_process_share_a_database_and_a_reload_does_not_mix(two_tables):
    """Two runtimes of one process over one RocksDB database (hps serve gives every lookup
    model its own): the second shares the open database. When the second reloads a changed
    table (its family's content replaced in place), the first keeps reading the version it
    loaded (a snapshot) and refuses updates of it, while the second's updates go through; the
    last one closes the database."""
    tmp, tables, dims = two_tables
    doc = ps_config(tables, dims, volatile={}, persistent=rocks_db(tmp / "db"))  # RocksDB only
    keys = np.arange(0, 500, 7, dtype=np.int64)
    first = HPS(doc)
    try:
        np.testing.assert_array_equal(first.lookup(keys, "m", "users"), synthetic_vectors(keys, 8))
        write_synthetic_table(tables["users"], 500, 8, shuffle=True, seed=1, overwrite=True)
        with HPS(doc) as second:  # the table changed: its family is rebuilt
            np.testing.assert_array_equal(
                second.lookup(keys, "m", "users"), synthetic_vectors(keys, 8, seed=1)
            )
            np.testing.assert_array_equal(
                first.lookup(keys, "m", "users"), synthetic_vectors(keys, 8)
            )
            row = np.full((1, 8), 0.5, np.float32)
            with pytest.raises(InvalidInputError, match="reloaded by another runtime"):
                first.insert("m", "users", keys[:1], row)
            second.insert("m", "users", keys[:1], row)
            np.testing.assert_array_equal(second.lookup(keys[:1], "m", "users"), row)
            np.testing.assert_array_equal(
                first.lookup(keys[:1], "m", "users"), synthetic_vectors(keys[:1], 8)
            )
        np.testing.assert_array_equal(  # the first still holds the database and its version
            first.lookup(keys, "m", "items")[:1], synthetic_vectors(keys[:1], 4)
        )
        np.testing.assert_array_equal(first.lookup(keys, "m", "users"), synthetic_vectors(keys, 8))
    finally:
        first.close()
    with HPS(doc) as third:  # reopened after the last user closed it; the update replayed
        want = synthetic_vectors(keys, 8, seed=1)
        want[0] = 0.5
        np.testing.assert_array_equal(third.lookup(keys, "m", "users"), want)


def test_a_database_written_by_hps_convert_is_served_unchanged(tmp_path):
    tables = make_tables(tmp_path, {"items": (2000, 16)}, with_meta=True)
    db = tmp_path / "db"
    res = run_hps(
        "convert",
        str(tables["items"]),
        str(db),
        "--to",
        "rocksdb",
        "--model",
        "m",
        "--table",
        "items",
    )
    assert res.returncode == 0, res.stderr

    def sst_files():
        return {p.name: p.stat().st_mtime_ns for p in db.glob("*.sst")}

    before = sst_files()
    keys = np.arange(-5, 2000, dtype=np.int64)
    expected = synthetic_vectors(keys, 16)
    expected[:5] = 0
    for read_only in (False, True):
        doc = ps_config(
            tables,
            {"items": 16},
            volatile={"type": "disabled"},
            persistent=rocks_db(db, read_only=read_only),
        )
        with HPS(doc) as runtime:
            assert np.array_equal(runtime.lookup(keys, "m", "items"), expected)
            if read_only:
                with pytest.raises(InvalidInputError, match="read-only"):
                    runtime.insert("m", "items", keys[:1], expected[:1])
        assert sst_files() == before  # not rewritten (HPS rewrites every key at every start)


def test_restart_skips_an_unchanged_table_and_reloads_a_changed_one(tmp_path):
    tables = make_tables(tmp_path, {"t": (400, 4)})
    db = tmp_path / "db"
    doc = ps_config(tables, {"t": 4}, persistent=rocks_db(db))
    HPS(doc).close()
    first = {p.name for p in db.glob("*.sst")}
    with HPS(doc) as runtime:
        runtime.insert("m", "t", np.array([10**6]), np.ones((1, 4), np.float32))
    assert {p.name for p in db.glob("*.sst")} >= first
    with HPS(doc) as runtime:  # unchanged table: online updates survive the restart
        assert (runtime.lookup(np.array([10**6]), "m", "t") == 1).all()
    make_tables(tmp_path / "v2", {"t": (50, 4)}, first_key=7000)
    shutil.rmtree(tables["t"])
    shutil.copytree(tmp_path / "v2" / "t", tables["t"])
    with HPS(doc) as runtime:  # changed table: the family is replaced
        out = runtime.lookup(np.array([0, 10**6, 7000]), "m", "t")
        assert (out[:2] == 0).all() and np.array_equal(
            out[2], synthetic_vectors(np.array([7000]), 4)[0]
        )
    db_handle = open_db(db, read_only=True)
    assert read_table_record(db_handle, "hps_et.m.t")["num_keys"] == 50
    db_handle.close()


def test_initial_cache_rate_loads_the_hottest_rows(tmp_path):
    tables = make_tables(tmp_path, {"hot": (1000, 4)}, with_meta=True)
    with TableReader(tables["hot"]) as reader:
        hottest = np.array(reader.keys())[np.argsort(-np.array(reader.meta()), kind="stable")][:300]
    doc = ps_config(
        tables,
        {"hot": 4},
        volatile={"type": "hash_map", "num_partitions": 4, "initial_cache_rate": 0.3},
    )
    with HPS(doc) as runtime:
        volatile = runtime.table_backend("m", "hot").volatile
        assert len(volatile) == 300 and volatile.contains(hottest).all()
    capped = ps_config(
        tables,
        {"hot": 4},
        volatile={"type": "hash_map", "num_partitions": 4, "overflow_margin": 20},
    )
    with HPS(capped) as runtime:  # the margin caps the load per partition, hottest first
        volatile = runtime.table_backend("m", "hot").volatile
        assert (volatile.partition_sizes() == 20).all() and volatile.evictions == 0


def test_initial_cache_rate_without_meta_takes_rows_in_file_order(tmp_path):
    tables = make_tables(tmp_path, {"t": (100, 4)})
    with TableReader(tables["t"]) as reader:
        first = np.array(reader.keys()[:25])
    doc = ps_config(
        tables,
        {"t": 4},
        volatile={"type": "hash_map", "num_partitions": 2, "initial_cache_rate": 0.25},
        persistent=rocks_db(tmp_path / "db"),
    )
    with HPS(doc) as runtime:
        volatile = runtime.table_backend("m", "t").volatile
        assert sorted(volatile.keys().tolist()) == sorted(first.tolist())
        out = runtime.lookup(np.arange(100), "m", "t")  # the rest comes from RocksDB
        assert np.array_equal(out, synthetic_vectors(np.arange(100), 4))
        assert runtime.counters("m", "t")["persistent_hits"] == 75


@pytest.mark.parametrize("write_back", [True, False])
def test_cache_missed_embeddings_writes_persistent_hits_back(tmp_path, write_back):
    tables = make_tables(tmp_path, {"t": (100, 4)})
    doc = ps_config(
        tables,
        {"t": 4},
        persistent=rocks_db(tmp_path / "db"),
        volatile={
            "type": "parallel_hash_map",
            "num_partitions": 2,
            "initial_cache_rate": 0.0,
            "cache_missed_embeddings": write_back,
        },
    )
    with HPS(doc) as runtime:
        keys = np.array([1, 2, 3, 5000], dtype=np.int64)
        first = runtime.lookup(keys, "m", "t")
        second = runtime.lookup(keys, "m", "t")
        assert np.array_equal(first, second)
        counters = runtime.counters("m", "t")
        assert counters["writebacks"] == (3 if write_back else 0)
        assert counters["volatile_hits"] == (3 if write_back else 0)
        # keys no tier holds are not written back (HPS writes their default vectors back)
        assert not runtime.table_backend("m", "t").volatile.contains(np.array([5000]))[0]


def test_insert_and_remove_reach_every_tier(tmp_path):
    tables = make_tables(tmp_path, {"t": (100, 4)})
    doc = ps_config(tables, {"t": 4}, persistent=rocks_db(tmp_path / "db"))
    with HPS(doc) as runtime:
        tiers = runtime.table_backend("m", "t")
        keys = np.array([5, 1000], dtype=np.int64)
        new = np.full((2, 4), 7.0, np.float32)
        runtime.insert("m", "t", keys, new)
        for tier in (tiers.volatile, tiers.persistent):
            out, hit = tier.get(keys)[:2]
            assert hit.all() and (out == 7.0).all()
        runtime.remove("m", "t", np.array([5, 6]))
        for tier in (tiers.volatile, tiers.persistent):
            assert not tier.get(np.array([5, 6]))[1].any()
        assert (runtime.lookup(np.array([5, 6, 1000]), "m", "t")[:2] == 0).all()
        counters = runtime.counters("m", "t")
        assert counters["inserted"] == 2 and counters["removed"] == 2


class DictFrontCache:
    """A small real front cache (a dict) in front of the CPU tiers (a seams.FrontCache)."""

    read_only = False

    def __init__(self, model, table_id, device_id, backend):
        self.device_id, self.backend, self.cached, self.asked = device_id, backend, {}, 0
        self.slots: set[int] = set()

    def launch_query(self, keys, slot):
        self.slots.add(slot)
        return FinishedQuery(self._rows(keys))

    def _rows(self, keys):
        miss = list(dict.fromkeys(k for k in keys.tolist() if k not in self.cached))
        if miss:
            for k, v in zip(miss, self.backend.fetch(np.array(miss, dtype=np.int64))):
                self.cached[k] = v
        self.asked += keys.size
        return (
            np.stack([self.cached[k] for k in keys.tolist()])
            if keys.size
            else np.empty((0, self.backend.dim), np.float32)
        )

    def update(self, keys, vectors):
        for k, v in zip(keys.tolist(), vectors):
            if k in self.cached:
                self.cached[k] = v

    def remove(self, keys):
        for k in keys.tolist():
            self.cached.pop(k, None)

    def stats(self):
        return {"keys": self.asked}

    def occupancy(self):
        return len(self.cached)

    def close(self):
        self.cached.clear()


class DictCacheFactory:
    """A seams.CacheFactory: DictFrontCaches for table 0, none for the others."""

    def __init__(self):
        self.made: list[DictFrontCache] = []
        self.closed = False

    def __call__(self, model_cfg, table, device_id, backend):
        assert backend.dim == table.dim == model_cfg.embedding_vecsize_per_table[table.index]
        if table.index == 1:
            return None  # no front cache for this table
        self.made.append(DictFrontCache(model_cfg, table.index, device_id, backend))
        return self.made[-1]

    def holds_whole_table(self, model_cfg, table):
        return False

    def close(self):
        self.closed = True


def test_front_cache_seam(two_tables):
    _, tables, dims = two_tables
    factory = DictCacheFactory()
    made = factory.made

    with HPS(ps_config(tables, dims, devices=(0, 3)), cache_factory=factory) as runtime:
        assert [c.device_id for c in made] == [0, 3]
        keys = np.array([1, 2, 1], dtype=np.int64)
        out = runtime.lookup(keys, "m", "users")  # default device: the last deployed (3)
        assert made[1].asked == 3 and made[0].asked == 0
        assert np.array_equal(out, synthetic_vectors(keys, 8))
        assert runtime.counters("m", "users")["keys"] == 2  # only the misses reached the tiers
        runtime.lookup(keys, "m", "users", device_id=0)
        assert made[0].asked == 3
        assert runtime.front_cache("m", "items") is None
        runtime.lookup(np.array([4]), "m", "items")
        assert runtime.counters("m", "items")["keys"] == 1
        runtime.insert("m", "users", np.array([1]), np.full((1, 8), 3.0, np.float32))
        assert (runtime.lookup(np.array([1]), "m", "users") == 3.0).all()
        runtime.remove("m", "users", np.array([1]))
        assert (runtime.lookup(np.array([1]), "m", "users", device_id=0) == 0).all()
        assert runtime.stats()["m"]["users"]["latency"]["count"] == 4
        assert runtime.stats()["m"]["users"]["cache"] == {0: {"keys": 4}, 3: {"keys": 4}}
        assert len(made[0].slots) == 1  # a worker buffer of the pool of model m on device 0
        assert runtime.worker_pool("m", 0) is not runtime.worker_pool("m", 3)
    assert factory.closed and not made[0].cached  # HPS.close closed the caches and factory


def test_stats_report_counters_and_latency_percentiles(two_tables):
    _, tables, dims = two_tables
    with HPS(ps_config(tables, dims)) as runtime:
        for _ in range(10):
            runtime.lookup(np.arange(50), "m", "users")
        stats = runtime.stats()["m"]["users"]
        assert stats["counters"]["keys"] == 500 and stats["counters"]["volatile_hits"] == 500
        latency = stats["latency"]
        assert latency["count"] == 10 and 0 < latency["p50_s"] <= latency["p99_s"]
        assert (
            latency["p99_s"] <= latency["max_s"] + 1e-12 and stats["fetch_latency"]["count"] == 10
        )


def test_concurrent_lookups_and_updates_never_return_a_wrong_vector(tmp_path):
    tables = make_tables(tmp_path, {"t": (2000, 4)})
    doc = ps_config(
        tables,
        {"t": 4},
        persistent=rocks_db(tmp_path / "db"),
        volatile={
            "type": "parallel_hash_map",
            "num_partitions": 4,
            "overflow_margin": 100,
            "initial_cache_rate": 0.2,
            "cache_missed_embeddings": True,
            "overflow_policy": "evict_oldest",
        },
    )
    errors: list[str] = []
    stop = threading.Event()
    with HPS(doc) as runtime:

        def reader(seed):
            rng = np.random.default_rng(seed)
            while not stop.is_set():
                keys = rng.integers(0, 2000, 300)
                out = runtime.lookup(keys, "m", "t")
                original = synthetic_vectors(keys, 4)
                updated = np.repeat(keys[:, None].astype(np.float32), 4, axis=1)
                ok = (out == original).all(axis=1) | (out == updated).all(axis=1)
                if not ok.all():
                    errors.append(f"wrong vectors for keys {keys[~ok][:5]}")
                    return

        threads = [threading.Thread(target=reader, args=(s,)) for s in range(3)]
        for t in threads:
            t.start()
        rng = np.random.default_rng(99)
        for _ in range(30):
            keys = rng.choice(2000, 100, replace=False)
            runtime.insert("m", "t", keys, np.repeat(keys[:, None].astype(np.float32), 4, axis=1))
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors


# ---------------------------------------------------------------------------------------------
# Stateful: the whole hierarchy (hash map with eviction → RocksDB → default) against a dict.


TestHierarchyMachine = HierarchyMachine.TestCase
TestHierarchyMachine.settings = settings(
    max_examples=15,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
