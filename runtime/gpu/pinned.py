"""Pinned host buffers handed out as NumPy arrays and taken back when the arrays die.

A lookup's result lives in a pinned block that is returned as the caller's array: no second copy
of the vectors. The blocks are mapped into the device's address space, so a small lookup's
kernel can write the rows (and the count in front of them) straight into the block
(transfers.py).

The array's base is a small lease object; when the last view of the result is garbage-collected,
the lease gives the block back to the pool. Allocating pinned memory is slow (it pins pages), so
blocks are reused by size class; past ``max_bytes`` of pinned memory in use, results fall back to
ordinary (pageable) arrays.
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


def mapped_empty(drv, nbytes: int) -> tuple[np.ndarray, int]:
    """A page-locked uint8 array mapped into the current context's device, and its device
    address (with unified addressing the same number as the host address)."""
    host = drv.pagelocked_empty(nbytes, np.uint8, mem_flags=drv.host_alloc_flags.DEVICEMAP)
    return host, int(host.base.get_device_pointer())


class PinnedBlock:
    """One page-locked block: its bytes, their host and device addresses, and the 16 bytes at
    its head as uint32 words (where a kernel publishes the count that precedes the rows)."""

    __slots__ = ("host", "address", "device_ptr", "head")

    def __init__(self, host: np.ndarray, device_ptr: int):
        self.host = host
        self.address = host.ctypes.data
        self.device_ptr = device_ptr
        self.head = host[:16].view(np.uint32)


class _Lease:
    """Owner of a pinned block for as long as an array uses it."""

    __slots__ = ("__array_interface__", "_pool", "block", "__weakref__")

    def __init__(
        self, pool: "PinnedPool", block: PinnedBlock, shape: tuple, typestr: str, offset: int
    ):
        self._pool = pool
        self.block = block
        self.__array_interface__ = {
            "shape": shape,
            "typestr": typestr,
            "version": 3,
            "data": (block.address + offset, False),
        }

    def __del__(self) -> None:
        pool, block = self._pool, self.block
        if pool is not None and block is not None:
            pool._give_back(block)


class PinnedPool:
    """Size-classed pool of mapped page-locked blocks of one device's context."""

    def __init__(self, device, max_bytes: int = 1 << 30):
        self.device = device
        self.max_bytes = max_bytes
        self._free: dict[int, list[PinnedBlock]] = {}
        self._in_use = 0
        # Reentrant: a collection triggered by an allocation under the lock may run a lease's
        # __del__, which gives its block back on the same thread.
        self._lock = threading.RLock()

    def _take(self, nbytes: int) -> PinnedBlock | None:
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
                return PinnedBlock(*mapped_empty(self.device.drv, size))
        except Exception:
            with self._lock:
                self._in_use -= size
            return None

    def _give_back(self, block: PinnedBlock) -> None:
        with self._lock:
            self._in_use -= block.host.nbytes
            self._free.setdefault(block.host.nbytes, []).append(block)

    def array(
        self, shape: tuple[int, ...], dtype, offset: int = 0
    ) -> tuple[np.ndarray, PinnedBlock | None]:
        """(array, block): an array leased from a pinned block, or a plain one and None when
        the pool is full.

        ``offset`` bytes before the array's data stay part of the block (e.g. for a counter
        written along with the rows); ``block.head`` reaches them.
        """
        dtype = np.dtype(dtype)
        count = 1
        for extent in shape:
            count *= int(extent)
        block = self._take(count * dtype.itemsize + offset)
        if block is None:
            return np.empty(shape, dtype), None
        lease = _Lease(self, block, tuple(int(s) for s in shape), dtype.str, offset)
        return np.asarray(lease), block

    @staticmethod
    def block_of(array: np.ndarray) -> PinnedBlock:
        """The pinned block behind a leased array."""
        base = array.base
        while base is not None and not isinstance(base, _Lease):
            base = getattr(base, "base", None)
        if base is None:
            raise ValueError("not a pinned array of this pool")
        return base.block
