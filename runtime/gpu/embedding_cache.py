"""HPS's embedding cache of one table on one device, in front of the CPU tiers: the front
caches of seams.FrontCache that HPS builds (cache_factory.py).

``DynamicEmbeddingCache`` (embedding_cache_type dynamic and stochastic) holds a share of the
table over a seams.DynamicBackend. On a query with misses, the hit rate over the batch's unique
keys decides, exactly as in HPS:

- below ``hit_rate_threshold``: synchronous — the misses are fetched from the CPU tiers
  (volatile → persistent → default), put into the result and inserted into the cache: exact;
- at or above it: asynchronous — the misses keep the table's default value in this result and
  are fetched and inserted in the background (so 1.0 is exact, above 1 never asynchronous).

``IndexedEmbeddingCache`` (static and uvm) holds the whole table over a seams.IndexedBackend,
never consults the CPU tiers (absent keys get the default value) and is read-only. Start-up
prefill fills the dynamic cache with the hottest rows (by ``meta`` frequencies) or the first rows
in file order, up to its capacity. A refresh (refresh.py runs them) reloads the cached keys'
rows from the CPU tiers in steps of sets (``refresh_ranges``, ``refresh_step``).

Worker buffers are HPS's (seams.py): every query runs in the buffer ``slot`` its caller took;
direct callers of ``query`` that run one query at a time may leave it at 0.
"""

from __future__ import annotations

import math
import threading
import time
from abc import ABC, abstractmethod
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..errors import InvalidInputError
from ..seams import CacheBackend, DynamicBackend, IndexedBackend
from ..table.reader import TableReader
from .pending import Launched

Fetch = Callable[[np.ndarray], np.ndarray]  # keys → rows from the CPU tiers (exact)


@dataclass
class CacheCounters:
    """Cumulative counters of one cache (key occurrences unless said otherwise)."""

    lookups: int = 0
    keys: int = 0
    hits: int = 0
    misses: int = 0
    sync_batches: int = 0
    async_batches: int = 0
    inserted: int = 0
    async_dropped: int = 0
    refreshed: int = 0
    seconds: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **amounts) -> None:
        with self._lock:
            fields = self.__dict__
            for name, value in amounts.items():
                fields[name] += value

    def snapshot(self) -> dict:
        with self._lock:
            data = {k: v for k, v in self.__dict__.items() if not k.startswith("_")}
        data["hit_rate"] = data["hits"] / data["keys"] if data["keys"] else None
        return data


class AsyncInserter:
    """Background insertion of missed keys (HPS's thread pool), bounded: when ``max_pending``
    batches are already queued, new ones are dropped (it is a cache; nothing is lost)."""

    def __init__(self, threads: int, max_pending: int = 64):
        self.threads = max(1, int(threads))
        self._pool = ThreadPoolExecutor(
            max_workers=self.threads, thread_name_prefix="hps-cache-insert"
        )
        self._slots = threading.BoundedSemaphore(max_pending)
        self._pending: set[Future] = set()
        self._lock = threading.Lock()

    def submit(self, task: Callable[[], None]) -> bool:
        if not self._slots.acquire(blocking=False):
            return False
        future = self._pool.submit(task)
        with self._lock:
            self._pending.add(future)

        def done(f: Future) -> None:
            with self._lock:
                self._pending.discard(f)
            self._slots.release()

        future.add_done_callback(done)
        return True

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every queued insertion finished (errors are re-raised)."""
        with self._lock:
            pending = list(self._pending)
        for future in pending:
            future.result(timeout)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


class EmbeddingCache(ABC):
    """What the dynamic and the indexed cache share: the query in flight, counters, stats.

    Args:
        backend: where the rows live (GPU or NumPy reference).
        default_value: the table's default value (rows of keys that are nowhere).
        name: ``model.table@device``, for messages.
    """

    read_only: bool

    def __init__(self, backend: CacheBackend, *, default_value: float, name: str = ""):
        self.backend = backend
        self.default_value = float(default_value)
        self.name = name
        self.counters = CacheCounters()

    @property
    def dim(self) -> int:
        return self.backend.dim

    def query(self, keys: np.ndarray, slot: int = 0) -> np.ndarray:
        """Rows of ``keys`` (int64, 1-D), per HPS's cache semantics, in worker buffer
        ``slot``."""
        return self.launch_query(keys, slot).result()

    def launch_query(self, keys: np.ndarray, slot: int = 0) -> "InFlightQuery":
        """Queue the query on the device and return at once; ``result()`` waits, resolves the
        misses and returns the rows. Queries of several tables launched before any result is
        read run at the same time. Every launched query must be resolved (``result()`` or
        ``abandon()``) before ``slot`` is used again: the device may still be writing its
        pinned rows."""
        started = time.perf_counter()
        keys = np.ascontiguousarray(keys, dtype=np.int64)
        launched = self.backend.launch_query(keys, self.default_value, slot)
        return InFlightQuery(self, keys, slot, launched, started)

    @abstractmethod
    def _finish(self, keys: np.ndarray, slot: int, launched: Launched, started: float):
        """Wait for a launched query, resolve it and count it; returns the rows."""

    @abstractmethod
    def update(self, keys: np.ndarray, vectors: np.ndarray) -> int: ...

    @abstractmethod
    def remove(self, keys: np.ndarray) -> int: ...

    @abstractmethod
    def occupancy(self) -> int | None:
        """Slots in use (None for a cache without slots). Not part of ``stats``: on a GPU it
        copies the cache's keys back, too much for the per-lookup counter snapshots."""

    @abstractmethod
    def stats(self) -> dict: ...

    @abstractmethod
    def close(self) -> None:
        """Stop background work (the backend's memory is freed by the factory's close)."""


class DynamicEmbeddingCache(EmbeddingCache):
    """The dynamic cache of table ``table_id`` of a model on one device.

    Args:
        backend: GpuDynamicCache or RefDynamicBackend.
        fetch: exact lookup in the CPU tiers for missed keys (``TableTiers.fetch``).
        hit_rate_threshold: the model's ``hit_rate_threshold``.
        default_value: the table's default value.
        inserter: shared background inserter (for asynchronous insertion).
        name: ``model.table@device``, for messages.
    """

    read_only = False

    def __init__(
        self,
        backend: DynamicBackend,
        *,
        fetch: Fetch,
        hit_rate_threshold: float,
        default_value: float,
        inserter: AsyncInserter | None = None,
        name: str = "",
    ):
        super().__init__(backend, default_value=default_value, name=name)
        self.backend: DynamicBackend = backend
        self.fetch = fetch
        self.threshold = float(hit_rate_threshold)
        self.inserter = inserter
        self._closed = False
        # Updates and removals (HPS.insert / remove) counted under a lock, so that a refresh
        # step that fetched its rows before one of them does not write those rows after it.
        self._writes = 0
        self._write_lock = threading.Lock()

    def _finish(self, keys: np.ndarray, slot: int, launched: Launched, started: float):
        pending = launched.wait()
        missed = pending.miss_keys
        if not missed.size:
            out = pending.finish(None)
            self.counters.add(
                lookups=1, keys=keys.size, hits=keys.size, seconds=time.perf_counter() - started
            )
            return out
        if self._synchronous(keys, missed, pending, slot):
            rows = self.fetch(missed)
            out = pending.finish(rows)
            inserted = self.backend.replace(missed, rows)
            self.counters.add(sync_batches=1, inserted=inserted)
        else:
            out = pending.finish(None)
            self._insert_later(missed)
        occ = pending.miss_occurrences
        self.counters.add(
            lookups=1,
            keys=keys.size,
            hits=keys.size - occ,
            misses=occ,
            seconds=time.perf_counter() - started,
        )
        return out

    def _synchronous(self, keys: np.ndarray, missed: np.ndarray, pending, slot: int) -> bool:
        if self.threshold > 1.0 or self.inserter is None:
            return True
        # Misses exist, so the hit rate is below 1: with a threshold of 1 no need to count.
        if self.threshold >= 1.0:
            return True
        unique = pending.unique_total
        if unique is None:
            unique = self.backend.count_unique(keys, slot)
        hit_rate = 1.0 - missed.size / unique if unique else 1.0
        return hit_rate < self.threshold

    def _insert_later(self, missed: np.ndarray) -> None:
        keys = missed.copy()

        def task() -> None:
            rows = self.fetch(keys)
            self.counters.add(inserted=self.backend.replace(keys, rows))

        if self.inserter.submit(task):  # type: ignore[union-attr]
            self.counters.add(async_batches=1)
        else:
            self.counters.add(async_dropped=1)

    # -- maintenance --------------------------------------------------------------------------

    def update(self, keys: np.ndarray, vectors: np.ndarray) -> int:
        """Overwrite cached copies of keys whose value changed in the CPU tiers."""
        with self._write_lock:
            self._writes += 1
            return self.backend.update(keys, vectors)

    def remove(self, keys: np.ndarray) -> int:
        with self._write_lock:
            self._writes += 1
            return self.backend.invalidate(keys)

    def prefill(
        self, reader: TableReader, limit: int | None = None, chunk_rows: int = 1 << 18
    ) -> int:
        """Fill the cache at start-up: the hottest rows when the table has ``meta``
        frequencies, else the first rows in file order. Returns keys inserted."""
        limit = min(reader.num_keys, self.backend.capacity if limit is None else limit)
        if limit <= 0:
            return 0
        inserted = 0
        # With meta even when every row fits: sets are small, so some overflow, and the order
        # decides which of their rows stay.
        if reader.has_meta:
            # Coldest first: where more of these rows share a set than it has ways, each later
            # key evicts an earlier one (every prefilled key has the same score), so the
            # hottest must come last to be the ones that stay.
            rows_idx = _hottest_rows(reader, limit, chunk_rows)[::-1]
            keys_all, vecs_all = reader.keys(), reader.vectors()
            for start in range(0, rows_idx.size, chunk_rows):
                idx = rows_idx[start : start + chunk_rows]
                inserted += self.backend.replace(
                    np.asarray(keys_all[idx]), np.asarray(vecs_all[idx])
                )
        else:
            for chunk in reader.chunks(chunk_rows, stop=limit):
                inserted += self.backend.replace(chunk.keys.copy(), chunk.vectors.copy())
        self.counters.add(inserted=inserted)
        return inserted

    def refresh_ranges(self, share: float) -> list[tuple[int, int]]:
        """The set ranges of a refresh in steps of ``share`` of the sets (at least one set):
        HPS's ``cache_refresh_percentage_per_iteration``."""
        sets = self.backend.num_sets
        step = max(1, math.ceil(float(share) * sets))
        return [(begin, min(begin + step, sets)) for begin in range(0, sets, step)]

    def refresh_step(self, set_begin: int, set_end: int) -> int:
        """Reload the rows of the keys cached in sets ``[set_begin, set_end)`` from the CPU
        tiers; returns how many were refreshed. A step that an update or removal overtook
        while it fetched writes nothing (its keys have their new rows, or are gone)."""
        if self._closed:
            return 0
        keys = self.backend.dump(set_begin, set_end)
        if not keys.size:
            return 0
        with self._write_lock:
            writes = self._writes
        rows = self.fetch(keys)
        with self._write_lock:
            if self._writes != writes:
                return 0
            refreshed = self.backend.update(keys, rows)
        self.counters.add(refreshed=refreshed)
        return refreshed

    def refresh(self, share: float = 1.0) -> int:
        """Reload every cached key's row from the CPU tiers now, step after step (HPS's cache
        refresh); returns how many were refreshed."""
        return sum(self.refresh_step(b, e) for b, e in self.refresh_ranges(share))

    def close(self) -> None:
        """Later refresh steps do nothing (the refresher is the factory's, refresh.py)."""
        self._closed = True

    def occupancy(self) -> int | None:
        return self.backend.occupancy()

    def stats(self) -> dict:
        data = self.counters.snapshot()
        data["type"] = "dynamic"
        data["capacity"] = self.backend.capacity
        return data


class IndexedEmbeddingCache(EmbeddingCache):
    """The static or uvm cache of one table on one device: the whole table, read-only.

    Args:
        backend: GpuIndexedTable or RefIndexedBackend.
        default_value: the table's default value (rows of keys not in the table).
        name: ``model.table@device``, for messages.
    """

    read_only = True

    def __init__(self, backend: IndexedBackend, *, default_value: float, name: str = ""):
        super().__init__(backend, default_value=default_value, name=name)
        self.backend: IndexedBackend = backend

    def _finish(self, keys: np.ndarray, slot: int, launched: Launched, started: float):
        out, hits = launched.wait()
        self.counters.add(
            lookups=1,
            keys=keys.size,
            hits=hits,
            misses=keys.size - hits,
            seconds=time.perf_counter() - started,
        )
        return out

    def update(self, keys: np.ndarray, vectors: np.ndarray) -> int:
        raise InvalidInputError(
            "static and uvm caches are read-only: they cannot take updates",
            location=self.name,
            hint="use embedding_cache_type dynamic for online updates",
        )

    def remove(self, keys: np.ndarray) -> int:
        raise InvalidInputError(
            "static and uvm caches are read-only: they cannot drop keys",
            location=self.name,
            hint="use embedding_cache_type dynamic for online updates",
        )

    def occupancy(self) -> None:
        return None

    def stats(self) -> dict:
        data = self.counters.snapshot()
        data["type"] = "indexed"
        return data

    def close(self) -> None:
        """Nothing runs in the background."""


class InFlightQuery:
    """A query launched by ``EmbeddingCache.launch_query`` (a seams.StartedQuery).

    ``result()`` waits, resolves the misses and gives the rows (later calls give the same rows,
    or raise the same error). ``abandon()`` only waits for the device (the rows are dropped,
    nothing is counted). One of them must run before the query's worker buffer is reused; a
    query dropped without either waits when it is collected.
    """

    __slots__ = ("_cache", "_keys", "_slot", "_launched", "_started", "_outcome")

    def __init__(
        self,
        cache: EmbeddingCache,
        keys: np.ndarray,
        slot: int,
        launched: Launched,
        started: float,
    ):
        self._cache, self._keys, self._slot = cache, keys, slot
        self._launched, self._started = launched, started
        self._outcome: tuple[bool, object] | None = None  # (ok, rows or exception)

    def result(self) -> np.ndarray:
        if self._outcome is None:
            try:
                rows = self._cache._finish(self._keys, self._slot, self._launched, self._started)
                self._outcome = (True, rows)
            except BaseException as exc:
                self._outcome = (False, exc)
                raise
        ok, value = self._outcome
        if not ok:
            raise value  # type: ignore[misc]
        return value  # type: ignore[return-value]

    def abandon(self) -> None:
        """Wait for the device work of this query (ignoring its errors)."""
        if self._outcome is not None:
            return
        self._outcome = (False, RuntimeError("the query was abandoned"))
        try:
            self._launched.wait()
        except Exception:  # noqa: BLE001 - abandoning: its error is not the one to report
            pass

    def __del__(self) -> None:
        # The device may still be writing this query's pinned rows and reading its staging:
        # neither may be handed out again before it is done.
        if self._outcome is None:
            self.abandon()


def _hottest_rows(reader: TableReader, limit: int, chunk_rows: int) -> np.ndarray:
    """Row indices of the ``limit`` largest ``meta`` counts (ties: file order), bounded memory."""
    best_idx = np.empty(0, np.int64)
    best_val = np.empty(0, np.int64)
    for chunk in reader.chunks(chunk_rows):
        idx = np.concatenate([best_idx, np.arange(chunk.start, chunk.start + chunk.keys.size)])
        val = np.concatenate([best_val, np.asarray(chunk.meta, np.int64)])
        if idx.size > limit:
            order = np.lexsort((idx, -val))[:limit]  # by count descending, then file order
            idx, val = idx[order], val[order]
        best_idx, best_val = idx, val
    order = np.lexsort((best_idx, -best_val))
    return best_idx[order]
