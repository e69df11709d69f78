"""Choosing where a cache's rows live: the GPU when one is usable, else the NumPy reference.

``HPS_CACHE_BACKEND`` (read each time a cache is built; docs/config.md, "Environment
variables"): ``auto`` (the default) as above; ``reference`` forces the reference (e.g. to compare
both on a GPU machine); ``gpu`` makes a missing GPU an error instead of a silent fallback.
"""

from __future__ import annotations

import os

from ..errors import DependencyMissingError
from ..seams import DynamicBackend, IndexedBackend
from ..table.fused_reader import FusedTableReader
from ..table.reader import TableReader
from .device import get_device, gpu_count
from .placement import num_sets_for
from .ref_backends import RefDynamicBackend, RefIndexedBackend


def use_gpu(device_id: int) -> bool:
    """True: caches on ``device_id`` go on that GPU; False: on the NumPy reference."""
    wanted = os.environ.get("HPS_CACHE_BACKEND", "auto").lower()
    if wanted == "reference":
        return False
    usable = 0 <= device_id < gpu_count()
    if wanted == "gpu" and not usable:
        raise DependencyMissingError("pycuda", "gpu", f"a GPU cache on device {device_id}")
    return usable


def dynamic_backend(
    device_id: int, table_rows: int, gpucacheper: float, dim: int
) -> DynamicBackend:
    num_sets = num_sets_for(table_rows, gpucacheper)
    if use_gpu(device_id):
        from .gpu_dynamic import GpuDynamicCache

        return GpuDynamicCache(get_device(device_id), num_sets, dim)
    return RefDynamicBackend(num_sets, dim)


def indexed_backend(
    device_id: int, reader: TableReader | FusedTableReader, device_rows: int
) -> IndexedBackend:
    if use_gpu(device_id):
        from .gpu_indexed import GpuIndexedTable

        return GpuIndexedTable(get_device(device_id), reader, device_rows)
    return RefIndexedBackend(reader, device_rows)
