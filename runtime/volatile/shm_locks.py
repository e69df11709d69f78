"""Locks between the processes (and threads) that share one segment file.

Linux open-file-description locks (``F_OFD_SETLK``) on single bytes of the segment file: the
kernel drops them when the process dies, so a writer killed with ``kill -9`` never wedges the
others, and they belong to one ``open()`` (not to the process), so two segments opened in one
process exclude each other too. The bytes are lock names, not data: offsets may lie beyond the
end of the file. Threads share their process's open file, so each lock also has a
``threading.Lock`` taken first.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

from ..errors import ConfigError

# struct flock of Linux (x86-64 and aarch64): l_type, l_whence, l_start, l_len, l_pid
_FLOCK = struct.Struct("hhqqi4x")
_SET_WAIT = getattr(fcntl, "F_OFD_SETLKW", None)
_SET_NOWAIT = getattr(fcntl, "F_OFD_SETLK", None)

# lock bytes of a segment
ATTACH = 0  # every attached process holds it shared; whoever gets it exclusive is alone
DIRECTORY = 1  # the segment header and the table directory
_LOAD_BASE = 1 << 16  # + table entry: held while a process loads that table
_PARTITION_BASE = 1 << 32  # + entry << 32 + partition


def load_byte(entry: int) -> int:
    return _LOAD_BASE + entry


def partition_byte(entry: int, partition: int) -> int:
    return _PARTITION_BASE + (entry << 32) + partition


def require_ofd_locks() -> None:
    if _SET_WAIT is None or not hasattr(os, "posix_fallocate"):
        raise ConfigError(
            "multi_process_hash_map needs Linux open file description locks (F_OFD_SETLK)",
            location="$.volatile_db.type",
            hint="use parallel_hash_map (in process) or redis_cluster on this system",
        )


def lock(fd: int, byte: int, *, exclusive: bool, wait: bool = True) -> bool:
    """Take (or convert) the lock on ``byte``; False when ``wait`` is off and another open file
    holds a conflicting lock."""
    kind = fcntl.F_WRLCK if exclusive else fcntl.F_RDLCK
    try:
        fcntl.fcntl(fd, _SET_WAIT if wait else _SET_NOWAIT, _FLOCK.pack(kind, 0, byte, 1, 0))
    except OSError as exc:
        if not wait and exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def unlock(fd: int, byte: int) -> None:
    fcntl.fcntl(fd, _SET_NOWAIT, _FLOCK.pack(fcntl.F_UNLCK, 0, byte, 1, 0))


class ByteLock:
    """An exclusive lock on one byte for threads of this process and other processes."""

    __slots__ = ("_fd_of", "byte", "_thread")

    def __init__(self, fd_of, byte: int):
        self._fd_of = fd_of  # a callable: the segment's current file descriptor
        self.byte = byte
        self._thread = threading.Lock()

    def reset_after_fork(self) -> None:
        self._thread = threading.Lock()  # a parent's thread may have held it while forking

    @contextmanager
    def held(self, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
        """Hold the lock; ``on_wait`` runs once when another process holds it now."""
        with self._thread:
            fd = self._fd_of()
            if not lock(fd, self.byte, exclusive=True, wait=on_wait is None):
                on_wait()
                lock(fd, self.byte, exclusive=True)
            try:
                yield
            finally:
                unlock(fd, self.byte)
