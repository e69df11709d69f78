"""Pinned host buffers handed out as NumPy arrays and taken back when the arrays die.

A lookup copies its result from the GPU straight into a pinned block and returns that block as
the caller's array: no second copy of the vectors. The array's base is a small lease object;
when the last view of the result is garbage-collected, the lease gives the block back to the
pool. Allocating pinned memory is slow (it pins pages), so blocks are reused by size class; past
``max_bytes`` of pinned memory in use, results fall back to ordinary (pageable) arrays.
"""

from __future__ import annotations

import threading

import numpy as np

_MIN_BLOCK = 1 << 16


def _size_class(nbytes: int) -> int:
    size = _MIN_BLOCK
    while size < nbytes:
        size <<= 1
    return size


class _Lease:
    """Owner of a pinned block for as long as an array uses it."""

    __slots__ = ("__array_interface__", "_pool", "_block", "__weakref__")

    def __init__(self, pool: "PinnedPool", block: np.ndarray, shape: tuple, dtype: np.dtype,
                 offset: int):
        self._pool = pool
        self._block = block
        self.__array_interface__ = {
            "shape": shape, "typestr": np.dtype(dtype).str, "version": 3,
            "data": (block.ctypes.data + offset, False),
        }

    def __del__(self) -> None:
        pool, block = self._pool, self._block
        if pool is not None and block is not None:
            pool._give_back(block)


class PinnedPool:
    """Size-classed pool of page-locked blocks of one device's context."""

    def __init__(self, device, max_bytes: int = 1 << 30):
        self.device = device
        self.max_bytes = max_bytes
        self._free: dict[int, list[np.ndarray]] = {}
        self._in_use = 0
        self._lock = threading.Lock()

    def _take(self, nbytes: int) -> np.ndarray | None:
        size = _size_class(nbytes)
        with self._lock:
            free = self._free.get(size)
            if free:
                self._in_use += size
                return free.pop()
            if self._in_use + size > self.max_bytes:
                return None
            self._in_use += size
        try:
            with self.device.scope():
                return self.device.drv.pagelocked_empty(size, np.uint8)
        except Exception:
            with self._lock:
                self._in_use -= size
            return None

    def _give_back(self, block: np.ndarray) -> None:
        with self._lock:
            self._in_use -= block.nbytes
            self._free.setdefault(block.nbytes, []).append(block)

    def array(self, shape: tuple, dtype, offset: int = 0) -> tuple[np.ndarray, bool]:
        """(array, pinned): a pinned array leased from the pool, or a plain one when full.

        ``offset`` bytes before the array's data stay part of the block (e.g. for a counter
        copied along with it); ``block_view(array, offset)`` reaches them.
        """
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape)) * dtype.itemsize + offset
        block = self._take(nbytes)
        if block is None:
            return np.empty(shape, dtype), False
        lease = _Lease(self, block, tuple(int(s) for s in shape), dtype, offset)
        return np.asarray(lease), True

    @staticmethod
    def block_of(array: np.ndarray) -> np.ndarray:
        """The whole pinned block behind a leased array (for DMA of block prefix + data)."""
        base = array.base
        while base is not None and not isinstance(base, _Lease):
            base = getattr(base, "base", None)
        if base is None:
            raise ValueError("not a pinned array of this pool")
        return base._block
