"""Triton's system shared memory extension: tensors passed through POSIX shared memory.

A client on the same host creates a region (``/dev/shm/<key>``, e.g. with
``tritonclient.utils.shared_memory``), registers it under a name, and then names it in a
request: input parameters ``shared_memory_region`` / ``shared_memory_offset`` /
``shared_memory_byte_size`` say where an input's bytes are; the same parameters on a requested
output make the server write that output into the region instead of the response, which then
carries only the output's name, datatype, shape and those parameters. For large outputs (16 K
keys x dim 128 = 8 MiB) this skips the socket and the client's parsing.

Off unless ``hps serve --allow-shared-memory``; then the server must listen on loopback only,
and a region is accepted only when its file is a regular file in /dev/shm owned by the server's
own user (no other process's memory can be named). Regions are mapped at registration; a region
unregistered while a request uses it is unmapped when that request is done.
"""

from __future__ import annotations

import mmap
import os
import re
import threading
from dataclasses import dataclass

import numpy as np

from ..runtime.errors import NotFoundError
from .protocol import DATATYPES, ForbiddenError, ShmRef, Tensor, element_count, invalid

SHM_DIR = "/dev/shm"
KEY = re.compile(r"^/?[A-Za-z0-9_.\-]{1,200}$")


@dataclass
class _Region:
    name: str
    key: str
    offset: int
    byte_size: int
    map: mmap.mmap
    users: int = 0
    closed: bool = False


def enabled(shared_memory: "SharedMemoryRegions | None") -> "SharedMemoryRegions":
    """``shared_memory`` when it is on, else a ForbiddenError (403)."""
    if shared_memory is None or not shared_memory.enabled:
        raise ForbiddenError(
            "system shared memory is disabled",
            location="shared_memory",
            hint="start hps serve with --allow-shared-memory (loopback only)",
        )
    return shared_memory


class SharedMemoryRegions:
    """The registered regions of one server (thread-safe)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._regions: dict[str, _Region] = {}
        self._lock = threading.Lock()

    def _check_enabled(self) -> None:
        enabled(self)

    def register(self, name: str, key: object, offset: object, byte_size: object) -> None:
        self._check_enabled()
        if not isinstance(key, str) or not KEY.match(key) or key.lstrip("/") in (".", ".."):
            raise invalid(
                "must name a file of /dev/shm ([A-Za-z0-9_.-], an optional leading '/')", "key"
            )
        for field, value in (("offset", offset), ("byte_size", byte_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise invalid("must be a non-negative integer", field)
        if not name or len(name) > 200:
            raise invalid("a region name is 1 to 200 characters", "name")
        path = os.path.join(SHM_DIR, key.lstrip("/"))
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
        except OSError as exc:
            raise NotFoundError(
                f"cannot open shared memory '{key}': {exc.strerror}", location="key"
            ) from None
        try:
            info = os.fstat(fd)
            if not (info.st_mode & 0o170000 == 0o100000) or info.st_uid != os.getuid():
                raise ForbiddenError(
                    f"shared memory '{key}' is not a region of the server's user", location="key"
                )
            if offset + byte_size > info.st_size or byte_size == 0:
                raise invalid(
                    f"offset {offset} + byte_size {byte_size} exceeds the region's "
                    f"{info.st_size} bytes (or byte_size is 0)",
                    "byte_size",
                )
            mapping = mmap.mmap(fd, info.st_size)
        finally:
            os.close(fd)
        with self._lock:
            if name in self._regions:
                mapping.close()
                raise invalid(f"a region named '{name}' is already registered", "name")
            self._regions[name] = _Region(name, key, offset, byte_size, mapping)

    def unregister(self, name: str | None = None) -> None:
        self._check_enabled()
        with self._lock:
            names = list(self._regions) if name is None else [name]
            for n in names:
                region = self._regions.pop(n, None)
                if region is None:
                    continue  # as Triton: unregistering an unknown region is not an error
                region.closed = True
                if region.users == 0:
                    region.map.close()

    def status(self, name: str | None = None) -> list[dict]:
        self._check_enabled()
        with self._lock:
            if name is not None and name not in self._regions:
                raise NotFoundError(f"no shared memory region '{name}'", location="name")
            regions = (
                [self._regions[name]]
                if name is not None
                else [self._regions[n] for n in sorted(self._regions)]
            )
            return [
                {"name": r.name, "key": r.key, "offset": r.offset, "byte_size": r.byte_size}
                for r in regions
            ]

    def _acquire(self, ref: ShmRef, where: str) -> _Region:
        self._check_enabled()
        with self._lock:
            region = self._regions.get(ref.region)
            if region is None:
                raise NotFoundError(
                    f"no shared memory region '{ref.region}'",
                    location=f"{where}.shared_memory_region",
                )
            if ref.offset + ref.byte_size > region.byte_size:
                raise invalid(
                    f"offset {ref.offset} + byte_size {ref.byte_size} exceeds the "
                    f"region's {region.byte_size} bytes",
                    f"{where}.shared_memory_byte_size",
                )
            region.users += 1
            return region

    def _release(self, region: _Region) -> None:
        with self._lock:
            region.users -= 1
            if region.closed and region.users == 0:
                region.map.close()

    def read(
        self, name: str, datatype: str, shape: tuple[int, ...], ref: ShmRef, where: str
    ) -> Tensor:
        """An input tensor copied out of its region."""
        dtype = DATATYPES[datatype]
        size = element_count(shape) * dtype.itemsize
        if size != ref.byte_size:
            raise invalid(
                f"shared_memory_byte_size {ref.byte_size} for shape {list(shape)} of "
                f"{datatype} (expected {size})",
                f"{where}.shared_memory_byte_size",
            )
        region = self._acquire(ref, where)
        try:
            start = region.offset + ref.offset
            array = (
                np.frombuffer(region.map, dtype=dtype, count=element_count(shape), offset=start)
                .reshape(shape)
                .copy()
            )
        finally:
            self._release(region)
        return Tensor(name, datatype, array)

    def write(self, ref: ShmRef, array: np.ndarray, where: str) -> None:
        """Write an output into its region (run it in a worker thread: it copies)."""
        if array.nbytes > ref.byte_size:
            raise invalid(
                f"the output needs {array.nbytes} bytes; the region gives {ref.byte_size}",
                f"{where}.shared_memory_byte_size",
            )
        region = self._acquire(ref, where)
        try:
            start = region.offset + ref.offset
            target = np.frombuffer(region.map, dtype=np.uint8, count=array.nbytes, offset=start)
            target[:] = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
            del target
        finally:
            self._release(region)

    def close(self) -> None:
        with self._lock:
            for region in self._regions.values():
                region.closed = True
                if region.users == 0:
                    region.map.close()
            self._regions.clear()
