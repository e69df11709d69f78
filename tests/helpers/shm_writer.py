"""An endless writer of a multi_process_hash_map test, to be killed with SIGKILL mid-update.

    python shm_writer.py SEGMENT_NAME TAG DIM KEYS

Opens the segment and the table (one partition, room for KEYS keys), then upserts all KEYS
keys over and over, version after version, with ``writer_vector`` rows; prints ``started``
after the first batch.
"""

from __future__ import annotations

import sys
import time

import numpy as np
from hps_cli.runtime.volatile.shm_segment import SharedSegment
from hps_cli.runtime.volatile.shm_table import SharedHashMapTable


def writer_vectors(keys: np.ndarray, dim: int, version: int) -> np.ndarray:
    """Row = [key, version, version, ...]: a row mixing two writes is easy to see."""
    rows = np.full((keys.size, dim), float(version), dtype=np.float32)
    rows[:, 0] = keys
    return rows


def open_table(
    name: str, tag: str, dim: int, keys: int
) -> tuple[SharedSegment, SharedHashMapTable]:
    segment = SharedSegment(name, 1 << 30, auto_remove=False)
    table = SharedHashMapTable(segment, tag, dim, num_partitions=1, expected_keys=keys)
    return segment, table


def main() -> None:
    name, tag, dim, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    _, table = open_table(name, tag, dim, count)
    keys = np.arange(count, dtype=np.int64)
    version = 1
    while True:
        table.insert(keys, writer_vectors(keys, dim, version))
        if version == 1:
            print("started", flush=True)
        version += 1
        time.sleep(0.01)  # let the readers in between batches


if __name__ == "__main__":
    main()
