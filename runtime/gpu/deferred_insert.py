"""Putting fetched rows into a dynamic cache off the lookup's path, and never a stale one.

A lookup that missed keys fetches their rows from the CPU tiers, writes them into its result and
returns; the rows go into the cache later, in batches (``InsertQueue``), so that one insert (its
host preparation, its kernel rounds) serves many lookups and none waits for it.

Inserting later must not put back a value that changed meanwhile: a row fetched before an
``HPS.insert`` of its key, inserted after that insert's update of the cache, would stay stale in
the cache until a refresh. ``UpdateGenerations`` prevents it: every update and removal counts
itself, under a lock, in a bucket of its keys (the key's low 12 bits); a lookup reads its missed
keys' counts before it fetches them; an insert, under the same lock, keeps only the keys whose
counts are unchanged (``fresh``). An update bumps its counts after the CPU tiers changed, so a
row fetched before that change is always caught; all device work of a cache is ordered by its
one stream in the order the lock gives it.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

import numpy as np

GENERATION_BUCKETS = 4096
_BUCKET_MASK = np.int64(GENERATION_BUCKETS - 1)


class UpdateGenerations:
    """Counts of updates and removals per bucket of keys; ``lock`` orders them with inserts."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._counts = np.zeros(GENERATION_BUCKETS, np.int64)

    def read(self, keys: np.ndarray) -> np.ndarray:
        """The current counts of ``keys``' buckets (a copy), read before their rows are
        fetched."""
        return self._counts[np.asarray(keys, np.int64) & _BUCKET_MASK]

    def bump(self, keys: np.ndarray) -> None:
        """Count an update or removal of ``keys`` (the caller holds ``lock``, and the CPU tiers
        already hold the change)."""
        self._counts[np.asarray(keys, np.int64) & _BUCKET_MASK] += 1

    def fresh(self, keys: np.ndarray, seen: np.ndarray) -> np.ndarray:
        """Which keys had no update or removal since their counts were ``seen`` (the caller
        holds ``lock``)."""
        return self.read(keys) == seen


def latest_per_key(
    keys: np.ndarray, rows: np.ndarray, seen: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One entry per key: its latest fetch (its row and the counts read before it).

    Lookups that miss the same hot key queue it again and again until an insert lands; under a
    skewed load a drain would otherwise insert each such key many times over, and the insert
    time grows with the backlog, so that inserts fall further behind and the hit rate stops
    rising. The latest fetch is the one to keep: if an update came between two fetches, only the
    later row is fresh, and its counts say so."""
    last = keys.size - 1 - np.unique(keys[::-1], return_index=True)[1]
    if last.size == keys.size:
        return keys, rows, seen
    return keys[last], rows[last], seen[last]


class InsertQueue:
    """Fetched rows waiting to be inserted into one cache, in batches.

    ``add`` queues rows; the first row queued schedules a drain task through ``submit`` (the
    cache's background inserter). The drain waits until ``batch_keys`` keys are queued or
    ``delay_s`` has passed, inserts everything queued in one call of ``insert(keys, rows,
    seen)`` (a key queued more than once: its latest fetch only), and goes on while more
    arrived meanwhile: one drain per queue at a time, so batches
    go in in the order they were queued. When ``submit`` refuses (the inserter is full), what is
    queued is dropped (it is a cache: nothing is lost) and ``add`` returns False.
    """

    def __init__(
        self,
        insert: Callable[[np.ndarray, np.ndarray, np.ndarray], None],
        submit: Callable[[Callable[[], None]], bool],
        *,
        batch_keys: int = 4096,
        delay_s: float = 0.002,
    ):
        self._insert = insert
        self._submit = submit
        self.batch_keys = batch_keys
        self.delay_s = delay_s
        self._cond = threading.Condition()
        self._items: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._queued = 0
        self._scheduled = False

    def add(self, keys: np.ndarray, rows: np.ndarray, seen: np.ndarray) -> bool:
        with self._cond:
            self._items.append((keys, rows, seen))
            self._queued += keys.size
            if self._queued >= self.batch_keys:
                self._cond.notify()
            if self._scheduled:
                return True
            self._scheduled = True
        if self._submit(self._drain):
            return True
        with self._cond:
            self._take()
            self._scheduled = False
        return False

    def _take(self) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        items, self._items, self._queued = self._items, [], 0
        return items

    def _drain(self) -> None:
        try:
            while True:
                with self._cond:
                    deadline = time.monotonic() + self.delay_s
                    while self._queued < self.batch_keys:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            break
                        self._cond.wait(left)
                    items = self._take()
                    if not items:
                        self._scheduled = False
                        return
                keys = np.concatenate([k for k, _, _ in items])
                rows = np.concatenate([r for _, r, _ in items])
                seen = np.concatenate([s for _, _, s in items])
                if len(items) > 1:
                    keys, rows, seen = latest_per_key(keys, rows, seen)
                self._insert(keys, rows, seen)
        except BaseException:
            with self._cond:
                self._take()
                self._scheduled = False
            raise
