"""The Redis Cluster tier against a real local cluster (3 masters), and the hierarchy's
fall-through when a node dies while serving."""

from __future__ import annotations

import itertools
import threading
import time

import numpy as np
import pytest
from helpers.hierarchy_machine import HierarchyMachine
from helpers.runtime_configs import make_tables, ps_config
from hps_cli.runtime.errors import ConfigError, ServiceUnavailableError
from hps_cli.runtime.hashing import partition_of
from hps_cli.runtime.storage_names import redis_hash_names
from hps_cli.runtime.table.synthetic import synthetic_vectors
from hps_cli.runtime.volatile.hash_map import POLICIES
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

pytestmark = pytest.mark.redis

_tags = itertools.count()


def _tag() -> str:
    return f"hps_et.redis_test.t{next(_tags)}_{time.monotonic_ns()}"


@pytest.fixture(scope="module")
def store(redis_cluster):
    from hps_cli.runtime.volatile.redis_cluster import RedisClusterStore

    s = RedisClusterStore(redis_cluster.address, max_batch_size=50)
    yield s
    s.close()


def test_hps_key_layout(store, redis_cluster):
    import redis

    tag = _tag()
    table = store.table(tag, 4, num_partitions=6)
    keys = np.array([3, -7, 2**40, 12345], dtype=np.int64)
    table.insert(keys, synthetic_vectors(keys, 4))
    client = redis.cluster.RedisCluster(host="127.0.0.1", port=redis_cluster.ports[0])
    for key, part in zip(keys, partition_of(keys, 6)):
        values, meta = redis_hash_names(tag, int(part))
        assert values == f"hps_et{{{tag}/p{part}}}v" and meta.endswith("}t")
        raw = client.hget(values, np.int64(key).astype("<i8").tobytes())
        assert np.array_equal(np.frombuffer(raw, "<f4"), synthetic_vectors(np.array([key]), 4)[0])
        assert client.hexists(meta, np.int64(key).astype("<i8").tobytes())
        assert client.keyslot(values) == client.keyslot(meta)  # one slot per partition
    client.close()
    table.clear()


def test_lookup_insert_remove_in_small_batches(store):
    table = store.table(_tag(), 8, num_partitions=5)
    keys = np.arange(-500, 500, dtype=np.int64) * 977
    table.insert(keys, synthetic_vectors(keys, 8))
    query = np.concatenate([keys[::4], keys[:10] + 1])
    out, hit, failed = table.get(query)
    assert not failed.any()
    assert hit.tolist() == [True] * 250 + [False] * 10
    assert np.array_equal(out[:250], synthetic_vectors(keys[::4], 8))
    assert table.remove(keys[:100]) == 100
    assert table.size() == 900
    table.clear()
    assert table.size() == 0


def test_uint32_keys_use_four_bytes(store, redis_cluster):
    import redis

    tag = _tag()
    table = store.table(tag, 2, num_partitions=3, key_width=32)
    keys = np.array([2**32 - 2, 5], dtype=np.int64)
    table.insert(keys, np.ones((2, 2), np.float32))
    client = redis.cluster.RedisCluster(host="127.0.0.1", port=redis_cluster.ports[0])
    part = int(partition_of(keys[:1], 3)[0])
    assert client.hexists(redis_hash_names(tag, part)[0], np.uint32(2**32 - 2).tobytes())
    client.close()
    assert table.get(keys)[1].all()
    table.clear()


@pytest.mark.parametrize("policy", POLICIES)
def test_overflow_evicts_to_the_target(store, policy):
    table = store.table(
        _tag(),
        2,
        num_partitions=2,
        overflow_margin=30,
        overflow_policy=policy,
        overflow_resolution_target=0.5,
    )
    held: set[int] = set()
    rng = np.random.default_rng(3)
    for _ in range(8):
        keys = np.unique(rng.integers(0, 10**6, 25))
        evicted = table.insert(keys, synthetic_vectors(keys, 2))
        held = (held | set(keys.tolist())) - set(evicted.tolist())
        assert (table.partition_sizes() <= 30).all()
    out, hit, _ = table.get(np.array(sorted(held), dtype=np.int64))
    assert hit.all() and table.size() == len(held) and table.evictions > 0
    table.clear()


def test_a_batch_that_fits_keeps_its_held_keys_below_the_resolution_target(store):
    # As in the hash map: 3 of the batch's 6 keys are held, 3 are new; the resolution target
    # (round(6 × 0.3) = 2) must not evict the held keys the batch just updated.
    table = store.table(
        _tag(),
        1,
        num_partitions=1,
        overflow_margin=6,
        overflow_policy="evict_random",
        overflow_resolution_target=0.3,
    )
    table.insert(np.array([0, 1, -1, -2]), np.zeros((4, 1), np.float32))
    batch = np.array([0, 1, -1, 2, 3, -3])
    evicted = table.insert(batch, np.ones((6, 1), np.float32))
    assert evicted.tolist() == [-2]
    out, hit, failed = table.get(batch)
    assert hit.all() and not failed.any() and (out == 1).all()
    table.clear()


def test_evict_least_used_keeps_looked_up_keys(store):
    table = store.table(
        _tag(),
        1,
        num_partitions=1,
        overflow_margin=10,
        overflow_policy="evict_least_used",
        overflow_resolution_target=0.5,
    )
    table.insert(np.arange(10), np.zeros((10, 1), np.float32))
    for _ in range(2):
        table.get(np.arange(5))
    store.drain()  # metadata updates are applied in the background, as in HPS
    evicted = table.insert(np.array([100]), np.zeros((1, 1), np.float32))
    assert sorted(evicted.tolist()) == [5, 6, 7, 8, 9]
    table.clear()


def test_credentials(store, redis_cluster):
    from hps_cli.runtime.volatile.redis_cluster import RedisClusterStore

    for port in redis_cluster.ports:
        redis_cluster.cli(port, "acl", "setuser", "hps_reader", "on", ">s3cret", "~*", "+@all")
    ok = RedisClusterStore(redis_cluster.address, user_name="hps_reader", password="s3cret")
    ok.close()
    with pytest.raises(ServiceUnavailableError, match="credentials|Redis"):
        RedisClusterStore(redis_cluster.address, user_name="hps_reader", password="wrong")


def test_unreachable_cluster_and_bad_settings_at_start_up(tmp_path):
    from hps_cli.runtime.volatile.redis_cluster import RedisClusterStore

    from hps_cli.devtools.redis_cluster import free_cluster_ports

    port = free_cluster_ports(1)[0]
    with pytest.raises(ServiceUnavailableError, match="cannot reach the Redis Cluster"):
        RedisClusterStore(f"127.0.0.1:{port}")
    with pytest.raises(ConfigError, match="host:port"):
        RedisClusterStore("127.0.0.1:notaport")
    with pytest.raises(ConfigError, match="not a file"):
        RedisClusterStore(
            f"127.0.0.1:{port}", enable_tls=True, tls_ca_certificate=str(tmp_path / "missing.crt")
        )


def test_hps_start_up_with_an_unreachable_cluster_is_a_clear_error(tmp_path):
    from hps_cli.runtime import HPS

    from hps_cli.devtools.redis_cluster import free_cluster_ports

    tables = make_tables(tmp_path, {"t": (10, 4)})
    port = free_cluster_ports(1)[0]
    doc = ps_config(
        tables,
        {"t": 4},
        volatile={"type": "redis_cluster", "address": f"127.0.0.1:{port}", "num_partitions": 8},
    )
    with pytest.raises(ServiceUnavailableError) as err:
        HPS(doc)
    assert err.value.location == f"127.0.0.1:{port}"


def test_hps_over_redis_and_rocksdb_loads_and_skips_a_current_table(tmp_path, redis_cluster):
    from hps_cli.runtime import HPS

    tables = make_tables(tmp_path, {"a": (2000, 8), "b": (300, 4)}, with_meta=True)
    model = f"m{next(_tags)}"
    doc = ps_config(
        tables,
        {"a": 8, "b": 4},
        model=model,
        volatile={
            "type": "redis_cluster",
            "address": redis_cluster.address,
            "num_partitions": 8,
            "initial_cache_rate": 0.25,
            "cache_missed_embeddings": True,
        },
        persistent={"type": "rocks_db", "path": str(tmp_path / "db")},
    )
    with HPS(doc) as runtime:
        tiers = runtime.table_backend(model, "a")
        assert tiers.volatile.size() == 500  # initial_cache_rate honoured: the 500 hottest
        keys = np.arange(2000, dtype=np.int64)
        out = runtime.lookup(keys, model, "a")
        assert np.array_equal(out, synthetic_vectors(keys, 8))
        counters = runtime.counters(model, "a")
        assert counters["volatile_hits"] == 500 and counters["persistent_hits"] == 1500
        assert counters["writebacks"] == 1500 and tiers.volatile.size() == 2000
    with HPS(doc) as runtime:  # unchanged tables: Redis and RocksDB are not reloaded
        assert runtime.table_backend(model, "a").volatile.size() == 2000
        runtime.table_backend(model, "a").volatile.clear()
        runtime.table_backend(model, "b").volatile.clear()


def test_a_node_killed_while_serving_falls_through_to_rocksdb(tmp_path, caplog):
    from hps_cli.runtime import HPS

    from hps_cli.devtools.redis_cluster import LocalRedisCluster

    tables = make_tables(tmp_path, {"t": (3000, 8)})
    doc = ps_config(
        tables,
        {"t": 8},
        defaults={"t": -1.0},
        volatile={"type": "redis_cluster", "num_partitions": 12, "cache_missed_embeddings": True},
        persistent={"type": "rocks_db", "path": str(tmp_path / "db")},
    )
    keys = np.arange(-200, 3000, dtype=np.int64)  # 200 keys no tier holds
    expected = synthetic_vectors(keys, 8)
    expected[:200] = -1.0
    with LocalRedisCluster(3) as cluster:
        doc["volatile_db"]["address"] = cluster.address
        with HPS(doc, redis_options={"retry_interval_s": 0.5}) as runtime:
            assert np.array_equal(runtime.lookup(keys, "m", "t"), expected)
            before = runtime.counters("m", "t")
            assert before["volatile_hits"] == 3000 and before["volatile_failures"] == 0

            errors: list[BaseException] = []
            answers = []

            def serve():
                try:
                    for _ in range(20):
                        answers.append(np.array_equal(runtime.lookup(keys, "m", "t"), expected))
                        time.sleep(0.05)
                except BaseException as exc:  # noqa: BLE001 - the test asserts none escapes
                    errors.append(exc)

            worker = threading.Thread(target=serve)
            worker.start()
            time.sleep(0.2)
            cluster.kill(1)
            worker.join()
            deadline = time.monotonic() + 10  # until the cluster itself reports the failure
            while time.monotonic() < deadline:
                answers.append(np.array_equal(runtime.lookup(keys, "m", "t"), expected))
                if runtime.counters("m", "t")["volatile_failures"] >= 2 * 3000:
                    break
                time.sleep(0.2)
            after = runtime.counters("m", "t")
            assert not errors and all(answers)
            assert after["volatile_failures"] > 0
            assert after["persistent_hits"] - before["persistent_hits"] > 0
            assert after["defaults"] == after["lookups"] * 200
            assert "falling through" in caplog.text or "volatile tier failed" in caplog.text


# ---------------------------------------------------------------------------------------------
# Stateful: random insert / lookup / remove / overflow sequences against a dict model.


class RedisMachine(RuleBasedStateMachine):
    store = None  # set by the test below (module-scoped store on the session cluster)

    @initialize(
        policy=st.sampled_from(POLICIES),
        parts=st.integers(1, 3),
        margin=st.one_of(st.none(), st.integers(1, 8)),
    )
    def setup(self, policy, parts, margin):
        self.margin = margin
        self.table = self.store.table(
            _tag(),
            2,
            num_partitions=parts,
            overflow_margin=margin,
            overflow_policy=policy,
            overflow_resolution_target=0.5,
        )
        self.model: dict[int, np.ndarray] = {}
        self.version = 0

    @rule(keys=st.lists(st.integers(-20, 20), min_size=1, max_size=12))
    def insert(self, keys):
        self.version += 1
        keys = np.array(keys, dtype=np.int64)
        vectors = synthetic_vectors(keys, 2, seed=self.version)
        evicted = self.table.insert(keys, vectors)
        for k, v in zip(keys.tolist(), vectors):
            self.model[k] = v
        for k in evicted.tolist():
            del self.model[k]
        batch = set(keys.tolist())
        if self.margin is not None and len(batch) <= self.margin:
            assert not batch & set(evicted.tolist())  # a batch that fits is kept whole

    @rule(keys=st.lists(st.integers(-20, 20), min_size=1, max_size=12))
    def remove(self, keys):
        assert self.table.remove(np.array(keys, dtype=np.int64)) == len(
            {k for k in keys if k in self.model}
        )
        for k in set(keys):
            self.model.pop(k, None)

    @rule(keys=st.lists(st.integers(-20, 20), min_size=1, max_size=12))
    def lookup(self, keys):
        keys = np.array(keys, dtype=np.int64)
        out, hit, failed = self.table.get(keys)
        assert not failed.any()
        for k, h, row in zip(keys.tolist(), hit, out):
            assert h == (k in self.model)
            if h:
                assert np.array_equal(row, self.model[k])

    @invariant()
    def within_margin(self):
        if hasattr(self, "table") and self.margin is not None:
            assert (self.table.partition_sizes() <= self.margin).all()

    def teardown(self):
        if hasattr(self, "table"):
            self.store.drain()
            self.table.clear()


def test_redis_tier_state_machine(store):
    RedisMachine.store = store
    case = RedisMachine.TestCase
    case.settings = settings(
        max_examples=20,
        stateful_step_count=15,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    case().runTest()


class RedisHierarchyMachine(HierarchyMachine):
    """The whole hierarchy with Redis as the volatile tier (Redis → RocksDB → default)."""

    address = ""

    def volatile_block(self) -> dict:
        self.model_name = f"sm{next(_tags)}"  # a table of its own in the shared cluster
        return {"type": "redis_cluster", "address": self.address, "num_node_connections": 2}


def test_redis_hierarchy_state_machine(redis_cluster):
    RedisHierarchyMachine.address = redis_cluster.address
    case = RedisHierarchyMachine.TestCase
    case.settings = settings(
        max_examples=10,
        stateful_step_count=15,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    case().runTest()


def test_a_failed_load_writes_nothing_to_redis(tmp_path, redis_cluster):
    from hps_cli.runtime import HPS

    tables = make_tables(tmp_path, {"good": (50, 4), "bad": (50, 4)})
    model = f"nothing{next(_tags)}"
    doc = ps_config(
        tables,
        {"good": 4, "bad": 6},
        model=model,
        volatile={"type": "redis_cluster", "address": redis_cluster.address},
        persistent={"type": "rocks_db", "path": str(tmp_path / "db")},
    )
    with pytest.raises(ConfigError, match="dim 6"):
        HPS(doc)
    for port in redis_cluster.ports:
        assert redis_cluster.cli(port, "--scan", "--pattern", f"*{model}*") == ""
    assert not (tmp_path / "db").exists()
