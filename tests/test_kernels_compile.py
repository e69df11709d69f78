"""Every kernel source compiles with the production flags for Ampere and Hopper (no GPU needed)."""

from __future__ import annotations

import subprocess

import pytest
from hps_cli.runtime.gpu.kernels import SOURCES, nvcc_flags
from hps_cli.runtime.resources import cuda_dir

pytestmark = pytest.mark.nvcc


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("source", SOURCES)
def test_kernel_compiles(tmp_path, source, arch):
    cmd = [
        "nvcc",
        "--cubin",
        f"-arch={arch}",
        *nvcc_flags(),
        "-I",
        str(cuda_dir()),
        "-Xptxas",
        "-warn-spills",
        "-o",
        str(tmp_path / "k.cubin"),
        str(cuda_dir() / source),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "spill" not in res.stderr.lower(), res.stderr


def test_sources_list_every_cu_file():
    assert sorted(SOURCES) == sorted(p.name for p in cuda_dir().glob("*.cu"))


def test_constants_are_required():
    res = subprocess.run(
        [
            "nvcc",
            "--cubin",
            "-arch=sm_90",
            "-I",
            str(cuda_dir()),
            "-o",
            "/dev/null",
            str(cuda_dir() / "batch_ops.cu"),
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode != 0 and "HPS_EMPTY_KEY" in res.stderr


def test_unsupported_ways_are_refused():
    """The kernels build with 4, 8, 16 or 32 ways (the runtime uses 8, studies others)."""
    res = subprocess.run(
        [
            "nvcc",
            "--cubin",
            "-arch=sm_90",
            *nvcc_flags({"HPS_WAYS": "12"}),
            "-I",
            str(cuda_dir()),
            "-o",
            "/dev/null",
            str(cuda_dir() / "dynamic_cache.cu"),
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode != 0 and "HPS_WAYS is 4, 8, 16 or 32" in res.stderr
