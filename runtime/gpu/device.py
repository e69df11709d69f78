"""One GPU as the cache sees it: its primary context, compiled kernels and pinned-memory pool.

The device's *primary* context is used (retain, push when needed), never ``pycuda.autoinit``,
so the cache shares the GPU with TensorFlow or PyTorch in one process. The main thread, when it
has no current context, gets ours pushed and keeps it (popped at exit); any other thread gets it
pushed for the duration of each call only, because PyCUDA aborts the process when a thread ends
with a context still on its stack.
"""

from __future__ import annotations

import atexit
import threading
from contextlib import contextmanager, nullcontext
from functools import cache

import numpy as np

from ..errors import NotFoundError
from .kernels import KernelModule, import_pycuda

_lock = threading.Lock()
_devices: dict[int, "GpuDevice"] = {}
_ALREADY_CURRENT = nullcontext()  # reusable: nullcontext keeps no state


@cache
def gpu_count() -> int:
    """Usable CUDA devices (0 without PyCUDA or a driver)."""
    try:
        drv = import_pycuda()
        drv.init()
        return drv.Device.count()
    except Exception:
        return 0


def get_device(device_id: int) -> "GpuDevice":
    """The process-wide GpuDevice of a device id (created on first use)."""
    with _lock:
        device = _devices.get(device_id)
        if device is None:
            device = _devices[device_id] = GpuDevice(device_id)
        return device


class GpuDevice:
    def __init__(self, device_id: int):
        drv = import_pycuda()
        drv.init()
        if not 0 <= device_id < drv.Device.count():
            raise NotFoundError(
                f"there is no CUDA device {device_id} ({drv.Device.count()} visible)",
                location="deployed_device_list",
            )
        self.drv = drv
        self.id = device_id
        self.device = drv.Device(device_id)
        self.name = self.device.name()
        major, minor = self.device.compute_capability()
        self.arch = f"sm_{major}{minor}"
        self.sm_count = self.device.get_attribute(drv.device_attribute.MULTIPROCESSOR_COUNT)
        self.context = self.device.retain_primary_context()
        self._local = threading.local()
        with self.scope():
            self.kernels = KernelModule(self.arch)
        from .pinned import PinnedPool

        self.pinned = PinnedPool(self)
        atexit.register(self._release_main_thread)

    def scope(self):
        """Make this device's primary context current for the block."""
        current = self.drv.Context.get_current()
        if current is not None and current == self.context:
            return _ALREADY_CURRENT  # the common case, on every lookup: no generator
        return self._pushed_scope(current)

    @contextmanager
    def _pushed_scope(self, current):
        drv = self.drv
        self.context.push()
        if current is None and threading.current_thread() is threading.main_thread():
            self._local.pushed = True  # keep it: later calls of the main thread pay nothing
            yield
            return
        try:
            yield
        finally:
            drv.Context.pop()

    def _release_main_thread(self) -> None:
        if getattr(self._local, "pushed", False):
            try:
                self.drv.Context.pop()
            except Exception:
                pass
            self._local.pushed = False

    def launch_grid(self, work_items: int, threads_per_item: int, block: int = 256) -> int:
        """Blocks for a grid-stride kernel: enough to fill the device, no more than the work."""
        needed = -(-max(1, work_items) * threads_per_item // block)
        return int(max(1, min(needed, self.sm_count * (2048 // block))))

    def launch(self, name: str, arg_types: str, grid: tuple, block: tuple, stream, *args) -> None:
        """Launch a prepared kernel; device buffers may be passed as allocations or ints."""
        self.kernels.function(name, arg_types).prepared_async_call(
            grid, block, stream, *(int(a) if hasattr(a, "free") else a for a in args)
        )

    def launcher(self, name: str, arg_types: str):
        """A lean launcher (kernels.Launcher): arguments already ints and floats, no checks."""
        with self.scope():
            return self.kernels.launcher(name, arg_types)

    def alloc(self, nbytes: int):
        return self.drv.mem_alloc(max(int(nbytes), 16))

    def to_device(self, array: np.ndarray, stream=None):
        """A new device copy of a host array (asynchronous on ``stream`` when given)."""
        array = np.ascontiguousarray(array)
        buf = self.alloc(array.nbytes)
        if array.nbytes:
            if stream is None:
                self.drv.memcpy_htod(buf, array)
            else:
                self.drv.memcpy_htod_async(buf, array, stream)
        return buf
