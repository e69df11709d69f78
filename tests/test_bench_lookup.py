"""`hps bench lookup`: reports are consistent (percentiles ordered, hit rates summing to 1, counts
matching the keys issued), exact where the answer is known, schema-valid; CSV and plot."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers.runtime_configs import make_tables, ps_config
from hps_cli.runtime.errors import ExitCode, InvalidInputError
from hps_cli.runtime.gpu.placement import WAYS, num_sets_for
from hps_cli.runtime.resources import load_schema
from jsonschema import Draft202012Validator

from hps_cli.bench.lookup_bench import LookupBenchSpec, apportion, run_lookup_bench
from hps_cli.bench.report import LOOKUP_COLUMNS

DIMS = {"a": 16, "b": 8}
TIERS = ("gpu_cache", "volatile", "persistent", "default")


@pytest.fixture(autouse=True)
def _reference_cache(request, monkeypatch):
    """Without a GPU, gpucache tables are served from the CPU tiers: the cached configs here
    measure the cache's NumPy reference instead (gpu-marked tests keep the GPU)."""
    if request.node.get_closest_marker("gpu") is None:
        monkeypatch.setenv("HPS_CACHE_BACKEND", "reference")


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench-lookup")
    return tmp, make_tables(tmp, {"a": (20_000, 16), "b": (5_000, 8)}, with_meta=True)


def _write(tmp, name: str, doc: dict):
    path = tmp / f"{name}.json"
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture(scope="module")
def cached_config(tables):
    """Hash map with half the rows, RocksDB with all, the cache (CPU reference here)."""
    tmp, paths = tables
    return _write(
        tmp,
        "cached",
        ps_config(
            paths,
            DIMS,
            volatile={"type": "parallel_hash_map", "initial_cache_rate": 0.5},
            persistent={"type": "rocks_db", "path": str(tmp / "rdb-cached")},
            gpucache=True,
            gpucacheper=0.1,
            hit_rate_threshold=1.0,
        ),
    )


@pytest.fixture(scope="module")
def rocksdb_only_config(tables):
    tmp, paths = tables
    return _write(
        tmp,
        "rocks",
        ps_config(
            {"a": paths["a"]},
            DIMS,
            volatile={"type": "disabled"},
            persistent={"type": "rocks_db", "path": str(tmp / "rdb-only")},
            gpucache=False,
        ),
    )


def check_consistent(report: dict, tables: int) -> None:
    """Everything that must hold for any lookup report."""
    Draft202012Validator(load_schema("bench_report.schema.json")).validate(report)
    for row in report["rows"]:
        lat = row["latency_us"]
        assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["max"]
        assert lat["min"] <= lat["mean"] <= lat["max"] and lat["count"] == row["lookups"]
        assert row["keys_per_lookup"] == row["batch_size"] * tables
        assert row["keys"] == row["lookups"] * row["keys_per_lookup"]
        assert row["seconds"] == pytest.approx(lat["mean"] * lat["count"] / 1e6, rel=1e-6)
        assert row["throughput"]["keys_per_s"] == pytest.approx(row["keys"] / row["seconds"])
        assert row["throughput"]["lookups_per_s"] == pytest.approx(row["lookups"] / row["seconds"])
        assert len(row["per_table"]) == tables
        for part in [row] + row["per_table"]:
            counts, rates = part["counts"], part["hit_rate"]
            assert sum(counts[t] for t in TIERS) == counts["keys"]
            assert sum(rates.values()) == pytest.approx(1.0, abs=1e-12)
            for t in TIERS:
                assert rates[t] == pytest.approx(counts[t] / counts["keys"])
            assert counts["fetched_keys"] <= counts["keys"]
        for part in row["per_table"]:
            counts = part["counts"]
            assert counts["keys"] == row["lookups"] * row["batch_size"]
        for t in TIERS + ("keys", "cache_misses", "fetched_keys", "async_misses"):
            assert row["counts"][t] == sum(p["counts"][t] for p in row["per_table"])


def test_cached_lookup_report(cached_config):
    report = run_lookup_bench(
        LookupBenchSpec(
            config=cached_config,
            batch_sizes=(32, 512),
            distribution="zipf:1.1",
            warmup=5,
            iterations=40,
        )
    )
    check_consistent(report, tables=2)
    assert [r["batch_size"] for r in report["rows"]] == [32, 512]
    assert [t["cache"]["backend"] for t in report["tables"]] in (["reference"] * 2, ["gpu"] * 2)
    # room for 0.1 x 20,000 = 2,000 rows: 3 % more slots, in whole sets of 8 ways
    capacity = report["tables"][0]["cache"]["capacity"]
    assert capacity == num_sets_for(20_000, 0.1) * WAYS
    assert capacity == 2064
    for row in report["rows"]:
        c = row["counts"]
        # with a cache every key is a hit or a miss, and misses are answered by the tiers
        assert c["gpu_cache"] + c["cache_misses"] == c["keys"]
        assert 0 < c["gpu_cache"] < c["keys"]
        assert 0 < c["fetched_keys"] <= c["cache_misses"]
        assert c["volatile"] > 0 and c["persistent"] > 0 and c["default"] == 0
        assert c["async_misses"] == 0  # hit_rate_threshold 1.0: always synchronous
        if row["gpu_kernel"]["reason"] is not None:
            assert row["gpu_kernel"]["kernel_share_of_gather_floor"] is None


def test_tiers_are_exact_without_a_cache(rocksdb_only_config, tmp_path):
    """RocksDB holds every table key; keys outside the table get the default: known counts."""
    rng = np.random.default_rng(7)
    trace = np.where(
        rng.random(3000) < 0.3, -rng.integers(1, 10**6, 3000), rng.integers(0, 20_000, 3000)
    ).astype(np.int64)
    np.save(tmp_path / "trace.npy", trace)
    report = run_lookup_bench(
        LookupBenchSpec(
            config=rocksdb_only_config,
            batch_sizes=(100,),
            keys_from=tmp_path / "trace.npy",
            warmup=3,
            iterations=30,
        )
    )
    check_consistent(report, tables=1)
    measured = np.concatenate([trace[300:], trace[:300]])  # after 3 warm-up lookups of 100
    row = report["rows"][0]
    assert row["counts"]["default"] == int((measured < 0).sum())
    assert row["counts"]["persistent"] == int((measured >= 0).sum())
    assert row["counts"]["gpu_cache"] == row["counts"]["volatile"] == 0
    assert row["counts"]["fetched_keys"] == 3000
    assert report["keys"]["source"] == "trace" and report["keys"]["trace_keys"] == 3000
    assert report["tables"][0]["cache"] is None
    assert row["gpu_kernel"]["reason"].startswith("the table has no embedding cache")


def test_asynchronous_misses_count_as_defaults(tables):
    tmp, paths = tables
    config = _write(
        tmp,
        "async",
        ps_config(
            {"a": paths["a"]},
            DIMS,
            volatile={"type": "parallel_hash_map"},
            gpucache=True,
            gpucacheper=0.05,
            hit_rate_threshold=0.01,
            init_ec=False,
        ),
    )
    report = run_lookup_bench(
        LookupBenchSpec(
            config=config,
            batch_sizes=(256,),
            distribution="hotkey:0.02:0.9",
            warmup=0,
            iterations=40,
        )
    )
    check_consistent(report, tables=1)
    c = report["rows"][0]["counts"]
    # an empty cache: the first lookup hits nothing (0 < threshold: synchronous), later ones
    # hit most keys and leave their misses to the background insertion (defaults now)
    assert c["sync_lookups"] >= 1 and c["async_lookups"] > 0
    assert c["async_misses"] > 0 and c["default"] == c["async_misses"]
    assert c["volatile"] + c["default"] == c["cache_misses"]


def test_duration_mode_and_a_subset_of_tables(cached_config):
    report = run_lookup_bench(
        LookupBenchSpec(
            config=cached_config,
            batch_sizes=(64,),
            tables=("b",),
            warmup=2,
            iterations=None,
            duration_s=0.3,
        )
    )
    check_consistent(report, tables=1)
    assert report["rows"][0]["lookups"] >= 1 and report["duration_s"] == 0.3
    assert [t["name"] for t in report["tables"]] == ["b"]


def test_argument_errors(cached_config, tmp_path):
    np.save(tmp_path / "t.npy", np.arange(10))
    with pytest.raises(InvalidInputError, match="a key trace feeds one table") as info:
        run_lookup_bench(LookupBenchSpec(config=cached_config, keys_from=tmp_path / "t.npy"))
    assert info.value.hint == "pick the table with --table NAME"
    with pytest.raises(InvalidInputError, match="no table 'zz'"):
        run_lookup_bench(LookupBenchSpec(config=cached_config, tables=("zz",)))
    with pytest.raises(InvalidInputError, match="no model 'nope'"):
        run_lookup_bench(LookupBenchSpec(config=cached_config, model="nope"))
    with pytest.raises(InvalidInputError, match="deployed_device_list"):
        run_lookup_bench(LookupBenchSpec(config=cached_config, device_id=3))


def test_apportion():
    assert apportion(10, [1, 1, 0]) == [5, 5, 0]
    assert apportion(10, [2, 1, 0]) == [7, 3, 0]
    assert apportion(7, [1, 1, 1]) == [3, 2, 2]
    assert apportion(5, [0, 0, 0]) == [0, 0, 5]
    assert apportion(0, [3, 4, 5]) == [0, 0, 0]
    rng = np.random.default_rng(1)
    for _ in range(200):
        total, weights = int(rng.integers(0, 1000)), rng.integers(0, 50, 3).tolist()
        parts = apportion(total, weights)
        assert sum(parts) == total and min(parts) >= 0
        if sum(weights):
            for p, w in zip(parts, weights):
                assert abs(p - total * w / sum(weights)) < 1


def test_cli_json_csv_plot(cached_config, tmp_path, hps):
    csv_path, png = tmp_path / "lookup.csv", tmp_path / "lookup.png"
    res = hps(
        "bench",
        "lookup",
        "--config",
        str(cached_config),
        "--batch-size",
        "16,128",
        "--distribution",
        "hotkey:20%:80%",
        "--iterations",
        "20",
        "--warmup",
        "2",
        "--csv",
        str(csv_path),
        "--plot",
        str(png),
        "--json",
    )
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    check_consistent(report, tables=2)
    assert report["keys"]["spec"] == "hotkey:0.2:0.8"
    lines = csv_path.read_text().splitlines()
    assert tuple(lines[0].split(",")) == LOOKUP_COLUMNS and len(lines) == 3
    first = lines[1].split(",")
    assert first[0] == "16"
    assert sum(float(x) for x in first[8:12]) == pytest.approx(1.0, abs=1e-5)
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_cli_table_and_trace_error(cached_config, tmp_path, hps):
    res = hps("bench", "lookup", "--config", str(cached_config), "--iterations", "5")
    assert res.returncode == 0, res.stderr
    assert "GPU cache" in res.stdout and "p99 us" in res.stdout
    assert "keys uniform over each table's keys" in res.stdout  # the key source, in the title
    bad = tmp_path / "keys.txt"
    bad.write_text("1\n2\n0x10\n")
    res = hps(
        "bench", "lookup", "--config", str(cached_config), "--table", "a", "--keys-from", str(bad)
    )
    assert res.returncode == ExitCode.INVALID
    assert res.stderr.splitlines()[0] == f"error: {bad}:3: not an integer key: '0x10'"


@pytest.mark.gpu
def test_kernel_share_of_the_gather_floor_on_a_gpu(tables):
    tmp, paths = tables
    config = _write(
        tmp, "gpu", ps_config(paths, DIMS, gpucache=True, gpucacheper=0.5, hit_rate_threshold=1.0)
    )
    from hps_cli.runtime.gpu.placement import DEDUP_MIN_KEYS

    report = run_lookup_bench(
        LookupBenchSpec(
            config=config,
            batch_sizes=(1024, 16384, DEDUP_MIN_KEYS),
            distribution="zipf:1.05",
            warmup=5,
            iterations=30,
        )
    )
    check_consistent(report, tables=2)
    assert [t["cache"]["backend"] for t in report["tables"]] == ["gpu", "gpu"]
    for row in report["rows"]:
        kernel = row["gpu_kernel"]
        assert kernel["reason"] is None
        if row["batch_size"] < DEDUP_MIN_KEYS:
            assert kernel["keys"] == row["batch_size"]
        else:  # timed as the lookup queries it: its distinct keys (a Zipf batch repeats many)
            assert 0 < kernel["keys"] < row["batch_size"]
        assert kernel["query_us"] > 0 and kernel["gather_us"] > 0
        assert kernel["kernel_share_of_gather_floor"] == pytest.approx(
            kernel["gather_us"] / kernel["query_us"]
        )
        assert 0.05 < kernel["kernel_share_of_gather_floor"] < 5
