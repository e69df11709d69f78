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
from .key_arrays import is_int64_vector
from .rwlock import RWLock
from .seams import PersistentTable, VolatileTable
from .stats import TableStats

log = logging.getLogger("hps_cli.runtime")

_NONE = np.empty(0, dtype=np.int64)  # no missing rows
_NONE.flags.writeable = False


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
        if not is_int64_vector(keys):
            keys = np.ascontiguousarray(keys, dtype=np.int64)
        if keys.ndim != 1:
            raise InvalidInputError(
                f"keys must be 1-D, got shape {keys.shape}",
                location=f"keys ({self.model}.{self.table})",
            )
        started = time.perf_counter()
        n = keys.size
        out = np.empty((n, self.dim), dtype=np.float32)
        volatile_hits = persistent_hits = volatile_failures = persistent_failures = 0
        writebacks = 0
        with self._lock.read():
            if self.volatile is None:
                missing, volatile_failed = np.arange(n), False
            else:
                _, hit, failures = self.volatile.get(keys, out)
                volatile_failures = int(np.count_nonzero(failures))  # a dead Redis node's keys
                volatile_failed = volatile_failures > 0
                if volatile_failed:
                    self._warn(
                        f"volatile tier failed for {volatile_failures} key(s) of "
                        f"{self.model}.{self.table}; answering from the next tier"
                    )
                volatile_hits = int(np.count_nonzero(hit))
                missing = _NONE if volatile_hits == n else np.flatnonzero(~hit)
            if missing.size and self.persistent is not None:
                missing, persistent_hits, persistent_failures, writebacks = self._from_persistent(
                    keys, missing, out, write_back=not volatile_failed
                )
        if missing.size:
            out[missing] = self.default_vector
        self.stats.add_lookup(
            n,
            volatile_hits,
            persistent_hits,
            missing.size,
            volatile_failures,
            persistent_failures,
            writebacks,
        )
        self.stats.fetch_latency.record(time.perf_counter() - started)
        return out

    def _from_persistent(
        self, keys: np.ndarray, missing: np.ndarray, out: np.ndarray, *, write_back: bool
    ) -> tuple[np.ndarray, int, int, int]:
        """Fill the rows of ``missing`` that RocksDB holds; returns (the rows still missing,
        persistent hits, persistent failures, write-backs)."""
        asked = keys[missing]
        try:
            found, hit = self.persistent.get(asked)
        except HpsError:
            raise
        except Exception as exc:  # noqa: BLE001 - an I/O error of RocksDB: serve defaults
            self._warn(f"persistent tier failed for {self.model}.{self.table}: {exc}")
            return missing, 0, asked.size, 0
        got = np.flatnonzero(hit)
        writebacks = 0
        if got.size:
            out[missing[got]] = found[got]
            if self.cache_missed_embeddings and write_back:
                writebacks = self._write_back(asked[got], found[got])
        return missing[~hit], got.size, 0, writebacks

    def _write_back(self, keys: np.ndarray, vectors: np.ndarray) -> int:
        """Write persistent hits into the volatile tier; returns how many were written."""
        try:
            self.volatile.insert(keys, vectors)
            return keys.size
        except HpsError as exc:  # e.g. Redis went down: the cache just stays cold
            self._warn(f"write-back into the volatile tier failed: {exc}")
            return 0

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
