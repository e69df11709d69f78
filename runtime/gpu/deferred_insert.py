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

A drain inserts at most ``max_keys`` keys (``InsertQueue``): an insert's host preparation grows
faster than its batch (more keys per set, more rounds), so under a flood of misses one huge
insert would fall further and further behind the lookups. When more are queued, the drain keeps
the keys that missed most often lately (``MissFrequency``, a TinyLFU-style sketch) and drops
the rest: a hot key misses again and is queued again, a cold one is not worth a slot.
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


# A drain of many small lookups' misses notes them in one step: the drain thread holds the GIL
# for each NumPy call, and a lookup waiting for it can wait a whole switch interval (5 ms).
NOTED_ONE_BY_ONE = 4
QUEUED_DRAINS = 3  # queued fetches beyond this many drains' worth: the oldest go
_SKETCH_MIN, _SKETCH_MAX = 1 << 12, 1 << 24
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


class MissFrequency:
    """Approximately how many lookups lately missed each key: saturating 8-bit counters
    indexed by a multiplicative hash of the key, all halved once as many keys were noted as
    there are counters ×4 (so the counts follow a changing workload). Collisions only make a
    key look hotter than it is: good enough to rank keys for a slot, never used for results."""

    def __init__(self, keys_tracked: int):
        size = 1 << max(0, int(keys_tracked) - 1).bit_length()
        size = min(max(size, _SKETCH_MIN), _SKETCH_MAX)
        self._counts = np.zeros(size, np.uint8)
        self._shift = np.uint64(64 - (size.bit_length() - 1))
        self._noted = 0

    def _index(self, keys: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):
            return ((keys.view(np.uint64) * _GOLDEN) >> self._shift).astype(np.intp)

    def note(self, keys: np.ndarray) -> None:
        """Count one miss of each key (a key repeated in ``keys`` may count once)."""
        at = self._index(np.ascontiguousarray(keys, np.int64))
        counts = self._counts[at]
        np.minimum(counts, 254, out=counts)
        counts += 1
        self._counts[at] = counts
        self._noted += keys.size
        if self._noted >= 4 * self._counts.size:
            self._counts >>= 1
            self._noted = 0

    def of(self, keys: np.ndarray) -> np.ndarray:
        return self._counts[self._index(np.ascontiguousarray(keys, np.int64))]


def hottest(keys: np.ndarray, limit: int, frequency: MissFrequency) -> np.ndarray | None:
    """Positions (ascending) of the ``limit`` keys that missed most often by ``frequency``, or
    None when there are no more than ``limit`` keys."""
    if keys.size <= limit:
        return None
    scores = frequency.of(keys)
    return np.sort(np.argpartition(scores, keys.size - limit)[keys.size - limit :])


def latest_positions(keys: np.ndarray) -> np.ndarray | None:
    """Positions of each key's last occurrence (its latest fetch), or None when no key repeats.

    Lookups that miss the same hot key queue it again and again until an insert lands; under a
    skewed load a drain would otherwise insert each such key many times over, and the insert
    time grows with the backlog, so that inserts fall further behind and the hit rate stops
    rising. The latest fetch is the one to keep: if an update came between two fetches, only the
    later row is fresh, and its counts say so."""
    last = keys.size - 1 - np.unique(keys[::-1], return_index=True)[1]
    return None if last.size == keys.size else last


def rows_at(items: list[tuple[np.ndarray, np.ndarray, np.ndarray]], positions) -> np.ndarray:
    """The rows at ``positions`` of the items' rows laid end to end (None: all of them), copied
    once: a drain may hold a few hundred MB of fetched rows of which it inserts a fraction."""
    if positions is None:
        return items[0][1] if len(items) == 1 else np.concatenate([r for _, r, _ in items])
    total = sum(k.size for k, _, _ in items)
    if 2 * positions.size >= total:  # most of them: one concatenation, few Python steps
        return np.concatenate([r for _, r, _ in items])[positions]
    first = items[0][1]
    out = np.empty((positions.size, *first.shape[1:]), first.dtype)
    ends = np.cumsum([k.size for k, _, _ in items])
    owner = np.searchsorted(ends, positions, side="right")
    start = 0
    for i, (_, rows, _) in enumerate(items):
        mine = np.flatnonzero(owner == i)
        if mine.size:
            out[mine] = rows[positions[mine] - start]
        start = int(ends[i])
    return out


class InsertQueue:
    """Fetched rows waiting to be inserted into one cache, in batches.

    ``add`` queues rows; the first row queued schedules a drain task through ``submit`` (the
    cache's background inserter). The drain waits until ``batch_keys`` keys are queued or
    ``delay_s`` has passed, inserts what is queued in one call of ``insert(keys, rows, seen)``
    (a key queued more than once: its latest fetch only; more than ``max_keys`` keys: the
    hottest ``max_keys``, the others counted in ``skipped_keys``), and goes on while more
    arrived meanwhile: one drain per queue at a time, so batches go in in the order they were
    queued. When ``submit`` refuses (the inserter is full), what is queued is dropped (it is a
    cache: nothing is lost) and ``add`` returns False.
    """

    def __init__(
        self,
        insert: Callable[[np.ndarray, np.ndarray, np.ndarray], None],
        submit: Callable[[Callable[[], None]], bool],
        *,
        batch_keys: int = 4096,
        delay_s: float = 0.01,
        max_keys: int | None = None,
    ):
        self._insert = insert
        self._submit = submit
        self.batch_keys = batch_keys
        self.delay_s = delay_s
        self.max_keys = max_keys
        self._frequency = MissFrequency(4 * max_keys) if max_keys is not None else None
        self.skipped_keys = 0  # queued fetches not inserted (repeats of a key, colder keys)
        self.select_seconds = 0.0  # drains' time choosing what to insert (before inserting)
        self._cond = threading.Condition()
        self._items: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._queued = 0
        self._scheduled = False

    def add(self, keys: np.ndarray, rows: np.ndarray, seen: np.ndarray) -> bool:
        with self._cond:
            self._items.append((keys, rows, seen))
            self._queued += keys.size
            if self.max_keys is not None:
                # A drain slower than the lookups must not hold their rows without bound:
                # beyond QUEUED_DRAINS drains' worth, the oldest fetches go.
                while self._queued > QUEUED_DRAINS * self.max_keys and len(self._items) > 1:
                    old = self._items.pop(0)[0].size
                    self._queued -= old
                    self.skipped_keys += old
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

    def _select(self, items: list[tuple[np.ndarray, np.ndarray, np.ndarray]]):
        """(keys, rows, seen) to insert from the queued items: each key once, with its latest
        fetch; beyond ``max_keys``, the keys that missed most often. Chosen on the keys alone,
        so that only the chosen rows are copied, and, under a flood, the candidates are cut
        to the hottest 2 × ``max_keys`` fetches before the (sorting) de-duplication, which then
        runs on a fraction of what is queued."""
        keys = np.concatenate([k for k, _, _ in items])
        seen = np.concatenate([s for _, _, s in items])
        picked = None  # positions in the items laid end to end (None: all)
        if self._frequency is not None:
            if len(items) <= NOTED_ONE_BY_ONE:  # one lookup's distinct misses each
                for item_keys, _, _ in items:
                    self._frequency.note(item_keys)
            else:  # many small lookups: one step (a key repeated among them counts once)
                self._frequency.note(keys)
            if len(items) > 1:
                picked = hottest(keys, 2 * self.max_keys, self._frequency)
        if len(items) > 1:
            latest = latest_positions(keys if picked is None else keys[picked])
            if latest is not None:
                picked = latest if picked is None else picked[latest]
        if self._frequency is not None:
            keep = hottest(keys if picked is None else keys[picked], self.max_keys, self._frequency)
            if keep is not None:
                picked = keep if picked is None else picked[keep]
        if picked is None:
            return keys, rows_at(items, None), seen
        self.skipped_keys += keys.size - picked.size
        return keys[picked], rows_at(items, picked), seen[picked]

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
                started = time.perf_counter()
                chosen = self._select(items)
                self.select_seconds += time.perf_counter() - started
                self._insert(*chosen)
        except BaseException:
            with self._cond:
                self._take()
                self._scheduled = False
            raise
