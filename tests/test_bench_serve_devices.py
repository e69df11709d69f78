"""benchmarks/bench_serve_devices.py on the CPU (the NumPy reference standing in for two
devices): a small smoke run through two real `hps serve` processes; the report is complete,
no client saw an error, and the two-device server ran batches on both devices."""

from __future__ import annotations

import json
import subprocess
import sys

from helpers.paths import REPO
from hps_cli.runtime.gpu.placement import num_sets_for

from hps_cli.bench.cache_size import cache_memory_bytes


def test_the_devices_benchmark_runs_on_the_reference_backend(tmp_path):
    out = tmp_path / "devices.json"
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "bench_serve_devices.py"),
            "--backend",
            "reference",
            "--keys",
            "5000",
            "--dim",
            "8",
            "--per-request",
            "128",
            "--concurrency",
            "4",
            "--seconds",
            "0.5",
            "--rounds",
            "1",
            "--work",
            str(tmp_path / "work"),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["errors"] == 0 and doc["server_exit_codes"] == {"two": 0, "one": 0}
    (run,) = doc["rounds"]
    assert run["two"]["requests_per_s"] > 0 and run["one"]["requests_per_s"] > 0
    assert set(run["two"]["executions_by_device"]) == {"0", "1"}
    assert all(v > 0 for v in run["two"]["executions_by_device"].values())
    assert set(run["one"]["executions_by_device"]) == {"0"}
    assert run["ratio"] == round(run["two"]["keys_per_s"] / run["one"]["keys_per_s"], 3)
    memory = doc["memory"]  # hps bench cache-size's formula for the cache of every row
    predicted = cache_memory_bytes(num_sets_for(5000, 1.0), 8)
    assert memory["predicted_cache_bytes_per_device"] == predicted > 5000 * 8 * 4
    assert memory["two_devices"]["predicted_per_device"] == [predicted, predicted]
    assert memory["two_devices"]["device_memory_delta_bytes"] is None  # no device to ask
