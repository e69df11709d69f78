"""The environment variables are documented in one place (docs/config.md, rendered from
runtime/config/environment.py; test_config_validate checks the rendering) and named by
``hps --help``."""

from __future__ import annotations

import re

from helpers.paths import REPO
from hps_cli.runtime.config.environment import ENVIRONMENT

from hps_cli.cli import cli

_READ = re.compile(r"""(?:environ(?:\.get)?\(?\[?|getenv\(|envvar=)["'](HPS_[A-Z_]+)["']""")


def test_every_variable_the_code_reads_is_documented():
    sources = [*REPO.joinpath("runtime").rglob("*.py"), *REPO.joinpath("hps_cli").rglob("*.py")]
    sources.append(REPO / "tests" / "conftest.py")
    read = {name for path in sources for name in _READ.findall(path.read_text(encoding="utf-8"))}
    documented = {var.name for var in ENVIRONMENT}
    assert read >= {"HPS_CACHE_BACKEND", "HPS_DIRECT_IO", "HPS_KERNEL_CACHE", "HPS_DEBUG"}
    assert read <= documented, read - documented
    assert "HPS_WAYS" not in read  # a constant of the runtime, a knob of kernel studies only


def test_help_names_every_variable_and_the_page(runner):
    result = runner.invoke(cli, ["--help"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    for var in ENVIRONMENT:
        assert var.name in text
    assert "docs/config.md" in text
