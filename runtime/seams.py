"""The runtime's seams: what each side of a boundary calls on the other, as Protocols.

    HPS (hps.py): routes lookups and updates, owns the worker buffers
     ├─► FrontCache        one per (model, device, storage table), built by a CacheFactory
     │     ├─► DynamicBackend / IndexedBackend   its rows, on a GPU or in the NumPy reference
     │     └─► TableTiers  for the keys it misses
     └─► TableTiers        one per (model, storage table), cpu_tiers.py: volatile → persistent
                           → default (a storage table is a table, or a fused group of them)
           ├─► VolatileTable
           └─► PersistentTable

Keys at every seam are 1-D int64 arrays, vectors float32 ``(n, dim)``. Start-up (startup.py)
opens the tiers and builds the caches; HPS only routes over them.

Worker buffers belong to HPS: it keeps one ``WorkerPool`` per (model, device) with a front cache
(``num_of_worker_buffer_in_pool`` buffers), takes one buffer per lookup call (one for all tables
of a ``lookup_tables`` call, as HPS's lookup session does) and passes its number to
``FrontCache.launch_query``. A cache keys its per-lookup scratch (device buffers, pinned
staging) by that number and never takes or gives back a buffer itself.

This module imports NumPy only (the rest for type checking): every side may import it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from .config.fusion import StorageTable
    from .config.model import ModelConfig
    from .cpu_tiers import TableTiers
    from .gpu.pending import Launched, PendingLookup


# ---------------------------------------------------------------------------- the CPU tiers


class VolatileTable(Protocol):
    """One table of the volatile tier: ``HashMapTable`` (volatile/hash_map.py),
    ``SharedHashMapTable`` (volatile/shm_table.py) or ``RedisTable`` (volatile/redis_cluster.py).
    Called by ``TableTiers``; the start-up loader fills it with ``insert``."""

    dim: int

    def get(
        self, keys: np.ndarray, out: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(out, hit, failed)``: the vectors of the keys held are written into ``out``
        (allocated when None), other rows untouched; ``failed`` marks keys the tier could not
        ask (a dead Redis node), which are neither hits nor misses. Never raises for those."""
        ...

    def insert(self, keys: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        """Upsert (a repeated key keeps its last vector); returns the keys evicted or left out
        to respect the overflow margin."""
        ...

    def remove(self, keys: np.ndarray) -> int:
        """Delete keys; returns how many were held."""
        ...


class PersistentTable(Protocol):
    """One table of the persistent tier: ``RocksDbTable`` (persistent/rocksdb_tier.py). Called
    by ``TableTiers``."""

    dim: int

    @property
    def read_only(self) -> bool:
        """True when the store takes no writes (then ``TableTiers`` refuses updates)."""
        ...

    def get(self, keys: np.ndarray, out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(out, hit)``; rows of misses in ``out`` untouched. An I/O failure raises."""
        ...

    def insert(self, keys: np.ndarray, vectors: np.ndarray) -> None: ...

    def remove(self, keys: np.ndarray) -> None: ...


# ---------------------------------------------------------------------------- front caches


class StartedQuery(Protocol):
    """A front-cache query in flight (``FrontCache.launch_query``). Exactly one of ``result``
    and ``abandon`` must run before its worker buffer is used again: until then a device may
    still be reading the keys and writing the rows of that buffer."""

    def result(self) -> np.ndarray:
        """Wait, resolve the misses and return float32 ``(n, dim)`` (the same array, or the
        same error, on every later call)."""
        ...

    def abandon(self) -> None:
        """Wait for the device work only and drop the rows (nothing is counted); a no-op after
        ``result``."""
        ...


class FrontCache(Protocol):
    """The cache of one table on one device, in front of its ``TableTiers``: the embedding
    caches of runtime/gpu/embedding_cache.py (``DynamicEmbeddingCache``,
    ``IndexedEmbeddingCache``) or a user's. Called by ``HPS``."""

    @property
    def read_only(self) -> bool:
        """True when it cannot follow updates (static and uvm caches): ``HPS.insert`` and
        ``HPS.remove`` are then refused before anything is written."""
        ...

    def launch_query(self, keys: np.ndarray, slot: int) -> StartedQuery:
        """Queue a query of ``keys`` using worker buffer ``slot`` (taken by HPS from the pool
        of this model and device) and return at once, so that the queries of several tables
        overlap. Misses are answered from the ``TableTiers`` the cache was built over."""
        ...

    def update(self, keys: np.ndarray, vectors: np.ndarray) -> int:
        """Overwrite cached copies of keys that ``HPS.insert`` just changed in the CPU tiers;
        returns how many were cached."""
        ...

    def remove(self, keys: np.ndarray) -> int:
        """Drop cached copies of keys that ``HPS.remove`` just removed; returns how many."""
        ...

    def stats(self) -> dict:
        """Counters for ``HPS.stats()`` (``hits``, ``misses``, ``keys``, ``hit_rate``, ...)."""
        ...

    def occupancy(self) -> int | None:
        """Slots in use, or None when the cache has no such notion (it may copy device
        memory: not for every lookup)."""
        ...

    def close(self) -> None:
        """Stop background work (refreshes). Called once by ``HPS.close``, before the
        factory's ``close``, which frees what the caches share."""
        ...


class CacheFactory(Protocol):
    """Builds the front caches at start-up: called for every model, every device of its
    ``deployed_device_list`` and every storage table (a table of the model, or with table
    fusion a fused group of them: config/fusion.py), after the CPU tiers are loaded
    (``EmbeddingCacheFactory`` in runtime/gpu/cache_factory.py, or a user's)."""

    def __call__(
        self, model: ModelConfig, table: StorageTable, device_id: int, tiers: TableTiers
    ) -> FrontCache | None:
        """The front cache of that table on that device, or None for none. ``table.open()``
        reads its rows; ``tiers`` answers what the cache misses."""
        ...

    def holds_whole_table(self, model: ModelConfig, table: StorageTable) -> bool:
        """True when the front caches it builds for that table hold every row and never ask
        the CPU tiers (static and uvm caches): start-up then loads no CPU tier with it. Asked
        before the tiers are loaded; a factory that says so must build a cache on every
        device."""
        ...

    def close(self) -> None:
        """Free what the caches share (background inserters, device memory). Called once by
        ``HPS.close`` after every front cache's ``close``."""
        ...


class FinishedQuery:
    """A ``StartedQuery`` that is already answered: for front caches that compute their rows
    at once."""

    __slots__ = ("_rows",)

    def __init__(self, rows: np.ndarray):
        self._rows = rows

    def result(self) -> np.ndarray:
        return self._rows

    def abandon(self) -> None:
        pass


# ---------------------------------------------------------------------------- cache backends


class CacheBackend(Protocol):
    """Where an embedding cache keeps its rows. The GPU implementations (runtime/gpu/gpu_*.py)
    and their NumPy reference twins (runtime/gpu/ref_backends.py) give the same answers.
    Called by the embedding caches of runtime/gpu/embedding_cache.py."""

    dim: int
    on_gpu: bool  # True on a GPU, False for the NumPy reference

    def close(self) -> None:
        """Free device and pinned memory now (idempotent; later operations raise)."""
        ...


class DynamicBackend(CacheBackend, Protocol):
    """A dynamic cache: ``num_sets`` sets of ``placement.WAYS`` slots, a key in one of its two
    sets, with LFU-DA eviction (``GpuDynamicCache``, ``RefDynamicBackend``)."""

    num_sets: int

    @property
    def capacity(self) -> int: ...

    def launch_query(self, keys: np.ndarray, default_value: float = 0.0, slot: int = 0) -> Launched:
        """Queue a query; ``wait()`` gives a ``PendingLookup`` (hits filled, misses listed)."""
        ...

    def query(
        self, keys: np.ndarray, default_value: float = 0.0, slot: int = 0
    ) -> PendingLookup: ...

    def count_unique(self, keys: np.ndarray, slot: int = 0) -> int: ...

    def replace(self, keys: np.ndarray, rows: np.ndarray) -> int:
        """Insert with eviction; returns how many keys were new."""
        ...

    def load(self, slot_keys: np.ndarray, slot_rows: np.ndarray, vectors: np.ndarray) -> int:
        """Start-up prefill from a planned layout (gpu/prefill_plan.py): slot s gets key
        ``slot_keys[s]`` (EMPTY_KEY: free) and row ``vectors[slot_rows[s]]``; replaces whatever
        the cache held. Returns the keys loaded."""
        ...

    def update(self, keys: np.ndarray, rows: np.ndarray) -> int:
        """Overwrite cached keys only; returns how many."""
        ...

    def invalidate(self, keys: np.ndarray) -> int: ...

    def dump(self, set_begin: int = 0, set_end: int | None = None) -> np.ndarray: ...

    def occupancy(self) -> int: ...

    def snapshot(self) -> dict[str, np.ndarray]: ...


class IndexedBackend(CacheBackend, Protocol):
    """A whole table behind an index, read-only: the static and uvm cache types
    (``GpuIndexedTable``, ``RefIndexedBackend``). ``device_rows`` of its ``rows`` live in
    device memory, the rest in mapped host memory."""

    rows: int
    device_rows: int

    def launch_query(self, keys: np.ndarray, default_value: float = 0.0, slot: int = 0) -> Launched:
        """Queue a query; ``wait()`` gives ``(rows, hits)``; absent keys get the default."""
        ...

    def query(
        self, keys: np.ndarray, default_value: float = 0.0, slot: int = 0
    ) -> tuple[np.ndarray, int]: ...
