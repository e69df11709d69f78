"""CRC-32 of table and model files (``table.json``, manifests, change detection at start-up).

zlib's polynomial and values, so sidecars written by either implementation agree. zlib-ng's
vectorized CRC (a core dependency) runs at about 34 GB/s here against 4 GB/s for the zlib that
Python links, which makes it a rounding error in a conversion instead of a third of its time;
the standard library's is the fallback where zlib-ng is not installed.
"""

from __future__ import annotations

try:
    from zlib_ng.zlib_ng import crc32
except ImportError:  # pragma: no cover - zlib-ng is a core dependency
    from zlib import crc32

__all__ = ["crc32", "file_crc32"]

_BLOCK = 16 << 20


def file_crc32(path) -> tuple[int, int]:
    """(CRC-32, size in bytes) of a whole file, read in 16 MiB blocks."""
    crc, size = 0, 0
    with open(path, "rb") as handle:
        while block := handle.read(_BLOCK):
            crc = crc32(block, crc)
            size += len(block)
    return crc, size
