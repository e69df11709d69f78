"""The examples run end to end (each asserts its own results and exits non-zero otherwise)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers.paths import EXAMPLES


def _run(script: str, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.tf
@pytest.mark.slow
def test_quickstart_trains_deploys_serves_and_matches(tmp_path):
    """The README's main job: train → dissect → validate → build-graph → serve → query → bench."""
    res = _run("quickstart/run.py", "--work", str(tmp_path / "qs"))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "quickstart passed: predictions match" in res.stdout
    assert "max |served - original| =" in res.stdout


def test_sok_dump_converted_and_served(tmp_path):
    res = _run("sok_to_hps/run.py", "--work", str(tmp_path / "sok"))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "served vectors equal the dump's weights" in res.stdout


@pytest.mark.redis
def test_served_from_a_redis_cluster_that_loses_a_node(tmp_path):
    res = _run("redis_cluster/run.py", "--work", str(tmp_path / "redis"))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "all answered, all exact" in res.stdout
