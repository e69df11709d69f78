"""HPS's names and byte layouts in shared storage (RocksDB, Redis), for on-disk compatibility.

- Storage tag of a table: ``hps_et.<model>.<table>``; both names match ``[A-Za-z0-9_-]{1,120}``.
- RocksDB: one column family per table named by the tag; key = the raw little-endian key bytes
  (8 for int64 keys, 4 for uint32 keys, see raw_keys.py), value = the raw float32 vector.
- Redis Cluster: per table and partition ``p`` two hashes sharing one hash tag (so one slot):
  ``hps_et{<tag>/p<p>}v`` (field = raw key bytes, value = raw vector bytes) and
  ``hps_et{<tag>/p<p>}t`` (access metadata); ``p = mix64(key) % num_partitions``.
"""

from __future__ import annotations

import re

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


def redis_hash_names(tag: str, partition: int) -> tuple[str, str]:
    """HPS's Redis hash names of one partition: (values, metadata)."""
    return f"{TAG_PREFIX}{{{tag}/p{partition}}}v", f"{TAG_PREFIX}{{{tag}/p{partition}}}t"
