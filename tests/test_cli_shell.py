"""The CLI shell: help on every command, import hygiene, the error boundary and exit codes."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hps_cli.runtime.errors import ExitCode

from hps_cli.commands import COMMANDS


def _loaded_after(code: str) -> set[str]:
    probe = code + "\nimport sys\nprint(','.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(out.stdout.strip().split(","))


HEAVY = {"tensorflow", "pycuda", "keras", "tf_keras", "rocksdict", "redis", "grpc", "aiohttp"}


def test_importing_the_runtime_loads_no_cli_and_no_heavy_dependency():
    mods = _loaded_after("import hps_cli.runtime, hps_cli.runtime.config, hps_cli.runtime.table")
    assert not {m for m in mods if m.split(".")[0] in HEAVY | {"click", "rich"}}
    assert "hps_cli.cli" not in mods and not any(m.startswith("hps_cli.commands") for m in mods)


def test_shared_helpers_and_bench_reports_load_no_cli_and_no_heavy_dependency():
    mods = _loaded_after(
        "import hps_cli.common.tf_loader, hps_cli.common.units, hps_cli.common.keras2_h5\n"
        "import hps_cli.bench.report"
    )
    assert not {m for m in mods if m.split(".")[0] in HEAVY | {"click", "h5py"}}


def test_help_loads_no_tensorflow_nor_pycuda():
    code = (
        "import sys\nfrom hps_cli.cli import main\nsys.argv=['hps','--help']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
    )
    mods = _loaded_after(code)
    assert not {m for m in mods if m.split(".")[0] in HEAVY}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_help(name, hps):
    res = hps(name, "--help")
    assert res.returncode == 0, res.stderr
    assert "Usage: hps " + name in res.stdout


def test_subcommands_of_table_have_help(hps):
    for sub in ("info", "verify", "generate"):
        assert hps("table", sub, "--help").returncode == 0


def test_version_and_main_module(hps):
    res = hps("--version")
    assert res.returncode == 0 and "hps" in res.stdout


def test_unknown_command_is_a_usage_error(hps):
    res = hps("frobnicate")
    assert res.returncode == ExitCode.USAGE and "No such command" in res.stderr


def test_a_missing_table_is_one_line_without_traceback(tmp_path, hps):
    res = hps("table", "verify", str(tmp_path / "missing"))
    assert res.returncode == ExitCode.INVALID
    assert "does not exist" in res.stderr and "Traceback" not in res.stderr


def test_debug_shows_traceback_for_typed_errors(tmp_path, hps):
    res = hps("--debug", "table", "generate", str(tmp_path / "x"), "--keys", "1", "--dim", "1")
    assert res.returncode == 0
    res = hps("--debug", "table", "generate", str(tmp_path / "x"), "--keys", "1", "--dim", "1")
    assert res.returncode == ExitCode.CONFLICT and "Traceback" in res.stderr
    res = hps("--json", "table", "generate", str(tmp_path / "x"), "--keys", "1", "--dim", "1")
    assert res.returncode == ExitCode.CONFLICT
    import json

    doc = json.loads(res.stdout)
    assert doc["ok"] is False and doc["error"] == "OutputExistsError" and doc["exit_code"] == 4
