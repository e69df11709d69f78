"""The wheel: built from the checkout, installed in a fresh venv, it runs and finds its data."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest
import tomllib
from helpers.paths import EXAMPLES, REPO


def test_every_python_package_folder_is_declared():
    declared = set(
        tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        "hps_cli." + ".".join(p.parent.relative_to(REPO / "runtime").parts)
        if p.parent != REPO / "runtime"
        else "hps_cli.runtime"
        for p in (REPO / "runtime").rglob("__init__.py")
    }
    found = {
        f.replace("hps_cli.", "hps_cli.runtime.", 1) if f != "hps_cli.runtime" else f for f in found
    }
    found |= {
        ".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "hps_cli").rglob("__init__.py")
    }
    assert found <= declared, f"add to pyproject packages: {sorted(found - declared)}"
    assert (
        not (REPO / "cuda" / "__init__.py").exists()
        and not (REPO / "schemas" / "__init__.py").exists()
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(out),
            str(REPO),
        ],
        check=True,
        capture_output=True,
    )
    return next(out.glob("hps_cli-*.whl"))


@pytest.mark.slow
def test_wheel_holds_kernels_schemas_runtime_and_c_sources(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "hps_cli/schemas/ps_config.schema.json" in names
    for src in list((REPO / "cuda").glob("*.cu")) + list((REPO / "cuda").glob("*.cuh")):
        assert f"hps_cli/cuda/{src.name}" in names
    assert "hps_cli/runtime/config/validate.py" in names
    sources = list((REPO / "runtime" / "native").glob("*.c"))
    assert sources and all(f"hps_cli/runtime/native/{src.name}" in names for src in sources)
    assert not any(n.startswith(("runtime/", "cuda/", "schemas/")) for n in names)


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_runs_help_and_validate_config(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    # The fresh venv sees the test environment's site-packages for dependencies only; hps_cli
    # itself comes from the wheel (the editable install is not on its path).
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    subprocess.run(
        [str(py), "-m", "pip", "install", "-q", str(wheel)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    where = subprocess.run(
        [str(py), "-c", "import hps_cli, sys; print(hps_cli.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    assert str(env_dir) in where.stdout
    hps = env_dir / "bin" / "hps"
    assert subprocess.run([str(hps), "--help"], capture_output=True, cwd=tmp_path).returncode == 0
    configs = sorted(str(p) for p in (EXAMPLES / "configs").glob("*.json"))
    res = subprocess.run(
        [str(hps), "validate-config", *configs], capture_output=True, text=True, cwd=tmp_path
    )
    assert res.returncode == 0, res.stderr
    found = subprocess.run(
        [
            str(py),
            "-c",
            "from hps_cli.runtime.resources import cuda_dir, schemas_dir, load_schema;"
            "print(cuda_dir()); print(schemas_dir()); print(sorted(p.name for p in "
            "cuda_dir().iterdir()));"
            "load_schema('ps_config.schema.json')",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    lines = found.stdout.splitlines()
    assert str(env_dir) in lines[0] and str(env_dir) in lines[1]
    expected = sorted(p.name for p in (REPO / "cuda").iterdir() if p.suffix in (".cu", ".cuh"))
    assert eval(lines[2]) == expected and expected
    if shutil.which(os.environ.get("CC") or "cc"):  # the installed C source compiles and loads
        native = subprocess.run(
            [
                str(py),
                "-c",
                "from hps_cli.runtime.native.hash_probe import hash_probe; "
                "print(hash_probe() is not None)",
            ],
            capture_output=True,
            text=True,
            check=True,
            cwd=tmp_path,
            env={**os.environ, "HPS_KERNEL_CACHE": str(tmp_path / "cache"), "HPS_NATIVE": "1"},
        )
        assert native.stdout.strip() == "True", native.stderr
