"""Table fusion (fuse_embedding_table, runtime/config/fusion.py): HPS's grouping and names, lookups
equal to the unfused ones through every lookup call and every tier and cache kind, HPS's storage
names in RocksDB and Redis, and fused tables whose keys overlap refused before anything is
written."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers.runtime_configs import make_tables, ps_config, rocks_db
from hps_cli.runtime import HPS
from hps_cli.runtime.config import load_config, validate_config_file
from hps_cli.runtime.config.fusion import storage_tables
from hps_cli.runtime.errors import ConfigError
from hps_cli.runtime.persistent.rocksdb_families import list_families, open_db, read_table_record
from hps_cli.runtime.table.synthetic import synthetic_vectors

# name: (rows, dim, first key): keys apart, dims 4 and 8 mixed in table order
SPECS = {
    "a": (300, 8, 0),
    "b": (200, 4, 10_000),
    "c": (250, 8, 20_000),
    "d": (100, 16, 30_000),
    "e": (150, 4, 40_000),
}
DIMS = {name: dim for name, (_, dim, _) in SPECS.items()}


@pytest.fixture
def tables(tmp_path):
    out = {}
    for name, (rows, dim, first) in SPECS.items():
        out.update(make_tables(tmp_path, {name: (rows, dim)}, first_key=first, seed=len(out)))
    return out


def _doc(tables, fused: bool, **extra) -> dict:
    doc = ps_config(tables, DIMS, defaults={n: 0.25 for n in tables}, **extra)
    doc["fuse_embedding_table"] = fused
    return doc


def _keys(rng) -> list[np.ndarray]:
    """Per table: keys of the table (repeated ones too) and keys no table holds."""
    out = []
    for rows, _, first in SPECS.values():
        own = rng.integers(first, first + rows, 40)
        out.append(np.concatenate([own, [first + rows + 5, 10**9 + first, own[0]]]))
    return out


def test_grouping_and_names_are_hps_s(tables):
    config = load_config(_doc(tables, True, num_of_worker_buffer_in_pool=2))
    model = config.model("m")
    groups = storage_tables(model)
    assert [(g.name, g.dim, g.table_ids) for g in groups] == [
        ("fused_embedding0", 4, (1, 4)),
        ("fused_embedding1", 8, (0, 2)),
        ("fused_embedding2", 16, (3,)),
    ]
    assert [g.tag for g in groups][0] == "hps_et.m.fused_embedding0"
    assert model.num_of_worker_buffer_in_pool == 5  # HPS: max(2, number of tables)
    opted_out = _doc(tables, True)
    opted_out["models"][0]["fuse_embedding_table"] = False
    model = load_config(opted_out).model("m")
    assert [g.name for g in storage_tables(model)] == list(SPECS)
    assert model.num_of_worker_buffer_in_pool == 1
    assert not load_config(_doc(tables, False)).model("m").fuse_embedding_table


def _lookups(hps: HPS, keys: list[np.ndarray]) -> tuple[list, list, np.ndarray]:
    single = [hps.lookup(k, "m", name) for k, name in zip(keys, SPECS)]
    together = hps.lookup_tables(keys, "m")
    flat = hps.lookup_concatenated(np.concatenate(keys), [k.size for k in keys], "m")
    return single, together, flat


@pytest.fixture(params=["reference", pytest.param("gpu", marks=pytest.mark.gpu)])
def backend(request, monkeypatch):
    monkeypatch.setenv("HPS_CACHE_BACKEND", request.param)
    return request.param


@pytest.mark.parametrize(
    "setup",
    [
        {},  # hash map + RocksDB, no cache
        {"gpucache": True, "hit_rate_threshold": 1.0, "gpucacheper": 0.3},
        {"gpucache": True, "embedding_cache_type": "static"},
        {"gpucache": True, "embedding_cache_type": "uvm", "gpucacheper": 0.5},
    ],
    ids=["cpu-tiers", "dynamic", "static", "uvm"],
)
def test_fused_lookups_equal_unfused_ones(tmp_path, tables, backend, setup):
    rng = np.random.default_rng(7)
    rounds = [_keys(rng) for _ in range(3)]
    answers = {}
    for fused in (False, True):
        doc = _doc(tables, fused, persistent=rocks_db(tmp_path / f"db{fused}"), **setup)
        with HPS(doc) as hps:
            answers[fused] = [_lookups(hps, keys) for keys in rounds]
    for keys, plain, fused in zip(rounds, answers[False], answers[True]):
        for t, name in enumerate(SPECS):
            expect = synthetic_vectors(keys[t], DIMS[name], seed=t)
            expect[-3:-1] = 0.25  # keys no table holds: the default
            np.testing.assert_array_equal(plain[0][t], expect)
            np.testing.assert_array_equal(fused[0][t], plain[0][t])
            np.testing.assert_array_equal(fused[1][t], plain[1][t])
        np.testing.assert_array_equal(fused[2], plain[2])


def test_one_query_per_fused_table_in_lookup_tables(tables, monkeypatch):
    monkeypatch.setenv("HPS_CACHE_BACKEND", "reference")
    doc = _doc(tables, True, gpucache=True, hit_rate_threshold=1.0)
    with HPS(doc) as hps:
        keys = _keys(np.random.default_rng(1))
        hps.lookup_tables(keys, "m")
        fronts = {id(hps.front_cache("m", n)): hps.front_cache("m", n) for n in SPECS}
        assert len(fronts) == 3 and hps.front_cache("m", "b") is hps.front_cache("m", "e")
        assert [f.stats()["lookups"] for f in fronts.values()] == [1, 1, 1]
        assert hps.front_cache("m", "b").stats()["keys"] == keys[1].size + keys[4].size
        assert hps.worker_pool("m").size == 5
        assert set(hps.stats()["m"]) == {"fused_embedding0", "fused_embedding1", "fused_embedding2"}


def test_rocksdb_holds_hps_s_fused_families(tmp_path, tables):
    db = tmp_path / "db"
    with HPS(_doc(tables, True, persistent=rocks_db(db))) as hps:
        hps.insert("m", "b", np.array([10_001]), np.full((1, 4), 3.0, np.float32))
        # a member table's update lands in its fused table
        np.testing.assert_array_equal(hps.lookup(np.array([10_001]), "m", "b"), [[3.0] * 4])
    families = set(list_families(db)) - {"default"}
    assert {f for f in families if f.startswith("hps_et.")} == {
        "hps_et.m.fused_embedding0",
        "hps_et.m.fused_embedding1",
        "hps_et.m.fused_embedding2",
    }
    opened = open_db(db, read_only=True)
    try:
        record = read_table_record(opened, "hps_et.m.fused_embedding0")
    finally:
        opened.close()
    assert record["num_keys"] == SPECS["b"][0] + SPECS["e"][0]
    # the next start finds the fused families current and does not rewrite them (RocksDB
    # alone answers: it still has the update)
    doc = _doc(tables, True, persistent=rocks_db(db), volatile={"type": "disabled"})
    with HPS(doc) as hps:
        np.testing.assert_array_equal(hps.lookup(np.array([10_001]), "m", "b"), [[3.0] * 4])


def test_fused_members_with_different_defaults_take_the_last_one(tables):
    doc = _doc(tables, True)
    doc["models"][0]["default_value_for_each_table"] = [0.0, 1.0, 0.0, 0.0, 2.0]
    with HPS(doc) as hps:
        missing = np.array([10**12])
        assert (hps.lookup(missing, "m", "b") == 2.0).all()  # fused_embedding0: b, e
        assert (hps.lookup(missing, "m", "d") == 0.0).all()


def test_overlapping_keys_of_fused_tables_are_refused_before_any_write(tmp_path):
    tables = make_tables(tmp_path, {"x": (100, 4), "y": (100, 4)})  # both hold keys 0..99
    doc = ps_config(tables, {"x": 4, "y": 4}, persistent=rocks_db(tmp_path / "db"))
    doc["fuse_embedding_table"] = True
    with pytest.raises(ConfigError, match="must not share keys") as err:
        HPS(doc)
    assert "$.models[0].sparse_files[1]" in err.value.location
    assert not (tmp_path / "db").exists()
    path = tmp_path / "ps.json"
    path.write_text(json.dumps(doc))
    result = validate_config_file(path)
    assert [(i.json_path, i.rule) for i in result.errors] == [
        ("$.models[0].sparse_files[1]", "fusion_key_overlap")
    ]
    doc["models"][0]["fuse_embedding_table"] = False  # the model opts out: fine
    with HPS(doc) as hps:
        assert hps.lookup(np.array([5]), "m", "y").shape == (1, 4)


@pytest.mark.redis
def test_redis_holds_hps_s_fused_hashes(tmp_path, tables, redis_cluster):
    vdb = {"type": "redis_cluster", "address": redis_cluster.address, "num_partitions": 5}
    doc = _doc(tables, True, model="fusedredis", volatile=vdb)
    with HPS(doc) as hps:
        keys = _keys(np.random.default_rng(3))
        got = hps.lookup_tables(keys, "fusedredis")
        for t, name in enumerate(SPECS):
            expect = synthetic_vectors(keys[t], DIMS[name], seed=t)
            expect[-3:-1] = 0.25
            np.testing.assert_array_equal(got[t], expect)
    names = set()
    for port in redis_cluster.ports:
        found = redis_cluster.cli(port, "--scan", "--pattern", "hps_et{hps_et.fusedredis.*")
        names |= set(found.split())
    assert "hps_et{hps_et.fusedredis.fused_embedding0/p0}v" in names
    assert not any(".a/" in n or ".b/" in n for n in names)
