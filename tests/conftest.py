"""pytest hooks and fixtures: the markers' capability probes, and common fixtures.

Markers (pyproject.toml): ``gpu`` tests are skipped without a CUDA device and pycuda, ``tf``
without TensorFlow, ``redis`` without redis-server/redis-py, ``nvcc`` without the compiler
(helpers/probes.py). ``HPS_REQUIRE_GPU=1`` turns a skipped ``gpu`` test into a failure. Helpers
that tests import live in the ``helpers`` package beside this file.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers.cli import run_hps
from helpers.probes import PROBES, gpu_required, has_gpu, has_redis


def pytest_collection_modifyitems(config, items):
    for item in items:
        for marker, (probe, reason) in PROBES.items():
            if marker in item.keywords and not probe():
                if marker == "gpu" and gpu_required():
                    continue  # fails in pytest_runtest_setup instead of skipping
                item.add_marker(pytest.mark.skip(reason=reason))


def pytest_runtest_setup(item):
    if "gpu" in item.keywords and gpu_required() and not has_gpu():
        pytest.fail("HPS_REQUIRE_GPU=1 but no CUDA device, driver or pycuda is usable")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


@pytest.fixture
def runner():
    from click.testing import CliRunner

    return CliRunner()


@pytest.fixture
def hps():
    """``run_hps``: the real CLI in a subprocess."""
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
