"""The examples run end to end (each asserts its own results and exits non-zero otherwise)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from helpers.paths import EXAMPLES


def _run(
    script: str, *args: str, timeout: float = 900, env: dict | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


# What TensorFlow's native libraries print while loading (absl's preamble, oneDNN, the CUDA
# probes of a machine without a GPU, cpu_feature_guard).
TF_NATIVE = (
    "absl::InitializeLog",
    "oneDNN custom operations",
    "cudart_stub",
    "cuInit",
    "cpu_feature_guard",
    "To enable the following instructions",
)


@pytest.mark.tf
@pytest.mark.slow
def test_quickstart_trains_deploys_serves_and_matches(tmp_path):
    """The README's main job: train → dissect → validate → build-graph → serve → query → bench.

    Run as a user would (no TF_CPP_MIN_LOG_LEVEL, no HPS_DEBUG): none of TensorFlow's native
    load-time lines reaches the terminal, from the script or the hps commands it starts."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "HPS_DEBUG")}
    res = _run("quickstart/run.py", "--work", str(tmp_path / "qs"), env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "quickstart passed: predictions match" in res.stdout
    assert "max |served - original| =" in res.stdout
    assert "hit rates from http://127.0.0.1:" in res.stdout  # hps bench serve --metrics-url
    leaked = [
        line
        for line in (res.stdout + res.stderr).splitlines()
        if any(marker in line for marker in TF_NATIVE)
    ]
    assert leaked == []


def test_sok_dump_converted_and_served(tmp_path):
    res = _run("sok_to_hps/run.py", "--work", str(tmp_path / "sok"))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "served vectors equal the dump's weights" in res.stdout


@pytest.mark.redis
def test_served_from_a_redis_cluster_that_loses_a_node(tmp_path):
    res = _run("redis_cluster/run.py", "--work", str(tmp_path / "redis"))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "all answered, all exact" in res.stdout
