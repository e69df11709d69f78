"""What this machine can run, for the test markers (pyproject.toml): each probe is asked once.

``HPS_REQUIRE_GPU=1`` (set on the GPU machine) turns a skipped ``gpu`` test into a failure, so a
broken install cannot pass by skipping everything.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from functools import cache


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


# marker -> (probe, why a test with the marker is skipped)
PROBES = {
    "gpu": (has_gpu, "no CUDA device, driver or pycuda"),
    "tf": (has_tf, "TensorFlow is not installed"),
    "redis": (has_redis, "redis-server or redis-py is not installed"),
    "nvcc": (has_nvcc, "nvcc is not on PATH"),
}


def gpu_required() -> bool:
    return os.environ.get("HPS_REQUIRE_GPU") == "1"
