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

import logging
import math
import os
import threading
import time
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..cpu_affinity import free_this_thread
from ..errors import InvalidInputError
from ..seams import CacheBackend, DynamicBackend, IndexedBackend
from ..table.reader import TableReader
from .deferred_insert import InsertQueue, UpdateGenerations
from .pending import Launched
from .placement import EMPTY_KEY, SLOT_HEADROOM
from .prefill_plan import plan_prefill

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
    stale_inserts: int = 0  # fetched rows not inserted: their key was updated meanwhile
    insert_calls: int = 0  # inserts of fetched rows into the cache (a deferred batch: one)
    insert_seconds: float = 0.0  # their time, preparation on the host included
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


def drain_limit(capacity: int) -> int:
    """The most keys one deferred insert takes (deferred_insert.py): an eighth of the slots,
    about one key per set of 8 ways. Replayed on the reference (1 M-key Zipf lookups, a 1 M-slot
    cache), one drain per one to four lookups holds 0.970-0.973 of the ideal hit rate with this
    limit, and 0.952 with half of it at one drain per four lookups; an insert of that size took
    about 80 ms on an H100 machine, rows copied and uploaded included."""
    return max(4096, int(capacity) // 8)


class AsyncInserter:
    """Background insertion of missed keys (HPS's thread pool), bounded: when ``max_pending``
    tasks are already queued, new ones are refused (the caller drops them: it is a cache;
    nothing is lost)."""

    def __init__(self, threads: int, max_pending: int = 64):
        self.threads = max(1, int(threads))
        # Started by the first lookups that miss, maybe on hps serve's pinned event loop.
        self._pool = ThreadPoolExecutor(
            max_workers=self.threads,
            thread_name_prefix="hps-cache-insert",
            initializer=free_this_thread,
        )
        self._slots = threading.BoundedSemaphore(max_pending)
        self._idle = threading.Condition()
        self._unfinished = 0
        self._errors: list[BaseException] = []

    def submit(self, task: Callable[[], None]) -> bool:
        if not self._slots.acquire(blocking=False):
            return False
        with self._idle:
            self._unfinished += 1

        def run() -> None:
            try:
                task()
            except BaseException as exc:  # noqa: BLE001 - re-raised by flush
                with self._idle:
                    self._errors.append(exc)
            finally:
                self._slots.release()
                with self._idle:
                    self._unfinished -= 1
                    self._idle.notify_all()

        self._pool.submit(run)
        return True

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every task has finished, those submitted meanwhile (by other tasks)
        included; the first error of a task since the last flush is re-raised."""
        with self._idle:
            if not self._idle.wait_for(lambda: self._unfinished == 0, timeout):
                raise TimeoutError(f"background cache inserts still running after {timeout} s")
            errors, self._errors = self._errors, []
        if errors:
            raise errors[0]

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

    A lookup's misses are fetched from the CPU tiers and written into its result (or, under
    HPS's asynchronous rule, fetched in the background); their rows go into the cache later,
    in batches, unless the key was updated or removed since its fetch (deferred_insert.py).
    Without an ``inserter`` they go in before the lookup returns.

    Args:
        backend: GpuDynamicCache or RefDynamicBackend.
        fetch: exact lookup in the CPU tiers for missed keys (``TableTiers.fetch``); must be
            safe to call from several threads at once (large misses are fetched in parts in
            parallel).
        hit_rate_threshold: the model's ``hit_rate_threshold``.
        default_value: the table's default value.
        inserter: shared background inserter (deferred and asynchronous insertion).
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
        self._generations = UpdateGenerations()
        self._queue = (
            InsertQueue(self._insert_fresh, inserter.submit, max_keys=drain_limit(backend.capacity))
            if inserter is not None
            else None
        )

    def _finish(self, keys: np.ndarray, slot: int, launched: Launched, started: float):
        pending = launched.wait()
        try:
            missed = pending.miss_keys
            if not missed.size:
                out = pending.finish(None)
                self.counters.add(
                    lookups=1,
                    keys=keys.size,
                    hits=keys.size,
                    seconds=time.perf_counter() - started,
                )
                return out
            if self._synchronous(keys, missed, pending, slot):
                seen = self._generations.read(missed)
                rows = fetch_in_parts(self.fetch, missed, self.dim)
                out = pending.finish(rows)
                self._insert(missed, rows, seen)
                self.counters.add(sync_batches=1)
            else:
                out = pending.finish(None)
                self._fetch_and_insert_later(missed)
        except BaseException:
            pending.discard()  # the device may still be writing the result
            raise
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

    def _insert(self, keys: np.ndarray, rows: np.ndarray, seen: np.ndarray) -> None:
        """Insert fetched rows: queued for a batch in the background, or now without an
        inserter."""
        if self._queue is None:
            self._insert_fresh(keys, rows, seen)
        elif not self._queue.add(keys, rows, seen):
            self.counters.add(async_dropped=1)

    def _insert_fresh(self, keys: np.ndarray, rows: np.ndarray, seen: np.ndarray) -> None:
        """Insert the rows of the keys not updated or removed since ``seen`` was read."""
        started = time.perf_counter()
        with self._generations.lock:
            fresh = self._generations.fresh(keys, seen)
            stale = int(keys.size - np.count_nonzero(fresh))
            if stale:
                keys, rows = keys[fresh], rows[fresh]
            inserted = self.backend.replace(keys, rows) if keys.size else 0
        self.counters.add(
            inserted=inserted,
            stale_inserts=stale,
            insert_calls=1,
            insert_seconds=time.perf_counter() - started,
        )

    def _fetch_and_insert_later(self, missed: np.ndarray) -> None:
        keys = missed.copy()

        def task() -> None:
            seen = self._generations.read(keys)
            self._insert_fresh(keys, fetch_in_parts(self.fetch, keys, self.dim), seen)

        if self.inserter.submit(task):  # type: ignore[union-attr]
            self.counters.add(async_batches=1)
        else:
            self.counters.add(async_dropped=1)

    # -- maintenance --------------------------------------------------------------------------

    def update(self, keys: np.ndarray, vectors: np.ndarray) -> int:
        """Overwrite cached copies of keys whose value changed in the CPU tiers (which already
        hold the new values)."""
        with self._generations.lock:
            self._generations.bump(keys)
            return self.backend.update(keys, vectors)

    def remove(self, keys: np.ndarray) -> int:
        """Drop cached copies of keys just removed from the CPU tiers."""
        with self._generations.lock:
            self._generations.bump(keys)
            return self.backend.invalidate(keys)

    def prefill(
        self, reader: TableReader, limit: int | None = None, chunk_rows: int = 1 << 18
    ) -> int:
        """Fill the cache at start-up with ``limit`` rows (default: as many as the slots are
        sized for, placement.SLOT_HEADROOM): the hottest when the table has ``meta``
        frequencies, else the first in file order. Their placement is planned on the host
        (prefill_plan.py), so the rows fill the sets tightly and the hottest are the last to
        be left out. Returns keys loaded."""
        if limit is None:
            limit = int(self.backend.capacity / SLOT_HEADROOM)
        limit = min(reader.num_keys, limit)
        if limit <= 0:
            return 0
        if reader.has_meta:
            rows = _hottest_rows(reader, limit, chunk_rows)
        else:
            rows = np.arange(limit, dtype=np.int64)
        keys = np.asarray(reader.keys()[rows], np.int64)
        # A table may repeat a key (hps table verify reports it) or hold the empty marker:
        # plan each key once, in its hottest position.
        _, first = np.unique(keys, return_index=True)
        if first.size != keys.size or (keys == EMPTY_KEY).any():
            keep = np.sort(first)
            keep = keep[keys[keep] != EMPTY_KEY]
            keys, rows = keys[keep], rows[keep]
        plan = plan_prefill(keys, self.backend.num_sets)
        loaded = self.backend.load(plan.slot_keys, plan.slot_rows(rows), reader.vectors())
        if plan.left_out:
            logging.getLogger("hps_cli.runtime").warning(
                "cache %s: prefill left out %d of its %d planned rows",
                self.name,
                plan.left_out,
                keys.size,
            )
        self.counters.add(inserted=loaded)
        return loaded

    def refresh_ranges(self, share: float) -> list[tuple[int, int]]:
        """The set ranges of a refresh in steps of ``share`` of the sets (at least one set):
        HPS's ``cache_refresh_percentage_per_iteration``."""
        sets = self.backend.num_sets
        step = max(1, math.ceil(float(share) * sets))
        return [(begin, min(begin + step, sets)) for begin in range(0, sets, step)]

    def refresh_step(self, set_begin: int, set_end: int) -> int:
        """Reload the rows of the keys cached in sets ``[set_begin, set_end)`` from the CPU
        tiers; returns how many were refreshed. Keys that an update or removal overtook while
        the step fetched keep what that update wrote (their new rows, or nothing)."""
        if self._closed:
            return 0
        keys = self.backend.dump(set_begin, set_end)
        if not keys.size:
            return 0
        refreshed = self._update_unchanged(keys)
        self.counters.add(refreshed=refreshed)
        return refreshed

    def refresh(self, share: float = 1.0) -> int:
        """Reload every cached key's row from the CPU tiers now, step after step (HPS's cache
        refresh); returns how many were refreshed."""
        return sum(self.refresh_step(b, e) for b, e in self.refresh_ranges(share))

    def _update_unchanged(self, keys: np.ndarray) -> int:
        """Reload cached keys from the CPU tiers, except those updated meanwhile (a fetched
        value must not overwrite a newer one written by ``update``)."""
        seen = self._generations.read(keys)
        rows = self.fetch(keys)
        with self._generations.lock:
            fresh = self._generations.fresh(keys, seen)
            return self.backend.update(keys[fresh], rows[fresh])

    def close(self) -> None:
        """Later refresh steps do nothing (the refresher is the factory's, refresh.py)."""
        self._closed = True

    def occupancy(self) -> int | None:
        return self.backend.occupancy()

    def stats(self) -> dict:
        data = self.counters.snapshot()
        queue = self._queue
        data["insert_skipped"] = queue.skipped_keys if queue is not None else 0
        data["insert_select_seconds"] = queue.select_seconds if queue is not None else 0.0
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
            pending = self._launched.wait()
            discard = getattr(pending, "discard", None)  # a dynamic cache's PendingLookup
            if discard is not None:
                discard()
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


# Misses of at least this many keys are fetched in parts on several threads: the hash-map tier's
# NumPy work releases the GIL, so the parts overlap (a 1 M-key lookup misses ~80 K keys of a
# Zipf stream).
FETCH_PART_KEYS = 16384
_FETCH_THREADS = max(2, min(8, os.cpu_count() or 2))
_fetch_pool: ThreadPoolExecutor | None = None
_fetch_pool_lock = threading.Lock()


def fetch_in_parts(fetch: Fetch, keys: np.ndarray, dim: int) -> np.ndarray:
    """``fetch(keys)`` (float32 rows of ``dim``), in parts of FETCH_PART_KEYS keys on a shared
    thread pool when there are at least two parts; each part's rows are copied into the result
    on its own thread."""
    parts = -(-keys.size // FETCH_PART_KEYS)
    if parts < 2:
        return fetch(keys)
    global _fetch_pool
    with _fetch_pool_lock:
        if _fetch_pool is None:
            _fetch_pool = ThreadPoolExecutor(
                _FETCH_THREADS, thread_name_prefix="hps-fetch", initializer=free_this_thread
            )
        pool = _fetch_pool
    bounds = np.linspace(0, keys.size, min(parts, _FETCH_THREADS) + 1).astype(np.int64)
    out = np.empty((keys.size, dim), np.float32)

    def part(a: int, b: int) -> None:
        out[a:b] = fetch(keys[a:b])

    futures = [pool.submit(part, a, b) for a, b in zip(bounds[1:-1], bounds[2:])]
    part(bounds[0], bounds[1])  # this thread takes a part too
    for future in futures:
        future.result()
    return out
