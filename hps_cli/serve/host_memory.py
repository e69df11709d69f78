"""The server process's host memory: its resident size, and handing freed heap back.

When a model is unloaded its tables (hash maps, cache reference arrays) are freed. Big NumPy
arrays are their own mappings and go back to the system at once; what glibc's heap holds
(small blocks, arenas of the worker threads) stays mapped until ``malloc_trim`` returns the
free pages, so the resident size shows what was freed.

Request bodies are the other large, short-lived blocks: a body of megabytes is read, checked
and refused or decoded on one of several threads. glibc serves such a block from a fresh
mapping, but after one is freed it raises its mapping threshold to that size, so that later
bodies come from the threads' heap arenas and stay resident after they are freed, one arena
after another (hostile clients took a server from 95 to 262 MiB that way). The server fixes the
threshold instead (``map_large_blocks``): blocks of a megabyte or more are always their own
mappings and go back to the system when freed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from functools import cache


@cache
def _libc():
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.malloc_trim  # noqa: B018 - glibc only
    except (OSError, AttributeError):
        return None
    return libc


def release_free_memory() -> None:
    """Return the heap's free pages to the system (glibc's ``malloc_trim``; elsewhere a no-op)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
LARGE_BLOCK_BYTES = 1 << 20


def map_large_blocks() -> None:
    """Allocate blocks of ``LARGE_BLOCK_BYTES`` or more as their own mappings for the rest of
    the process (setting the threshold also stops glibc from raising it; elsewhere a no-op)."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(M_MMAP_THRESHOLD, LARGE_BLOCK_BYTES)


def rss_bytes() -> int:
    """The process's resident set size (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0
