"""Choosing the cache implementation: the GPU when one is usable, else the NumPy reference.

``HPS_CACHE_BACKEND=reference`` forces the reference (e.g. to compare both on a GPU machine);
``HPS_CACHE_BACKEND=gpu`` makes a missing GPU an error instead of a silent fallback.
"""

from __future__ import annotations

import os

from ..errors import DependencyMissingError
from ..table.reader import TableReader
from .device import get_device, gpu_count
from .placement import num_sets_for
from .ref_backends import RefDynamicBackend, RefIndexedBackend


def backend_kind(device_id: int) -> str:
    """ "gpu" or "reference" for caches on ``device_id``."""
    wanted = os.environ.get("HPS_CACHE_BACKEND", "auto").lower()
    if wanted == "reference":
        return "reference"
    usable = 0 <= device_id < gpu_count()
    if wanted == "gpu" and not usable:
        raise DependencyMissingError("pycuda", "gpu", f"a GPU cache on device {device_id}")
    return "gpu" if usable else "reference"


def dynamic_backend(device_id: int, table_rows: int, gpucacheper: float, dim: int):
    num_sets = num_sets_for(table_rows, gpucacheper)
    if backend_kind(device_id) == "gpu":
        from .gpu_dynamic import GpuDynamicCache

        return GpuDynamicCache(get_device(device_id), num_sets, dim)
    return RefDynamicBackend(num_sets, dim)


def indexed_backend(device_id: int, reader: TableReader, device_rows: int):
    if backend_kind(device_id) == "gpu":
        from .gpu_indexed import GpuIndexedTable

        return GpuIndexedTable(get_device(device_id), reader, device_rows)
    return RefIndexedBackend(reader, device_rows)
