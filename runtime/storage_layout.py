"""HPS's names and byte layouts in shared storage (RocksDB, Redis), for on-disk compatibility.

- Storage tag of a table: ``hps_et.<model>.<table>``; both names match ``[A-Za-z0-9_-]{1,120}``.
- RocksDB: one column family per table named by the tag; key = the raw little-endian key bytes
  (8 for int64 keys, 4 for uint32 keys), value = the raw little-endian float32 vector.
- Redis Cluster: per table and partition ``p`` two hashes sharing one hash tag (so one slot):
  ``hps_et{<tag>/p<p>}v`` (field = raw key bytes, value = raw vector bytes) and
  ``hps_et{<tag>/p<p>}t`` (access metadata); ``p = mix64(key) % num_partitions``.
"""

from __future__ import annotations

import re

import numpy as np

TAG_PREFIX = "hps_et"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_\-]{1,120}$")


def storage_tag(model: str, table: str) -> str:
    """``hps_et.<model>.<table>``, HPS's name of a table in every storage tier."""
    return f"{TAG_PREFIX}.{model}.{table}"


def parse_storage_tag(tag: str) -> tuple[str, str] | None:
    """(model, table) of a storage tag, or None when ``tag`` is not one."""
    parts = tag.split(".")
    if len(parts) != 3 or parts[0] != TAG_PREFIX:
        return None
    if not (NAME_PATTERN.match(parts[1]) and NAME_PATTERN.match(parts[2])):
        return None
    return parts[1], parts[2]


def key_bytes_list(keys: np.ndarray, key_width: int = 64) -> list[bytes]:
    """Each key as its raw little-endian bytes (8, or 4 for uint32 keys), as HPS stores them."""
    dtype = "<i8" if key_width == 64 else "<u4"
    raw = np.ascontiguousarray(np.asarray(keys).astype(dtype, copy=False)).tobytes()
    width = 8 if key_width == 64 else 4
    view = memoryview(raw)
    return [bytes(view[i:i + width]) for i in range(0, len(raw), width)]


def keys_from_bytes(raw: list[bytes] | bytes, key_width: int = 64) -> np.ndarray:
    """The inverse of ``key_bytes_list``: raw key bytes (a list, or one joined buffer) to int64."""
    data = b"".join(raw) if isinstance(raw, list) else bytes(raw)
    dtype = "<i8" if key_width == 64 else "<u4"
    return np.frombuffer(data, dtype=dtype).astype(np.int64)


def redis_hash_names(tag: str, partition: int) -> tuple[str, str]:
    """HPS's Redis hash names of one partition: (values, metadata)."""
    return f"{TAG_PREFIX}{{{tag}/p{partition}}}v", f"{TAG_PREFIX}{{{tag}/p{partition}}}t"
