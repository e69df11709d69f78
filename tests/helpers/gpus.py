"""Tests that need several GPUs.

A ``gpu`` test that needs more GPUs than the machine has is skipped, also under
``HPS_REQUIRE_GPU=1`` (a one-GPU machine is a valid machine for the gpu suite).
``HPS_REQUIRE_GPUS=N`` says the machine has N GPUs: then a test needing up to N fails instead
of skipping, so a run on a two-GPU machine cannot pass by skipping the two-GPU tests.
"""

from __future__ import annotations

import os

import pytest


def gpu_count() -> int:
    try:
        from hps_cli.runtime.gpu.device import gpu_count as count

        return count()
    except Exception:  # noqa: BLE001 - no driver, no pycuda: no GPU
        return 0


def need_gpus(n: int) -> None:
    """Skip (or, under ``HPS_REQUIRE_GPUS`` >= n, fail) unless ``n`` GPUs are usable."""
    have = gpu_count()
    if have >= n:
        return
    required = int(os.environ.get("HPS_REQUIRE_GPUS", "0") or 0)
    message = f"needs {n} GPUs, this machine has {have}"
    if required >= n:
        pytest.fail(f"HPS_REQUIRE_GPUS={required} but {message}")
    pytest.skip(message)
