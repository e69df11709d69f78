"""`hps bench serve` against a real `hps serve` subprocess (HTTP and gRPC): consistent reports,
the stability rule over the reported windows, perf_analyzer's CSV header, the exit code of an
unreachable server, hit rates from the server's Prometheus counters (--metrics-url)."""

from __future__ import annotations

import json
import socket

import pytest
from helpers.runtime_configs import make_tables, ps_config
from hps_cli.runtime.errors import ExitCode
from hps_cli.runtime.resources import load_schema
from jsonschema import Draft202012Validator

from hps_cli.devtools.serve_process import ServeProcess

# perf_analyzer's CSV header (-f FILE), as its documentation gives it
PERF_ANALYZER_HEADER = (
    "Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,"
    "Server Queue,Server Compute Input,Server Compute Infer,"
    "Server Compute Output,Client Recv,p50 latency,p90 latency,"
    "p95 latency,p99 latency"
)
WINDOW_ARGS = ("--measurement-interval", "250", "--max-trials", "6", "--warmup-requests", "5")


PLAIN_KEYS = 3000  # model "plain": one table "c" of keys 0..2999, all in the volatile tier
HIT_TIERS = ("gpu_cache", "volatile", "persistent", "default")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench-serve")
    tables = make_tables(tmp, {"a": (4000, 8), "b": (2000, 16), "c": (PLAIN_KEYS, 4)})
    doc = ps_config(
        {"a": tables["a"], "b": tables["b"]},
        {"a": 8, "b": 16},
        gpucache=True,
        gpucacheper=0.3,
        hit_rate_threshold=1.0,
        max_batch_size=256,
    )
    plain = ps_config({"c": tables["c"]}, {"c": 4}, model="plain", max_batch_size=256)
    doc["models"] += plain["models"]
    path = tmp / "ps.json"
    path.write_text(json.dumps(doc))
    # the cache's NumPy reference on any machine, so that model m's keys meet a cache here too
    with ServeProcess(
        path, extra_args=["--access-log", "off"], env={"HPS_CACHE_BACKEND": "reference"}
    ) as proc:
        yield proc, path


def metrics_address(proc) -> str:
    return f"127.0.0.1:{proc.ports['metrics']}"


def check_hit_rates(level: dict) -> None:
    """Shares that sum to 1, from counters that saw the keys the bench sent in those windows."""
    hit, counts = level["hit_rate"], level["hit_counts"]
    assert all(0.0 <= hit[t] <= 1.0 for t in HIT_TIERS)
    assert sum(hit.values()) == pytest.approx(1.0)
    sent = counts["client_keys"]  # the keys of the requests answered between the two scrapes
    assert sent > 0
    # a request in flight at a scrape is counted by the server on one side of it and by the
    # client on the other: at most one request per thread on each bound
    assert abs(counts["server_keys"] - sent) <= 2 * level["concurrency"] * level["keys_per_request"]


def check_level(level: dict, spec: dict) -> None:
    lat = level["latency_us"]
    assert level["errors"] == 0 and level["errors_total"] == 0 and level["requests"] > 0
    assert lat["count"] == level["requests"]
    assert lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert level["throughput_infer_per_sec"] == pytest.approx(level["requests"] / level["seconds"])
    assert level["throughput_keys_per_sec"] == pytest.approx(
        level["throughput_infer_per_sec"] * level["keys_per_request"]
    )
    windows = level["windows"]
    assert level["trials"] == len(windows) <= spec["max_trials"]
    used = windows[-3:]
    assert level["requests"] == sum(w["requests"] for w in used)
    assert level["seconds"] == pytest.approx(sum(w["seconds"] for w in used))
    for w in windows:  # never shorter than asked; longer only by scheduling delays
        assert spec["measurement_interval_ms"] / 1000 * 0.999 <= w["seconds"] < 5
    if level["stable"]:  # the rule, recomputed from the reported windows
        assert len(windows) >= 3
        for key in ("throughput_infer_per_sec", "avg_latency_us"):
            values = [w[key] for w in used]
            mean = sum(values) / 3
            assert all(abs(v - mean) <= 0.10 * mean for v in values)
    else:
        assert len(windows) == spec["max_trials"]
    server_side = level["server"]
    assert server_side is not None and server_side["compute_infer_us"] > 0
    assert server_side["compute_infer_us"] < lat["mean"]


def test_http_sweep(server, tmp_path, hps):
    proc, config = server
    csv_path, png = tmp_path / "serve.csv", tmp_path / "serve.png"
    res = hps(
        "bench",
        "serve",
        "--url",
        proc.http_url,
        "--model",
        "m",
        "--config",
        str(config),
        "--metrics-url",
        metrics_address(proc),
        "--distribution",
        "zipf:1.05",
        "--keys-per-request",
        "16",
        "--concurrency-range",
        "1:2",
        *WINDOW_ARGS,
        "--csv",
        str(csv_path),
        "--plot",
        str(png),
        "--json",
        timeout=180,
    )
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    Draft202012Validator(load_schema("bench_report.schema.json")).validate(report)
    assert report["protocol"] == "http" and report["binary"] is True
    assert [t["name"] for t in report["tables"]] == ["a", "b"]
    assert [t["dim"] for t in report["tables"]] == [8, 16]
    assert report["keys_per_request"] == 32
    assert [lv["concurrency"] for lv in report["levels"]] == [1, 2]
    assert report["keys"]["tables"] == [{"name": "a", "keys": 4000}, {"name": "b", "keys": 2000}]
    assert report["metrics_url"].endswith(f":{proc.ports['metrics']}/metrics")
    assert report["hit_rate_not_measured"] is None
    for level in report["levels"]:
        check_level(level, report)
        check_hit_rates(level)
        counts = level["hit_counts"]  # every key of model m went through its cache
        assert counts["cache_hit"] + counts["cache_miss"] == counts["server_keys"]
        assert level["hit_rate"]["gpu_cache"] > 0 and counts["cache_miss"] > 0
    lines = csv_path.read_text().splitlines()
    assert lines[0] == PERF_ANALYZER_HEADER
    rows = [line.split(",") for line in lines[1:]]
    assert sorted(int(r[0]) for r in rows) == [1, 2] and all(len(r) == 13 for r in rows)
    throughputs = [float(r[1]) for r in rows]
    assert throughputs == sorted(throughputs)  # perf_analyzer's order
    for r in rows:
        p50, p90, p95, p99 = (int(x) for x in r[9:13])
        assert p50 <= p90 <= p95 <= p99
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_grpc_and_json_data(server, tmp_path, hps):
    proc, _ = server
    res = hps(
        "bench",
        "serve",
        "--url",
        proc.grpc_url,
        "--protocol",
        "grpc",
        "--model",
        "m",
        "--key-space",
        "5000",
        "--keys-per-request",
        "8",
        *WINDOW_ARGS,
        "--json",
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    Draft202012Validator(load_schema("bench_report.schema.json")).validate(report)
    assert report["protocol"] == "grpc" and report["keys"]["key_space"] == 5000
    # without --config, tables and dims come from the model's config over gRPC
    assert report["tables"] == [{"name": "a", "dim": 8}, {"name": "b", "dim": 16}]
    check_level(report["levels"][0], report)
    # without --metrics-url: hit rates not measured, and the report says why
    assert report["metrics_url"] is None
    assert report["hit_rate_not_measured"] == "give --metrics-url"
    assert report["levels"][0]["hit_rate"] == dict.fromkeys(HIT_TIERS)
    assert report["levels"][0]["hit_counts"] is None
    csv_path = tmp_path / "verbose.csv"
    res = hps(
        "bench",
        "serve",
        "--url",
        proc.http_url,
        "--model",
        "m",
        "--json-data",
        "--keys-per-request",
        "4",
        *WINDOW_ARGS,
        "--csv",
        str(csv_path),
        "--verbose-csv",
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    # the table's title states the key source and that no hit rate was measured
    assert "keys uniform over 0..999,999 (--key-space)" in res.stdout
    assert "hit rate: not measured (give --metrics-url)" in res.stdout
    assert "volatile" not in res.stdout  # no hit rate columns
    header, row = csv_path.read_text().strip().splitlines()
    assert header == PERF_ANALYZER_HEADER + (
        ",Keys/Second,Avg latency,Max latency,Errors,Stable"
        ",GPU Cache Hit Rate,Volatile Hit Rate,Persistent Hit Rate,Default Rate"
    )
    row = row.split(",")
    assert row[0] == "1" and row[16] == "0" and row[18:] == ["", "", "", ""]


def test_hit_rates_of_a_table_in_the_volatile_tier(server, tmp_path, hps):
    proc, config = server
    csv_path = tmp_path / "plain.csv"
    res = hps(
        "bench",
        "serve",
        "--url",
        proc.http_url,
        "--model",
        "plain",
        "--config",
        str(config),
        "--metrics-url",
        metrics_address(proc),
        *WINDOW_ARGS,
        "--csv",
        str(csv_path),
        "--verbose-csv",
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert f"keys uniform over the {PLAIN_KEYS:,} keys of table c (--config)" in res.stdout
    assert f"hit rates from http://{metrics_address(proc)}/metrics" in res.stdout
    assert "100.00%" in res.stdout  # the volatile column
    header, row = csv_path.read_text().strip().splitlines()
    rates = dict(zip(header.split(",")[-4:], (float(v) for v in row.split(",")[-4:])))
    assert rates == {
        "GPU Cache Hit Rate": 0.0,
        "Volatile Hit Rate": 1.0,
        "Persistent Hit Rate": 0.0,
        "Default Rate": 0.0,
    }


def test_keys_outside_the_table_get_the_default(server, hps):
    proc, _ = server
    space = 4 * PLAIN_KEYS  # keys 0..4N-1: a quarter of them are the table's
    res = hps(
        "bench",
        "serve",
        "--url",
        proc.http_url,
        "--model",
        "plain",
        "--key-space",
        str(space),
        "--metrics-url",
        metrics_address(proc),
        *WINDOW_ARGS,
        "--json",
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    level = json.loads(res.stdout)["levels"][0]
    check_hit_rates(level)
    hit, keys = level["hit_rate"], level["hit_counts"]["server_keys"]
    assert hit["gpu_cache"] == 0.0 and hit["persistent"] == 0.0
    # uniform draws: the default share is binomial around 3/4, std sqrt(p(1-p)/n)
    assert keys > 1000
    assert hit["default"] == pytest.approx(0.75, abs=5 * (0.75 * 0.25 / keys) ** 0.5 + 0.01)
    assert hit["volatile"] == pytest.approx(1.0 - hit["default"])


def test_metrics_without_hps_series_warn_once(server, hps):
    """A Prometheus endpoint of another server (a Triton-like counter, no hps series)."""
    from prometheus_client import CollectorRegistry, Counter, start_http_server

    registry = CollectorRegistry()
    Counter("nv_inference_count", "Triton's", ["model"], registry=registry).labels("plain").inc(3)
    metrics, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        proc, _ = server
        url = f"127.0.0.1:{metrics.server_address[1]}"
        res = hps(
            "bench",
            "serve",
            "--url",
            proc.http_url,
            "--model",
            "plain",
            "--key-space",
            str(PLAIN_KEYS),
            "--metrics-url",
            url,
            *WINDOW_ARGS,
            "--json",
            timeout=120,
        )
    finally:
        metrics.shutdown()
        metrics.server_close()
        thread.join(5)
    assert res.returncode == 0, res.stderr
    warnings = [line for line in res.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "no hps_table_keys_total series" in warnings[0]
    report = json.loads(res.stdout)
    assert "not an hps server" in report["hit_rate_not_measured"]
    assert report["levels"][0]["hit_rate"] == dict.fromkeys(HIT_TIERS)


def test_unusable_requests_and_models(server, hps):
    proc, _ = server
    res = hps("bench", "serve", "--url", proc.http_url, "--model", "nope")
    assert res.returncode == ExitCode.INVALID and "no ready model 'nope'" in res.stderr
    # 600 keys per table: 1200 samples, above max_batch_size 256: every request fails
    res = hps(
        "bench",
        "serve",
        "--url",
        proc.http_url,
        "--model",
        "m",
        "--keys-per-request",
        "600",
        "--measurement-interval",
        "100",
        "--max-trials",
        "3",
        timeout=120,
    )
    assert res.returncode == ExitCode.INVALID
    assert "every request failed" in res.stderr and "max_batch_size" in res.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    ("address", "code", "message"),
    [
        ("unreachable", ExitCode.UNAVAILABLE, "cannot read metrics from http://127.0.0.1:"),
        ("no-port", ExitCode.INVALID, "'localhost' is not a metrics address"),
        ("http-port", ExitCode.INVALID, "answered HTTP 404: not a Prometheus metrics endpoint"),
    ],
)
def test_bad_metrics_url(server, hps, address, code, message):
    proc, _ = server
    url = {
        "unreachable": f"127.0.0.1:{_free_port()}",
        "no-port": "localhost",
        "http-port": proc.http_url,  # the inference port has no /metrics
    }[address]
    res = hps("bench", "serve", "--url", proc.http_url, "--model", "plain", "--metrics-url", url)
    assert res.returncode == code
    lines = res.stderr.strip().splitlines()
    assert lines[0].startswith("error: --metrics-url: ") and message in lines[0]
    assert lines[1].startswith("hint: ") and "--metrics-port" in lines[1] and len(lines) == 2


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_unreachable_server_is_exit_6(hps, protocol):
    url = f"127.0.0.1:{_free_port()}"
    res = hps("bench", "serve", "--url", url, "--protocol", protocol, "--model", "m", timeout=60)
    assert res.returncode == ExitCode.UNAVAILABLE
    lines = res.stderr.strip().splitlines()
    assert lines[0].startswith(
        f"error: {url}: cannot reach a KServe v2 {protocol.upper()} server at {url}"
    )
    assert lines[1].startswith("hint:") and len(lines) == 2


def test_counters_parse_and_split():
    """Escaped label values, devices summed, a cached table's misses split over the tiers in
    the proportions the tiers counted, an uncached table's tier counts taken as they are."""
    from hps_cli.bench.server_metrics import hit_rates, parse_snapshot

    model = 'x"y,z'  # quotes and commas in a label value
    label = 'x\\"y,z'

    def tier(table, result, value, who=label):
        return f'hps_table_keys_total{{model="{who}",table="{table}",result="{result}"}} {value}'

    def cache(device, result, value):
        labels = f'model="{label}",table="a",device="{device}",result="{result}"'
        return f"hps_cache_keys_total{{{labels}}} {value}"

    def text(hit0, hit1, miss, volatile, persistent, default, plain_volatile):
        return "\n".join(
            [
                "# HELP hps_table_keys Keys looked up in the CPU tiers, by result",
                "# TYPE hps_table_keys counter",
                tier("a", "volatile_hit", volatile),
                tier("a", "persistent_hit", persistent),
                tier("a", "default", default),
                tier("a", "volatile_failure", 0),
                tier("b", "volatile_hit", plain_volatile),
                tier("b", "default", 0),
                tier("a", "default", 999, who="other"),
                "# TYPE hps_cache_keys counter",
                cache(0, "hit", hit0),
                cache(1, "hit", hit1),
                cache(0, "miss", miss),
                "",
            ]
        )

    before = parse_snapshot(text(10, 10, 5, 3, 1, 1, 7), model)
    assert before.cache == {"a": {"hit": 20.0, "miss": 5.0}}
    # table a: 60 hits over two devices, 40 misses; the tiers fetched 20/10/10 (2:1:1);
    # table b (no cache): 100 keys from the volatile tier
    after = parse_snapshot(text(40, 40, 45, 23, 11, 11, 107), model)
    rates, counts = hit_rates(before, after)
    assert counts["server_keys"] == 200 and counts["cache_hit"] == 60
    assert rates == pytest.approx(
        {
            "gpu_cache": 60 / 200,
            "volatile": (20 + 100) / 200,
            "persistent": 10 / 200,
            "default": 10 / 200,
        }
    )
