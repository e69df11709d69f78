"""Writing large files front to back straight to the disk (O_DIRECT), durably and fast.

Buffered writes must allocate a page-cache page per 4 KiB, leave it dirty for the final fsync
and evict someone else's cached data; on the shared VMs this project runs on, that allocation
dominated conversions and varied 5x between runs (docs/benchmarks.md), while O_DIRECT writes ran
at the disk's 3 GB/s every time. Page-aligned whole blocks are written from the caller's buffer
as they come; anything else is copied through an aligned staging buffer; the last partial block
is padded, written and cut off with ftruncate. File systems that refuse O_DIRECT, at open
(tmpfs) or at the first write (some FUSE and network ones), get buffered writes, as do files
opened with ``direct=False`` (the table writer's choice below 64 MiB); ``HPS_DIRECT_IO=0``
forces buffered writes everywhere.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np

from .errors import HpsError

ALIGN = 4096  # O_DIRECT: buffer address, length and file offset in whole 4 KiB blocks
STAGE_BYTES = 8 << 20
_ADVISE_BYTES = 8 << 20
_FADVISE = hasattr(os, "posix_fadvise")


def direct_io_enabled() -> bool:
    return hasattr(os, "O_DIRECT") and os.environ.get("HPS_DIRECT_IO", "1") != "0"


def aligned_view(owner: np.ndarray, nbytes: int) -> np.ndarray:
    """``nbytes`` of byte array ``owner`` (which has ALIGN bytes to spare) starting on a 4 KiB
    boundary; a view, so its base is ``owner``."""
    start = -owner.ctypes.data % ALIGN
    return owner[start : start + nbytes]


def aligned_empty(nbytes: int) -> np.ndarray:
    """An uninitialized byte array that starts on a 4 KiB boundary."""
    return aligned_view(np.empty(nbytes + ALIGN, dtype=np.uint8), nbytes)


def whole_page_rows(rows: int) -> int:
    """``rows`` rounded down to a multiple of 1024 (when at least 1024): chunks of that many
    rows of float32 vectors span whole 4 KiB pages, which DirectFile writes without staging."""
    return rows // 1024 * 1024 if rows >= 1024 else rows


class DirectFile:
    """A new file written sequentially; ``close`` finishes it (optionally fsynced).

    Args:
        path: the file to create (truncated if it exists).
        expected_bytes: its final size when known: on the O_DIRECT path the blocks are reserved
            up front (a full disk fails here, before any copying), and the file is trimmed at
            ``close`` if less came.
        direct: write with O_DIRECT when the file system allows it.
    """

    def __init__(self, path: Path | str, *, expected_bytes: int = 0, direct: bool = True):
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        self.bytes = 0  # bytes written so far (what the file will hold)
        self.bytes_on_disk = 0  # of those, bytes written through the O_DIRECT descriptor
        self._allocated = 0
        self._advised = 0  # buffered: bytes already handed to write-back
        self._direct: int | None = None
        self._stage: np.ndarray | None = None
        self._staged = 0
        try:
            if direct and direct_io_enabled():
                try:
                    self._direct = os.open(self.path, os.O_WRONLY | os.O_DIRECT)
                except OSError:  # e.g. tmpfs: buffered writes
                    self._direct = None
            # Only on the disk path: on tmpfs, reserving means zero-filling memory pages that
            # the writes then fill again (measured 2x slower).
            if expected_bytes > 0 and self._direct is not None:
                self._preallocate(expected_bytes)
        except BaseException:
            self.discard()
            raise

    @property
    def is_direct(self) -> bool:
        return self._direct is not None

    @property
    def staged(self) -> bool:
        """Whether any write so far needed the staging copy."""
        return self._stage is not None

    def _preallocate(self, size: int) -> None:
        if not hasattr(os, "posix_fallocate"):
            return
        try:
            os.posix_fallocate(self._fd, 0, size)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise HpsError(
                    f"not enough free space for {size:,} bytes",
                    location=str(self.path),
                    hint="free space or write somewhere else",
                ) from exc
            return  # the file system cannot reserve (EOPNOTSUPP, EINVAL): write as usual
        self._allocated = size

    def write(self, data) -> None:
        """Append ``data`` (bytes, a memoryview or a contiguous array)."""
        view = memoryview(data).cast("B")
        if self._direct is not None:
            try:
                self._write_direct(np.frombuffer(view, dtype=np.uint8))
            except OSError as exc:
                # A file system that opened O_DIRECT but refuses its writes (some FUSE and
                # network ones): nothing has reached the disk yet, so go buffered from here.
                if exc.errno != errno.EINVAL or self.bytes_on_disk:
                    raise
                self._fall_back_to_buffered(view)
        else:
            written = 0
            while written < len(view):  # raw writes may be partial
                written += os.write(self._fd, view[written:])
            if _FADVISE and self.bytes + len(view) - self._advised >= _ADVISE_BYTES:
                # Start writing back what we wrote (asynchronously) instead of leaving it all
                # to the final fsync. Only the new range: advising the whole file each time
                # would rescan it (quadratic).
                end = self.bytes + len(view)
                os.posix_fadvise(
                    self._fd, self._advised, end - self._advised, os.POSIX_FADV_DONTNEED
                )
                self._advised = end
        self.bytes += len(view)

    def _fall_back_to_buffered(self, view: memoryview) -> None:
        """Rewrite everything so far (still all in the staging buffer) and ``view`` buffered."""
        earlier = (
            memoryview(self._stage[: self.bytes]) if self._stage is not None else memoryview(b"")
        )
        for part, offset in ((earlier, 0), (view, self.bytes)):
            written = 0
            while written < len(part):
                written += os.pwrite(self._fd, part[written:], offset + written)
        os.lseek(self._fd, self.bytes + len(view), os.SEEK_SET)
        os.close(self._direct)
        self._direct, self._stage, self._staged = None, None, 0

    def _write_direct(self, data: np.ndarray) -> None:
        if self._staged:  # top up the staged blocks first, so file offsets stay aligned
            data = data[self._stage_in(data) :]
        if not self._staged:
            whole = data.size // ALIGN * ALIGN
            if whole and data.ctypes.data % ALIGN == 0:  # straight from the caller's buffer
                self._pwrite(data[:whole])
                data = data[whole:]
        while data.size:
            data = data[self._stage_in(data) :]

    def _stage_in(self, data: np.ndarray) -> int:
        """Copy what fits of ``data`` into the staging buffer (written out when full)."""
        if self._stage is None:
            self._stage = aligned_empty(STAGE_BYTES)
        take = min(data.size, self._stage.size - self._staged)
        self._stage[self._staged : self._staged + take] = data[:take]
        self._staged += take
        if self._staged == self._stage.size:
            self._pwrite(self._stage)
            self._staged = 0
        return take

    def _pwrite(self, data: np.ndarray) -> None:
        view, done = memoryview(data), 0
        while done < data.size:
            done += os.pwrite(self._direct, view[done:], self.bytes_on_disk + done)
        self.bytes_on_disk += done

    def close(self, sync: bool = True) -> None:
        """Finish the file: the last partial block, the final size, fsync when asked."""
        if self._fd < 0:
            return
        try:
            if self._direct is not None and self._staged:  # padded to a whole block
                padded = -(-self._staged // ALIGN) * ALIGN
                self._stage[self._staged : padded] = 0
                try:
                    self._pwrite(self._stage[:padded])
                except OSError as exc:  # the first O_DIRECT write of the file, refused
                    if exc.errno != errno.EINVAL or self.bytes_on_disk:
                        raise
                    self._fall_back_to_buffered(memoryview(b""))
                self._staged = 0
            if self._direct is not None or self._allocated > self.bytes:
                os.ftruncate(self._fd, self.bytes)
            if sync:
                os.fsync(self._fd)
        finally:
            self.discard()

    def discard(self) -> None:
        """Close without finishing (the file is about to be deleted)."""
        direct, fd = self._direct, self._fd
        self._direct, self._fd = None, -1
        try:
            if direct is not None:
                os.close(direct)
        finally:
            if fd >= 0:
                os.close(fd)
