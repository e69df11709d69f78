"""Moving a lookup's keys to a kernel and its rows back: staging buffers and the two routes.

A lookup kernel reads n keys and writes ``[count | n rows]``: a 16-byte head whose first word
receives the count the kernel publishes (misses or hits), then the rows. ``start_rows`` picks
the route by the result's size:

- mapped (small results, the latency path): the keys are copied into mapped pinned staging and
  the kernel reads them there; it writes the head and rows straight into the result's pinned
  block, and its last block publishes the count there (hps::publish_total). One launch and one
  wait, nothing else queued: a 2,000-key lookup spends its time on the bus, not on driver calls.
- copied (large results, or the pinned pool full): keys copied in, head and rows written to
  device memory, then copied out in one copy-engine transfer. The kernel frees its SMs as soon
  as it is done instead of holding them for the whole bus transfer; for large results that costs
  no latency (``MAPPED_RESULT_MAX_BYTES``).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .pinned import PinnedBlock, mapped_empty

HEAD_BYTES = 16  # room for a count in front of the rows, keeping the rows 16-byte aligned
# Results up to this size take the mapped route. Measured on an H100 80GB HBM3, one lookup at a
# time, dim 128, all hits: mapped/copied latency 0.68-0.75 at 2,000 keys, 0.93-0.96 at 16 K keys
# (8 MiB), 0.99-1.04 at 64 K (32 MiB). Past 8 MiB the gain is within noise while the kernel
# holds its SMs for the whole bus transfer, which concurrent lookups would feel.
MAPPED_RESULT_MAX_BYTES = 8 << 20


class Scratch:
    """Device buffers and mapped pinned host buffers that grow to the largest request seen."""

    def __init__(self, device):
        self.device = device
        self._bufs: dict[str, tuple[int, object]] = {}
        self._host: dict[str, tuple[np.ndarray, int]] = {}

    def get(self, name: str, nbytes: int):
        size, buf = self._bufs.get(name, (0, None))
        if buf is None or size < nbytes:
            size = max(nbytes, 2 * size, 4096)
            buf = self.device.alloc(size)
            self._bufs[name] = (size, buf)
        return buf

    def ptr(self, name: str, nbytes: int) -> int:
        """The device address of buffer ``name`` (as ``get``)."""
        return int(self.get(name, nbytes))

    def mapped(self, name: str, count: int, dtype) -> tuple[np.ndarray, int]:
        """A pinned host array of ``count`` items (grown on demand) and its device address:
        kernels may read it directly."""
        dtype = np.dtype(dtype)
        buf, device_ptr = self._host.get(name, (None, 0))
        if buf is None or buf.nbytes < count * dtype.itemsize:
            nbytes = max(count * dtype.itemsize, 2 * (0 if buf is None else buf.nbytes), 4096)
            buf, device_ptr = self._host[name] = mapped_empty(self.device.drv, nbytes)
        return buf[: count * dtype.itemsize].view(dtype), device_ptr

    def host(self, name: str, count: int, dtype) -> np.ndarray:
        """A pinned host staging array of ``count`` items (grown on demand)."""
        return self.mapped(name, count, dtype)[0]

    def free(self) -> None:
        """Give every buffer back now, device and pinned host memory alike (usable again
        afterwards). The caller holds the device's context and has waited for every kernel and
        copy that uses these buffers."""
        for _, buf in self._bufs.values():
            buf.free()
        for host, _ in self._host.values():
            host.base.free()
        self._bufs.clear()
        self._host.clear()

    def upload(self, name: str, array: np.ndarray, stream, order: np.ndarray | None = None):
        """Copy a host array to this scratch's device buffer ``name`` through pinned staging;
        with ``order``, its rows ``array[order]``, gathered straight into the staging (one
        copy of the rows on the host, not two)."""
        if order is None:
            staging = self.host(name, array.size, array.dtype)
            np.copyto(staging, array.reshape(-1))
        else:
            rows = array.reshape(array.shape[0], -1)
            staging = self.host(name, order.size * rows.shape[1], array.dtype)
            np.take(rows, order, axis=0, out=staging.reshape(order.size, rows.shape[1]))
        buf = self.get(name, max(staging.nbytes, 8))
        if staging.size:
            self.device.drv.memcpy_htod_async(buf, staging, stream)
        return buf


def free_device_state(stream, buffers, scratches) -> None:
    """Free a backend's memory now, on the calling thread (the device's context current): wait
    for its stream, free its device ``buffers`` and ``scratches``. Left to the garbage
    collector, it could be freed on a thread without the context, where PyCUDA can only warn
    and leak it. The caller drops its reference to the stream afterwards, while the context is
    still current."""
    stream.synchronize()
    for buf in buffers:
        buf.free()
    for scratch in scratches:
        scratch.free()


def start_rows(
    device,
    stream,
    ws: Scratch,
    keys: np.ndarray,
    dim: int,
    launch: Callable[[int, int, bool], None],
) -> tuple[np.ndarray, Callable[[], int]]:
    """Queue a lookup kernel over host int64 ``keys``; returns (rows, wait): ``rows`` is filled
    once ``wait()`` (which returns the count) has returned.

    ``launch(d_keys, d_block, publish)`` queues on ``stream`` a kernel that reads the keys at
    ``d_keys`` and writes the rows after the head at ``d_block``, and the count into the head's
    first word: published there from the kernel's own self-resetting counter when ``publish``
    (the mapped route), else counted there directly (zeroed here first). The rows come back in a
    leased pinned array when the pool has room (module doc for the routes).
    """
    n = keys.size
    out, block = device.pinned.array((n, dim), np.float32, offset=HEAD_BYTES)
    if not n:
        return out, _zero
    if block is not None and out.nbytes <= MAPPED_RESULT_MAX_BYTES:
        staged, d_keys = ws.mapped("keys", n, np.int64)
        np.copyto(staged, keys)
        launch(d_keys, block.device_ptr, True)
        return out, _head_after(stream, block)
    d_keys = int(ws.upload("keys", keys, stream))
    d_block = ws.ptr("out", HEAD_BYTES + out.nbytes)
    device.drv.memset_d32_async(d_block, 0, 1, stream)
    launch(d_keys, d_block, False)
    return out, queue_download(device, stream, d_block, out, block)


def _zero() -> int:
    return 0


def _head_after(stream, block: PinnedBlock) -> Callable[[], int]:
    """A wait for ``stream`` that then reads the count in ``block``'s head."""

    def wait() -> int:
        stream.synchronize()
        return int(block.head[0])

    return wait


def queue_download(
    device, stream, d_block: int, out: np.ndarray, block: PinnedBlock | None
) -> Callable[[], int]:
    """Queue the copy of ``[count | rows]`` from device memory at ``d_block`` into ``out``
    (leased from ``block``, or a pageable array when ``block`` is None); returns the wait,
    which gives the count."""
    if block is not None:
        device.drv.memcpy_dtoh_async(block.host[: HEAD_BYTES + out.nbytes], d_block, stream)
        return _head_after(stream, block)

    def pageable() -> int:  # synchronous copies, after the stream's work
        head = np.empty(4, np.uint32)
        device.drv.memcpy_dtoh_async(head, d_block, stream)
        stream.synchronize()
        if out.size:
            device.drv.memcpy_dtoh(out, d_block + HEAD_BYTES)
        return int(head[0])

    return pageable
