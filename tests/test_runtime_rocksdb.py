"""The persistent tier on real RocksDB files: HPS's layout, atomic loads, skip-by-checksum,
read-only mode, locks, and random update sequences against a dict model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers.runtime_configs import ps_config, rocks_db
from hps_cli.runtime import HPS
from hps_cli.runtime.errors import ConfigError, NotFoundError, OutputExistsError
from hps_cli.runtime.persistent.rocksdb_families import (
    open_db,
    read_table_record,
    write_table_record,
)
from hps_cli.runtime.persistent.rocksdb_tier import RocksDbStore
from hps_cli.runtime.raw_keys import key_bytes, order_key
from hps_cli.runtime.startup_load import table_checksum
from hps_cli.runtime.table import TableReader, write_table
from hps_cli.runtime.table.synthetic import synthetic_vectors, write_synthetic_table
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule

TAG = "hps_et.m.t"


def _load(store: RocksDbStore, table: Path, tag: str = TAG) -> None:
    with TableReader(table) as reader:
        store.load_table(tag, reader, table_checksum(reader))


def test_order_key_is_the_bytewise_order(rng):
    for width, keys in (
        (64, rng.integers(-(2**63), 2**63 - 1, 500, dtype=np.int64)),
        (32, rng.integers(0, 2**32 - 1, 500)),
    ):
        by_bytes = sorted(range(keys.size), key=lambda i: key_bytes(keys[i : i + 1], width)[0])
        assert np.array_equal(np.argsort(order_key(keys, width), kind="stable"), by_bytes)


def test_load_then_lookup_in_hps_layout(tmp_path):
    write_synthetic_table(tmp_path / "t", 3000, 8, shuffle=True, first_key=-1000)
    store = RocksDbStore(tmp_path / "db")
    _load(store, tmp_path / "t")
    table = store.table(TAG, 8)
    query = np.array([-1000, 0, 1999, 2000, -1001, 5], dtype=np.int64)
    out, hit = table.get(query)
    assert hit.tolist() == [True, True, True, False, False, True]
    assert np.array_equal(out[hit], synthetic_vectors(query[hit], 8))
    record = store.record(TAG)
    assert record["complete"] and record["num_keys"] == 3000 and record["dim"] == 8
    store.close()
    # HPS's layout, read with plain rocksdict: raw little-endian key → raw float32 vector
    db = open_db(tmp_path / "db", read_only=True)
    raw = db.get_column_family(TAG)[np.int64(7).tobytes()]
    assert np.array_equal(np.frombuffer(raw, "<f4"), synthetic_vectors(np.array([7]), 8)[0])
    assert sorted(db.list_cf(str(tmp_path / "db"))) == ["default", TAG]
    db.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db", "t"]  # no staging left behind


def test_uint32_keys_are_stored_in_four_bytes(tmp_path):
    keys = np.array([0, 1, 2**32 - 2, 77], dtype=np.int64)
    write_table(tmp_path / "t", keys, synthetic_vectors(keys, 4))
    store = RocksDbStore(tmp_path / "db", key_width=32)
    _load(store, tmp_path / "t")
    out, hit = store.table(TAG, 4).get(np.array([2**32 - 2, 3], dtype=np.int64))
    assert hit.tolist() == [True, False]
    assert np.array_equal(out[0], synthetic_vectors(keys[2:3], 4)[0])
    cf = store.db.get_column_family(TAG)
    assert all(len(k) == 4 for k in cf.keys())
    del cf
    store.close()
    doc = ps_config({"t": tmp_path / "t"}, {"t": 4}, persistent=rocks_db(tmp_path / "db"))
    with pytest.raises(ConfigError, match="4-byte keys"):  # supportlonglong true: 8-byte keys
        HPS(doc)


def test_the_last_row_of_a_repeated_key_wins(tmp_path):
    keys = np.array([5, 9, 5, 3, 5], dtype=np.int64)
    vectors = np.arange(10, dtype=np.float32).reshape(5, 2)
    write_table(tmp_path / "t", keys, vectors)
    store = RocksDbStore(tmp_path / "db")
    _load(store, tmp_path / "t")
    out, hit = store.table(TAG, 2).get(np.array([5, 9, 3]))
    assert hit.all() and np.array_equal(out, vectors[[4, 1, 3]])
    assert store.record(TAG)["num_keys"] == 3
    store.close()


def test_a_changed_table_replaces_the_family_and_an_unchanged_one_is_current(tmp_path):
    write_synthetic_table(tmp_path / "t", 1000, 4)
    store = RocksDbStore(tmp_path / "db")
    with TableReader(tmp_path / "t") as reader:
        checksum = table_checksum(reader)
    _load(store, tmp_path / "t")
    assert store.state(TAG).holds_table_file(checksum, 4)
    assert not store.state(TAG).holds_table_file(checksum, 8)
    write_synthetic_table(tmp_path / "t", 10, 4, first_key=5000, overwrite=True)
    with TableReader(tmp_path / "t") as reader:
        assert not store.state(TAG).holds_table_file(table_checksum(reader), 4)
    _load(store, tmp_path / "t")
    out, hit = store.table(TAG, 4).get(np.array([0, 999, 5000, 5009]))
    assert hit.tolist() == [False, False, True, True]  # old rows are gone, not merged
    store.close()


def test_an_interrupted_swap_is_not_current(tmp_path):
    write_synthetic_table(tmp_path / "t", 100, 4)
    store = RocksDbStore(tmp_path / "db")
    _load(store, tmp_path / "t")
    record = store.record(TAG)
    write_table_record(store.db, TAG, {**record, "complete": False})
    assert store.state(TAG).interrupted
    assert not store.state(TAG).holds_table_file(record["checksum"], 4)
    store.close()


def test_checksum_without_a_sidecar_matches_the_sidecar(tmp_path):
    write_synthetic_table(tmp_path / "t", 500, 4, with_meta=True)
    with TableReader(tmp_path / "t") as reader:
        from_sidecar = table_checksum(reader)
    (tmp_path / "t" / "table.json").unlink()
    with TableReader(tmp_path / "t") as reader:
        assert reader.sidecar is None
        assert table_checksum(reader) == from_sidecar


def test_updates_persist_across_reopening(tmp_path):
    write_synthetic_table(tmp_path / "t", 100, 4)
    store = RocksDbStore(tmp_path / "db", max_batch_size=7)
    _load(store, tmp_path / "t")
    table = store.table(TAG, 4)
    new = np.arange(1000, 1030, dtype=np.int64)
    table.insert(new, np.ones((30, 4), np.float32))
    table.remove(np.arange(0, 50))
    store.close()
    store = RocksDbStore(tmp_path / "db", read_only=True)
    out, hit = store.table(TAG, 4).get(np.concatenate([np.arange(100), new]))
    assert hit.tolist() == [False] * 50 + [True] * 80
    assert (out[100:] == 1).all()
    store.close()


def test_read_only_missing_database_and_lock_errors(tmp_path):
    with pytest.raises(NotFoundError, match="no RocksDB database"):
        RocksDbStore(tmp_path / "missing", read_only=True)
    assert not (tmp_path / "missing").exists()
    writer = RocksDbStore(tmp_path / "db")
    with pytest.raises(OutputExistsError, match="locked"):
        RocksDbStore(tmp_path / "db")
    reader = RocksDbStore(tmp_path / "db", read_only=True)  # readers share a locked database
    with pytest.raises(NotFoundError, match="no column family"):
        reader.table(TAG, 4)
    reader.close()
    writer.close()


def test_a_shared_store_counts_its_users_and_a_pinned_table_survives_a_replacement(
    tmp_path, monkeypatch
):
    """open_rocksdb gives one process one store per folder (however the path is spelled);
    release closes it with the last user. A table served when its family is replaced keeps the
    old rows (a snapshot), the store's next table reads the new ones, and closing the store
    releases the snapshot's hold on the lock."""
    from hps_cli.runtime.persistent.rocksdb_shared import open_rocksdb, release_rocksdb

    write_synthetic_table(tmp_path / "t", 300, 4, seed=0)
    first = open_rocksdb(tmp_path / "db", read_only=False, key_width=64)
    monkeypatch.chdir(tmp_path)
    second = open_rocksdb("db", read_only=False, key_width=64)
    assert second is first
    with pytest.raises(ConfigError, match="32-bit keys|64-bit keys"):
        open_rocksdb("db", read_only=False, key_width=32)
    _load(first, tmp_path / "t")
    old = first.table(TAG, 4)
    keys = np.arange(0, 300, 3, dtype=np.int64)
    write_synthetic_table(tmp_path / "t", 300, 4, seed=1, overwrite=True)
    _load(first, tmp_path / "t")
    assert old.pinned
    np.testing.assert_array_equal(old.get(keys)[0], synthetic_vectors(keys, 4, seed=0))
    new = first.table(TAG, 4)
    assert new is not old and not new.pinned
    np.testing.assert_array_equal(new.get(keys)[0], synthetic_vectors(keys, 4, seed=1))
    missing = np.array([1000], np.int64)
    assert not old.get(missing)[1].any()
    release_rocksdb(second)
    np.testing.assert_array_equal(old.get(keys)[0], synthetic_vectors(keys, 4, seed=0))
    release_rocksdb(first)  # the last user: closed, the pinned table detached with it
    RocksDbStore(tmp_path / "db").close()  # the lock is free


def test_dim_mismatch_of_an_existing_family_is_a_config_error(tmp_path):
    write_synthetic_table(tmp_path / "t", 10, 4)
    store = RocksDbStore(tmp_path / "db")
    _load(store, tmp_path / "t")
    store.close()
    write_synthetic_table(tmp_path / "t16", 10, 16)
    read_only = rocks_db(tmp_path / "db", read_only=True)  # served as it is: its dim must fit
    doc = ps_config({"t": tmp_path / "t16"}, {"t": 16}, persistent=read_only)
    with pytest.raises(ConfigError, match="vectors of 4 floats") as raised:
        HPS(doc)
    assert "$.models[0].embedding_vecsize_per_table[0]" in [
        i.json_path for i in raised.value.issues
    ]


def test_record_is_what_convert_writes(tmp_path):
    """The bookkeeping record is shared with `hps convert` (rocksdb_families)."""
    write_synthetic_table(tmp_path / "t", 10, 4)
    store = RocksDbStore(tmp_path / "db")
    _load(store, tmp_path / "t")
    assert read_table_record(store.db, TAG) == {
        "checksum": store.record(TAG)["checksum"],
        "num_keys": 10,
        "dim": 4,
        "complete": True,
    }
    store.close()


# ---------------------------------------------------------------------------------------------
# Stateful: random insert / remove / lookup sequences against a dict model, on a real database.


class RocksDbMachine(RuleBasedStateMachine):
    @initialize(width=st.sampled_from([32, 64]), batch=st.integers(1, 6))
    def setup(self, width, batch):
        import tempfile

        self.dir = Path(tempfile.mkdtemp(prefix="hps-rocks-sm-"))
        self.width = width
        self.store = RocksDbStore(
            self.dir / "db",
            key_width=width,
            max_batch_size=batch,
            block_cache_bytes=1 << 20,
            row_cache_bytes=1 << 20,
        )
        self.store.db.create_column_family(TAG, self.store.family_options())
        self.table = self.store.table(TAG, 3)
        self.model: dict[int, np.ndarray] = {}
        self.version = 0

    def keys(self, values):
        return np.array([v % 2**32 if self.width == 32 else v for v in values], dtype=np.int64)

    @rule(values=st.lists(st.integers(-30, 30), min_size=1, max_size=15))
    def insert(self, values):
        self.version += 1
        keys = self.keys(values)
        vectors = synthetic_vectors(keys, 3, seed=self.version)
        self.table.insert(keys, vectors)
        for k, v in zip(keys.tolist(), vectors):
            self.model[k] = v  # writes apply in order: the last of a repeated key wins

    @rule(values=st.lists(st.integers(-30, 30), min_size=1, max_size=15))
    def remove(self, values):
        keys = self.keys(values)
        self.table.remove(keys)
        for k in keys.tolist():
            self.model.pop(k, None)

    @rule(values=st.lists(st.integers(-30, 30), min_size=0, max_size=20))
    def lookup(self, values):
        keys = self.keys(values)
        out, hit = self.table.get(keys)
        for k, h, row in zip(keys.tolist(), hit, out):
            assert h == (k in self.model)
            if h:
                assert np.array_equal(row, self.model[k])

    @rule()
    def reopen(self):
        self.store.close()
        self.store = RocksDbStore(
            self.dir / "db",
            key_width=self.width,
            max_batch_size=3,
            block_cache_bytes=1 << 20,
            row_cache_bytes=1 << 20,
        )
        self.table = self.store.table(TAG, 3)

    def teardown(self):
        if hasattr(self, "store"):
            import shutil

            self.store.close()
            shutil.rmtree(self.dir, ignore_errors=True)


TestRocksDbMachine = RocksDbMachine.TestCase
TestRocksDbMachine.settings = settings(
    max_examples=25,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
