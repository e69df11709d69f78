"""The CPU lookup hierarchy of one table: volatile tier → persistent tier → default vector.

``TableTiers`` is what a front cache (the embedding cache, one per model, device and table;
seams.FrontCache) falls back to: for the keys it misses it calls ``fetch(keys)``, which answers
exactly what HPS's parameter server would (HugeCTR ``HierParameterServer::lookup``):

1. the volatile tier (in-process hash map, shared-memory map or Redis Cluster) answers what it
   holds;
2. the persistent tier (RocksDB) answers the rest it holds; with ``cache_missed_embeddings``
   those persistent hits are written back into the volatile tier (HPS also writes back the
   default vectors of keys no tier holds, which fills the cache with defaults and hides later
   additions; we write back only real hits);
3. every other key gets the table's default vector (``default_value_for_each_table[t]``
   repeated ``dim`` times).

A volatile tier that fails while serving (a dead Redis node) does not fail the lookup: its keys
fall through to RocksDB / the default and are counted in ``volatile_failures``.

``insert`` and ``remove`` change every tier (persistent first, then volatile), so that no tier
keeps an old vector of a changed key. Lookups share a readers-writer lock and updates are
exclusive, so a write-back can never put back a vector that an update has just replaced.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from .errors import HpsError, InvalidInputError
from .rwlock import RWLock
from .seams import PersistentTable, VolatileTable
from .stats import TableStats

log = logging.getLogger("hps_cli.runtime")


class TableTiers:
    """The CPU tiers of one table.

    Args:
        model / table: names (for messages and stats).
        dim: floats per vector.
        default_value: the fill value of keys no tier holds.
        volatile: the volatile tier (seams.VolatileTable: ``HashMapTable``,
            ``SharedHashMapTable`` or ``RedisTable``), or None.
        persistent: the persistent tier (seams.PersistentTable: ``RocksDbTable``), or None;
            when it is read-only, insert and remove are refused.
        cache_missed_embeddings: write persistent hits back into the volatile tier.

    Attributes:
        stats: ``TableStats``: counters (``stats.counters()``) and latency histograms.
    """

    def __init__(
        self,
        model: str,
        table: str,
        dim: int,
        default_value: float = 0.0,
        *,
        volatile: VolatileTable | None = None,
        persistent: PersistentTable | None = None,
        cache_missed_embeddings: bool = False,
        stats: TableStats | None = None,
    ):
        self.model = model
        self.table = table
        self.dim = int(dim)
        self.default_value = float(default_value)
        self.default_vector = np.full(self.dim, self.default_value, dtype=np.float32)
        self.volatile = volatile
        self.persistent = persistent
        self.cache_missed_embeddings = bool(
            cache_missed_embeddings and volatile is not None and persistent is not None
        )
        self.stats = stats or TableStats()
        self._lock = RWLock()
        self._last_warning = 0.0

    @property
    def counters(self) -> dict[str, int]:
        return self.stats.counters()

    # ------------------------------------------------------------------ lookups

    def fetch(self, keys: np.ndarray) -> np.ndarray:
        """Vectors of int64 ``keys`` as float32 ``(n, dim)``: volatile → persistent → default."""
        keys = np.ascontiguousarray(keys, dtype=np.int64)
        if keys.ndim != 1:
            raise InvalidInputError(
                f"keys must be 1-D, got shape {keys.shape}",
                location=f"keys ({self.model}.{self.table})",
            )
        started = time.perf_counter()
        n = keys.size
        out = np.empty((n, self.dim), dtype=np.float32)
        counts = {"lookups": 1, "keys": n}
        with self._lock.read():
            missing, volatile_failed = self._from_volatile(keys, out, counts)
            if missing.size and self.persistent is not None:
                missing = self._from_persistent(
                    keys, missing, out, counts, write_back=not volatile_failed
                )
        if missing.size:
            out[missing] = self.default_vector
        counts["defaults"] = missing.size
        self.stats.add(**counts)
        self.stats.fetch_latency.record(time.perf_counter() - started)
        return out

    def _from_volatile(
        self, keys: np.ndarray, out: np.ndarray, counts: dict
    ) -> tuple[np.ndarray, bool]:
        if self.volatile is None:
            return np.arange(keys.size), False
        _, hit, failures = self.volatile.get(keys, out)
        failed = int(np.count_nonzero(failures))  # keys a dead Redis node could not answer
        if failed:
            counts["volatile_failures"] = failed
            self._warn(
                f"volatile tier failed for {failed} key(s) of {self.model}.{self.table}; "
                "answering from the next tier"
            )
        counts["volatile_hits"] = int(np.count_nonzero(hit))
        return np.flatnonzero(~hit), bool(failed)

    def _from_persistent(
        self,
        keys: np.ndarray,
        missing: np.ndarray,
        out: np.ndarray,
        counts: dict,
        *,
        write_back: bool,
    ) -> np.ndarray:
        asked = keys[missing]
        try:
            found, hit = self.persistent.get(asked)
        except HpsError:
            raise
        except Exception as exc:  # noqa: BLE001 - an I/O error of RocksDB: serve defaults
            counts["persistent_failures"] = asked.size
            self._warn(f"persistent tier failed for {self.model}.{self.table}: {exc}")
            return missing
        got = np.flatnonzero(hit)
        counts["persistent_hits"] = got.size
        if got.size:
            out[missing[got]] = found[got]
            if self.cache_missed_embeddings and write_back:
                self._write_back(asked[got], found[got], counts)
        return missing[~hit]

    def _write_back(self, keys: np.ndarray, vectors: np.ndarray, counts: dict) -> None:
        try:
            self.volatile.insert(keys, vectors)
            counts["writebacks"] = keys.size
        except HpsError as exc:  # e.g. Redis went down: the cache just stays cold
            self._warn(f"write-back into the volatile tier failed: {exc}")

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._last_warning > 5.0:  # at most one line per table every 5 s
            self._last_warning = now
            log.warning(message)

    # ------------------------------------------------------------------ updates

    def insert(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        """Upsert into every tier (a repeated key keeps its last vector)."""
        keys, vectors = self._check_update(keys, vectors)
        with self._lock.write():
            if self.persistent is not None:
                self.persistent.insert(keys, vectors)
            if self.volatile is not None:
                self.volatile.insert(keys, vectors)
        self.stats.add(inserted=keys.size)

    def remove(self, keys: np.ndarray) -> None:
        """Remove keys from every tier (later lookups get the default vector)."""
        keys, _ = self._check_update(keys, None)
        with self._lock.write():
            if self.persistent is not None:
                self.persistent.remove(keys)
            if self.volatile is not None:
                self.volatile.remove(keys)
        self.stats.add(removed=keys.size)

    def _check_update(self, keys, vectors):
        if self.persistent is not None and self.persistent.read_only:
            raise InvalidInputError(
                f"cannot change {self.model}.{self.table}: the persistent tier is read-only",
                location="persistent_db.read_only",
                hint="updates must reach every tier; open the database read-write",
            )
        keys = np.ascontiguousarray(keys, dtype=np.int64)
        if vectors is not None:
            vectors = np.asarray(vectors)
            if vectors.shape != (keys.size, self.dim):
                raise InvalidInputError(
                    f"vectors must have shape ({keys.size}, {self.dim}), got {vectors.shape}",
                    location=f"vectors ({self.model}.{self.table})",
                )
            if not np.issubdtype(vectors.dtype, np.floating):
                raise InvalidInputError(
                    f"vectors must be floats, got {vectors.dtype}",
                    location=f"vectors ({self.model}.{self.table})",
                )
            vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        return keys, vectors
