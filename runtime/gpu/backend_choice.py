"""Choosing where a cache's rows live: on the GPU when one is usable.

Without a usable GPU (no CUDA device, or no PyCUDA) a dynamic cache is not built at all: its
table is served straight from the CPU tiers, which answer a lookup faster than a cache emulated
on the CPU in front of them would (the NumPy reference costs as much per key as the tiers
themselves, plus its misses). Static and uvm tables fall back to the NumPy reference of their
indexed table: they may have no CPU tiers behind them.

``HPS_CACHE_BACKEND`` (read each time a cache is built; docs/config.md, "Environment
variables"): ``auto`` (the default) as above; ``reference`` builds the NumPy reference of every
cache (tests, and comparing both on a GPU machine); ``gpu`` makes a missing GPU an error.
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


def reference_wanted() -> bool:
    """True when ``HPS_CACHE_BACKEND=reference`` asks for the NumPy reference caches."""
    return os.environ.get("HPS_CACHE_BACKEND", "auto").lower() == "reference"


def use_gpu(device_id: int) -> bool:
    """True: caches on ``device_id`` go on that GPU; False: no usable GPU, or the reference
    was asked for."""
    wanted = os.environ.get("HPS_CACHE_BACKEND", "auto").lower()
    if wanted == "reference":
        return False
    usable = 0 <= device_id < gpu_count()
    if wanted == "gpu" and not usable:
        raise DependencyMissingError("pycuda", "gpu", f"a GPU cache on device {device_id}")
    return usable


def dynamic_backend(
    device_id: int, table_rows: int, gpucacheper: float, dim: int
) -> DynamicBackend | None:
    """The dynamic cache's backend, or None when there is no usable GPU (and the reference
    was not asked for): the table is then served from its CPU tiers."""
    num_sets = num_sets_for(table_rows, gpucacheper)
    if use_gpu(device_id):
        from .gpu_dynamic import GpuDynamicCache

        return GpuDynamicCache(get_device(device_id), num_sets, dim)
    if reference_wanted():
        return RefDynamicBackend(num_sets, dim)
    return None


def indexed_backend(
    device_id: int, reader: TableReader | FusedTableReader, device_rows: int
) -> IndexedBackend:
    if use_gpu(device_id):
        from .gpu_indexed import GpuIndexedTable

        return GpuIndexedTable(get_device(device_id), reader, device_rows)
    return RefIndexedBackend(reader, device_rows)
