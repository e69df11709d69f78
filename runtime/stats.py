"""Lookup statistics: per-table counters and latency histograms, cheap to update from many threads.

Counters are plain integers behind one small lock per table (an update holds it for a few
additions). Latencies go into fixed log-spaced buckets (8 per decade from 1 µs to 100 s), so
recording is O(1), memory is constant, and percentiles are read from the buckets (each reported
value is the upper edge of its bucket: at most 33 % above the true value).
"""

from __future__ import annotations

import bisect
import math
import threading

_PER_DECADE = 8
_LOW, _HIGH = 1e-6, 100.0
_EDGES = tuple(
    _LOW * 10 ** (i / _PER_DECADE)
    for i in range(int(round(math.log10(_HIGH / _LOW) * _PER_DECADE)) + 1)
)

COUNTER_NAMES = (
    "lookups",  # fetch calls that reached this table's CPU tiers
    "keys",  # keys looked up in the CPU tiers
    "volatile_hits",  # keys answered by the volatile tier (hash map or Redis)
    "persistent_hits",  # keys answered by RocksDB
    "defaults",  # keys no tier held: they got the table's default vector
    # keys that fell through because the volatile tier failed (e.g. a dead node)
    "volatile_failures",
    "persistent_failures",
    "writebacks",  # persistent hits written back into the volatile tier
    "inserted",  # keys inserted by insert()
    "removed",  # keys removed by remove()
)


class LatencyHistogram:
    """Log-bucketed latencies in seconds."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buckets = [0] * (len(_EDGES) + 1)
        self._count = 0
        self._total = 0.0
        self._max = 0.0

    def record(self, seconds: float) -> None:
        index = bisect.bisect_left(_EDGES, seconds)
        with self._lock:
            self._buckets[index] += 1
            self._count += 1
            self._total += seconds
            if seconds > self._max:
                self._max = seconds

    def percentile(self, q: float) -> float:
        """The latency below which a fraction ``q`` of the calls fell (0 when none was recorded)."""
        with self._lock:
            buckets, count, top = list(self._buckets), self._count, self._max
        return _percentile(buckets, count, top, q)

    def snapshot(self) -> dict:
        with self._lock:
            buckets, count, total, top = list(self._buckets), self._count, self._total, self._max
        return {
            "count": count,
            "mean_s": total / count if count else 0.0,
            "p50_s": _percentile(buckets, count, top, 0.50),
            "p90_s": _percentile(buckets, count, top, 0.90),
            "p99_s": _percentile(buckets, count, top, 0.99),
            "max_s": top,
        }


def _percentile(buckets: list[int], count: int, top: float, q: float) -> float:
    if not count:
        return 0.0
    rank = max(1, math.ceil(q * count))
    seen = 0
    for index, n in enumerate(buckets):
        seen += n
        if seen >= rank:
            return min(_EDGES[index], top) if index < len(_EDGES) else top
    return top


class TableStats:
    """Counters (``COUNTER_NAMES``) and latency histograms of one table.

    ``latency``: whole lookups as callers of ``HPS.lookup`` see them (front cache included);
    ``fetch_latency``: calls into the CPU tiers (``TableTiers.fetch``).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(COUNTER_NAMES, 0)
        self.latency = LatencyHistogram()
        self.fetch_latency = LatencyHistogram()

    def add(self, **increments: int) -> None:
        with self._lock:
            for name, value in increments.items():
                self._counts[name] += int(value)

    def add_lookup(
        self,
        keys: int,
        volatile_hits: int,
        persistent_hits: int,
        defaults: int,
        volatile_failures: int = 0,
        persistent_failures: int = 0,
        writebacks: int = 0,
    ) -> None:
        """The counters of one ``TableTiers.fetch`` (Python ints): what ``add`` does for the
        lookup counters, without a keyword dict per call (it runs on every lookup)."""
        counts = self._counts
        with self._lock:
            counts["lookups"] += 1
            counts["keys"] += keys
            counts["volatile_hits"] += volatile_hits
            counts["persistent_hits"] += persistent_hits
            counts["defaults"] += defaults
            if volatile_failures or persistent_failures or writebacks:
                counts["volatile_failures"] += volatile_failures
                counts["persistent_failures"] += persistent_failures
                counts["writebacks"] += writebacks

    def __getitem__(self, name: str) -> int:
        return self._counts[name]

    def counters(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def snapshot(self) -> dict:
        return {
            "counters": self.counters(),
            "latency": self.latency.snapshot(),
            "fetch_latency": self.fetch_latency.snapshot(),
        }
