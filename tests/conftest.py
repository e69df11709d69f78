"""Shared test set-up: capability probes for the markers, and common fixtures.

Markers (pyproject.toml): ``gpu`` tests are skipped without a CUDA device and pycuda, ``tf``
without TensorFlow, ``redis`` without redis-server/redis-py, ``nvcc`` without the compiler.
``HPS_REQUIRE_GPU=1`` (set on the GPU machine) turns a skipped ``gpu`` test into a failure, so a
broken install cannot pass by skipping everything.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"


@cache
def has_gpu() -> bool:
    try:
        import pycuda.driver as drv  # noqa: F401

        drv.init()
        return drv.Device.count() > 0
    except Exception:
        return False


@cache
def has_tf() -> bool:
    return importlib.util.find_spec("tensorflow") is not None


@cache
def has_redis() -> bool:
    return (
        shutil.which("redis-server") is not None and importlib.util.find_spec("redis") is not None
    )


@cache
def has_nvcc() -> bool:
    return shutil.which("nvcc") is not None


_PROBES = {
    "gpu": (has_gpu, "no CUDA device, driver or pycuda"),
    "tf": (has_tf, "TensorFlow is not installed"),
    "redis": (has_redis, "redis-server or redis-py is not installed"),
    "nvcc": (has_nvcc, "nvcc is not on PATH"),
}


def _require_gpu() -> bool:
    return os.environ.get("HPS_REQUIRE_GPU") == "1"


def pytest_collection_modifyitems(config, items):
    for item in items:
        for marker, (probe, reason) in _PROBES.items():
            if marker in item.keywords and not probe():
                if marker == "gpu" and _require_gpu():
                    continue  # fails in pytest_runtest_setup instead of skipping
                item.add_marker(pytest.mark.skip(reason=reason))


def pytest_runtest_setup(item):
    if "gpu" in item.keywords and _require_gpu() and not has_gpu():
        pytest.fail("HPS_REQUIRE_GPU=1 but no CUDA device, driver or pycuda is usable")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


@pytest.fixture
def runner():
    from click.testing import CliRunner

    return CliRunner()


def run_hps(
    *args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    """Run the real `hps` entry point in a subprocess (exit codes exactly as users see them)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "hps_cli", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def hps():
    return run_hps


@pytest.fixture(scope="session")
def redis_cluster():
    """A real Redis Cluster (3 masters on free loopback ports) for the whole session.

    Tests share it: use table tags of their own. A test that kills nodes starts its own
    ``redis_cluster.LocalRedisCluster`` instead.
    """
    if not has_redis():
        pytest.skip("redis-server or redis-py is not installed")
    from hps_cli.devtools.redis_cluster import LocalRedisCluster

    cluster = LocalRedisCluster(3).start()
    yield cluster
    cluster.stop()
