"""Find the kernel sources (cuda/) and JSON Schemas (schemas/) in a wheel and in a checkout.

In a wheel they are data folders of the package (``hps_cli/cuda``, ``hps_cli/schemas``); in an
editable install ``hps_cli.runtime`` is the repository's ``runtime/`` folder, so they are its
siblings. Both cases are the same expression: the folder next to this package's own folder.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

from .errors import NotFoundError

_PACKAGE_PARENT = Path(__file__).resolve().parent.parent


def cuda_dir() -> Path:
    """The folder that holds the ``.cu``/``.cuh`` kernel sources."""
    return _find_dir("cuda")


def schemas_dir() -> Path:
    """The folder that holds the JSON Schemas."""
    return _find_dir("schemas")


def kernel_source(name: str) -> str:
    """The text of one kernel source file, e.g. ``kernel_source("cache.cu")``."""
    path = cuda_dir() / name
    if not path.is_file():
        raise NotFoundError("kernel source not found", location=str(path))
    return path.read_text(encoding="utf-8")


@cache
def load_schema(name: str) -> dict:
    """A JSON Schema by file name, e.g. ``load_schema("ps_config.schema.json")``."""
    path = schemas_dir() / name
    if not path.is_file():
        raise NotFoundError("schema not found", location=str(path))
    return json.loads(path.read_text(encoding="utf-8"))


def _find_dir(name: str) -> Path:
    path = _PACKAGE_PARENT / name
    if not path.is_dir():
        raise NotFoundError(
            f"the package's '{name}' folder is missing",
            location=str(path),
            hint="reinstall hps-cli; the wheel or checkout is incomplete",
        )
    return path
