"""Key hashing shared with HPS, vectorized over NumPy arrays.

``mix64`` is HPS's rrxmrrxmsx_0 mixer (Pelle Evensen), which HPS uses to pick the hash-map and
Redis partition of a key (``mix64(key) % num_partitions``). Matching it bit for bit keeps Redis
data interchangeable with HPS deployments.
"""

from __future__ import annotations

import numpy as np

_M1 = np.uint64(0xA24BAED4963EE407)
_M2 = np.uint64(0x9FB21C651E98DF25)


def _rotr(x: np.ndarray, r: int) -> np.ndarray:
    return (x >> np.uint64(r)) | (x << np.uint64(64 - r))


def mix64(keys: np.ndarray) -> np.ndarray:
    """rrxmrrxmsx_0 of each key, as uint64 (keys are reinterpreted as unsigned 64-bit)."""
    x = np.ascontiguousarray(keys).astype(np.int64, copy=False).view(np.uint64)
    with np.errstate(over="ignore"):
        x = x ^ _rotr(x, 25) ^ _rotr(x, 50)
        x = x * _M1
        x = x ^ _rotr(x, 24) ^ _rotr(x, 49)
        x = x * _M2
        return x ^ (x >> np.uint64(28))


def partition_of(keys: np.ndarray, num_partitions: int) -> np.ndarray:
    """HPS's partition index of each key: ``mix64(key) % num_partitions`` (int64)."""
    return (mix64(keys) % np.uint64(num_partitions)).astype(np.int64)
