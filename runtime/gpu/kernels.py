"""Compiling the kernels of cuda/ with PyCUDA, once per process and device, cached on disk.

Flags and -D constants live here only (``kernel_defines``, ``nvcc_flags``); the compile-only CI
test uses the same functions, so what CI checks is what runs. PyCUDA is imported lazily.
"""

from __future__ import annotations

import os
import struct
import threading
from pathlib import Path

from ..errors import DependencyMissingError
from ..resources import cuda_dir
from .placement import EMPTY_KEY, HIT_SAMPLE_SHIFT, HIT_WEIGHT_CAP, WAYS

SOURCES = ("dynamic_cache.cu", "batch_ops.cu", "indexed_table.cu")
TILE_WIDTHS = (2, 4, 8, 16, 32)


def kernel_defines() -> dict[str, str]:
    return {
        "HPS_EMPTY_KEY": f"{EMPTY_KEY}LL",
        "HPS_WAYS": str(WAYS),
        "HPS_HIT_SAMPLE_SHIFT": str(HIT_SAMPLE_SHIFT),
        "HPS_HIT_WEIGHT_CAP": str(HIT_WEIGHT_CAP),
    }


def nvcc_flags(extra_defines: dict[str, str] | None = None) -> list[str]:
    defines = {**kernel_defines(), **(extra_defines or {})}
    return ["-std=c++17", "-O3", *(f"-D{k}={v}" for k, v in defines.items())]


def cache_dir() -> str:
    """PyCUDA's on-disk cubin cache (keyed by source, flags, arch and nvcc version)."""
    base = os.environ.get("HPS_KERNEL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "hps", "kernels"
    )
    Path(base).mkdir(parents=True, exist_ok=True)
    return base


def import_pycuda():
    """``pycuda.driver`` or a DependencyMissingError naming the extra to install."""
    try:
        import pycuda.driver as drv
    except ImportError as exc:
        raise DependencyMissingError("pycuda", "gpu", "the GPU embedding cache") from exc
    return drv


class Launcher:
    """One kernel, launched with as little Python as possible: the arguments (ints, floats,
    already device addresses) packed by a precompiled struct, then PyCUDA's launch call.

    ``prepared_async_call`` does the same work plus an import, a texture-reference loop and
    argument checks on every call; on the hot path of a small lookup those cost as much as the
    driver's launch itself. The packing is C's, as CUDA lays kernel parameters out (each at its
    natural alignment), which is also what PyCUDA's own packer produces.
    """

    __slots__ = ("_launch", "_pack")

    def __init__(self, function, arg_types: str):
        self._launch = function._launch_kernel
        self._pack = struct.Struct(arg_types).pack

    def __call__(self, grid: tuple, block: tuple, stream, *args) -> None:
        self._launch(grid, block, self._pack(*args), 0, stream)


class KernelModule:
    """The compiled kernels of one device: functions by name, prepared on first use.

    Must be created and used with the device's primary context current.
    """

    _lock = threading.Lock()

    def __init__(self, arch: str, extra_defines: dict[str, str] | None = None):
        from pycuda.compiler import SourceModule

        include = str(cuda_dir().resolve())
        self.arch = arch
        self._modules = []
        for name in SOURCES:
            source = (cuda_dir() / name).read_text(encoding="utf-8")
            # no_extern_c: entry points are written extern "C" themselves (templates inside).
            self._modules.append(
                SourceModule(
                    source,
                    no_extern_c=True,
                    include_dirs=[include],
                    options=nvcc_flags(extra_defines),
                    arch=arch,
                    cache_dir=cache_dir(),
                )
            )
        self._prepared: dict[str, object] = {}

    def function(self, name: str, arg_types: str):
        """A prepared kernel (``arg_types`` in struct codes, e.g. ``"PqPi"``)."""
        fn = self._prepared.get(name)
        if fn is None:
            with self._lock:
                fn = self._prepared.get(name)
                if fn is None:
                    for module in self._modules:
                        try:
                            fn = module.get_function(name)
                            break
                        except Exception:  # pycuda.driver.LogicError: not in this module
                            continue
                    if fn is None:
                        raise KeyError(f"kernel {name} not found")
                    fn.prepare(arg_types)
                    self._prepared[name] = fn
        return fn

    def launcher(self, name: str, arg_types: str) -> Launcher:
        """A lean launcher of a kernel (see Launcher); its arguments must be plain numbers."""
        return Launcher(self.function(name, arg_types), arg_types)
