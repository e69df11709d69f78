"""`hps bench serve` against a real `hps serve` subprocess (HTTP and gRPC): consistent reports,
the stability rule over the reported windows, perf_analyzer's CSV header, the exit code of an
unreachable server."""

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


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench-serve")
    tables = make_tables(tmp, {"a": (4000, 8), "b": (2000, 16)})
    doc = ps_config(
        tables,
        {"a": 8, "b": 16},
        gpucache=True,
        gpucacheper=0.3,
        hit_rate_threshold=1.0,
        max_batch_size=256,
    )
    path = tmp / "ps.json"
    path.write_text(json.dumps(doc))
    with ServeProcess(path, extra_args=["--access-log", "off"]) as proc:
        yield proc, path


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
    for level in report["levels"]:
        check_level(level, report)
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


def test_grpc_and_json_data(server, hps):
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
        "-",
        "--verbose-csv",
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    header, row = res.stdout.strip().splitlines()
    assert header == PERF_ANALYZER_HEADER + ",Keys/Second,Avg latency,Max latency,Errors,Stable"
    assert row.split(",")[0] == "1" and row.split(",")[16] == "0"


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
