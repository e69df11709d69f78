"""Every error class has its hint: each HpsError subclass anywhere in the code carries a
default hint, and the CLI prints a ``hint:`` line for every failure it reports."""

from __future__ import annotations

import ast
import importlib

import pytest
from helpers.paths import REPO
from hps_cli.runtime import errors

import hps_cli.serve.protocol  # noqa: F401 - its error classes join the walk below
from hps_cli.cli import _report


def _error_classes_in_source() -> dict[str, str]:
    """class name → module of every class in hps_cli/ and runtime/ whose bases name an
    error class (found by reading the source, so a new module cannot be missed)."""
    found = {}
    for root, package in ((REPO / "runtime", "hps_cli.runtime"), (REPO / "hps_cli", "hps_cli")):
        for path in root.rglob("*.py"):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            module = ".".join([package, *path.relative_to(root).with_suffix("").parts])
            for node in ast.walk(tree):
                if isinstance(node, ast.ClassDef):
                    bases = [getattr(b, "id", getattr(b, "attr", "")) for b in node.bases]
                    if any(b.endswith("Error") for b in bases):
                        found[node.name] = module
    return found


def _all_subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _all_subclasses(sub)


def test_every_error_class_has_a_default_hint():
    found = _error_classes_in_source()
    assert {"InvalidInputError", "ConfigError", "RequestTooLargeError"} <= set(found)
    for module in found.values():
        if module.startswith("hps_cli.tf"):
            continue  # imports TensorFlow; checked below by source
        importlib.import_module(module)
    classes = {c.__name__: c for c in [errors.HpsError, *_all_subclasses(errors.HpsError)]}
    missing = set(found) - set(classes) - {"LookupInputError"}
    assert not missing, f"error classes outside the HpsError family: {missing}"
    for name, cls in classes.items():
        assert cls.default_hint and cls.default_hint.strip(), name
        exc = (
            cls("tensorflow", "tf", "a test")  # (package, extra, purpose) or a subclass's three
            if issubclass(cls, errors.DependencyMissingError)
            else cls("something is wrong", location="here")
        )
        assert exc.hint, name
    tf_errors = (REPO / "hps_cli" / "tf" / "errors.py").read_text()
    assert "default_hint" in tf_errors  # LookupInputError's own


@pytest.mark.parametrize(
    "cls",
    [errors.HpsError, *_all_subclasses(errors.HpsError)],
    ids=lambda c: c.__name__,
)
def test_the_cli_prints_a_hint_line_for_every_error_class(cls, capsys):
    exc = (
        cls("tensorflow", "tf", "a test")  # (package, extra, purpose) or a subclass's three
        if issubclass(cls, errors.DependencyMissingError)
        else cls("something is wrong")
    )
    _report(exc, debug=False, json_mode=False)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("error: ") and lines[1].startswith("hint: ") and lines[1][6:]


def test_usage_and_input_errors_end_with_a_hint(hps):
    res = hps("convert", "--no-such-option")
    assert res.returncode == 2 and res.stderr.rstrip().splitlines()[-1].startswith("hint: ")
    res = hps("convert", "/nonexistent/table", "/tmp/never-written")
    assert res.returncode == 3 and res.stderr.rstrip().splitlines()[-1].startswith("hint: ")
