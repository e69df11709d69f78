"""The reference caches behind the same seams as the GPU ones: ``RefDynamicBackend`` is a
seams.DynamicBackend, ``RefIndexedBackend`` a seams.IndexedBackend. ``HPS_CACHE_BACKEND=reference``
builds them (backend_choice.py); static and uvm tables use the indexed one without a GPU.

A lock serializes operations on one cache, as the GPU's per-cache stream does.
"""

from __future__ import annotations

import threading

import numpy as np

from ..table.fused_reader import FusedTableReader
from ..table.reader import TableReader
from .pending import Launched, PendingLookup
from .reference import RefDynamicCache, RefIndexedTable


class RefDynamicBackend:
    on_gpu = False

    def __init__(self, num_sets: int, dim: int):
        self.cache = RefDynamicCache(num_sets, dim)
        self.num_sets, self.dim = self.cache.num_sets, self.cache.dim
        self._lock = threading.Lock()

    @property
    def capacity(self) -> int:
        return self.cache.capacity

    def close(self) -> None:
        """Nothing to free before the garbage collector (host memory only)."""

    def query(self, keys: np.ndarray, default_value: float = 0.0, slot: int = 0) -> PendingLookup:
        with self._lock:
            out, miss_keys, miss_pos = self.cache.query(keys, default_value)
        return PendingLookup(out, miss_keys, miss_pos)

    def launch_query(self, keys: np.ndarray, default_value: float = 0.0, slot: int = 0) -> Launched:
        return Launched.done(self.query(keys, default_value, slot))

    def count_unique(self, keys: np.ndarray, slot: int = 0) -> int:
        return int(np.unique(np.asarray(keys, np.int64)).size)

    def replace(self, keys: np.ndarray, rows: np.ndarray) -> int:
        with self._lock:
            return self.cache.replace(keys, rows)

    def load(self, slot_keys: np.ndarray, slot_rows: np.ndarray, vectors: np.ndarray) -> int:
        with self._lock:
            return self.cache.load(slot_keys, slot_rows, vectors)

    def update(self, keys: np.ndarray, rows: np.ndarray) -> int:
        keys = np.asarray(keys, np.int64)
        rows = np.asarray(rows, np.float32).reshape(keys.size, self.dim)
        _, first = np.unique(keys[::-1], return_index=True)  # a repeated key: its last row
        last = keys.size - 1 - first
        with self._lock:
            return self.cache.update(keys[last], rows[last])

    def invalidate(self, keys: np.ndarray) -> int:
        with self._lock:
            return self.cache.invalidate(keys)

    def dump(self, set_begin: int = 0, set_end: int | None = None) -> np.ndarray:
        with self._lock:
            return self.cache.dump(set_begin, set_end)

    def snapshot(self) -> dict[str, np.ndarray]:
        with self._lock:
            c = self.cache
            return {
                "keys": c.keys.copy(),
                "scores": c.scores.copy(),
                "floors": c.floors.copy(),
                "values": c.values.copy(),
            }

    def occupancy(self) -> int:
        with self._lock:
            return self.cache.occupancy()


class RefIndexedBackend:
    on_gpu = False

    def __init__(self, reader: TableReader | FusedTableReader, device_rows: int):
        self.dim = reader.dim
        self.rows = reader.num_keys
        self.device_rows = int(min(max(device_rows, 0), self.rows))
        # Straight from the table's memory map: the sorted copy is the only one kept.
        self.table = RefIndexedTable(reader.keys(), reader.vectors())

    def close(self) -> None:
        """Nothing to free before the garbage collector (host memory only)."""

    def query(
        self, keys: np.ndarray, default_value: float = 0.0, slot: int = 0
    ) -> tuple[np.ndarray, int]:
        return self.table.query(keys, default_value)

    def launch_query(self, keys: np.ndarray, default_value: float = 0.0, slot: int = 0) -> Launched:
        return Launched.done(self.query(keys, default_value, slot))
