"""Latency percentiles, measurement windows and perf_analyzer's stability rule.

Percentiles use the nearest-rank definition on the recorded samples (no interpolation, no
histogram buckets): pN is the smallest sample with at least N % of the samples at or below it,
so p50 <= p90 <= p95 <= p99 <= max always holds and every value is a measured latency.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

PERCENTILES = (50, 90, 95, 99)


def nearest_rank(sorted_values: np.ndarray, q: float) -> float:
    """The nearest-rank q-th percentile (0 < q <= 100) of ascending values."""
    n = sorted_values.size
    if n == 0:
        return 0.0
    rank = max(1, math.ceil(q / 100.0 * n))
    return float(sorted_values[rank - 1])


def latency_summary(samples_us) -> dict:
    """{count, min, mean, std, p50, p90, p95, p99, max} of latencies in microseconds."""
    values = np.sort(np.asarray(samples_us, dtype=np.float64))
    if values.size == 0:
        return {
            "count": 0,
            "min": None,
            "mean": None,
            "std": None,
            **{f"p{q}": None for q in PERCENTILES},
            "max": None,
        }
    return {
        "count": int(values.size),
        "min": float(values[0]),
        "mean": float(values.mean()),
        "std": float(values.std()),
        **{f"p{q}": nearest_rank(values, q) for q in PERCENTILES},
        "max": float(values[-1]),
    }


@dataclass
class Window:
    """One measurement window of a load level: what completed in [start, end)."""

    start: float
    end: float
    latencies_us: list[float] = field(default_factory=list)
    errors: int = 0
    send_us: float = 0.0  # summed over the window's successful requests
    recv_us: float = 0.0
    server: dict | None = None  # deltas of the server's statistics over the window

    @property
    def seconds(self) -> float:
        return max(self.end - self.start, 1e-9)

    @property
    def completed(self) -> int:
        return len(self.latencies_us)

    @property
    def throughput(self) -> float:
        return self.completed / self.seconds

    @property
    def mean_latency_us(self) -> float:
        return float(np.mean(self.latencies_us)) if self.latencies_us else 0.0

    def to_dict(self) -> dict:
        return {
            "seconds": self.seconds,
            "requests": self.completed,
            "errors": self.errors,
            "throughput_infer_per_sec": self.throughput,
            "avg_latency_us": self.mean_latency_us,
        }


def within(values: list[float], percent: float) -> bool:
    """True when every value is within ±percent % of their mean (perf_analyzer's test)."""
    mean = sum(values) / len(values)
    if mean == 0:
        return all(v == 0 for v in values)
    return all(abs(v - mean) <= percent / 100.0 * mean for v in values)


def is_stable(windows: list[Window], percent: float, count: int = 3) -> bool:
    """perf_analyzer's rule: the last ``count`` windows' throughputs are all within ±percent %
    of their mean, and so are their average latencies; a window without a completed request is
    never stable."""
    if len(windows) < count:
        return False
    last = windows[-count:]
    if any(w.completed == 0 for w in last):
        return False
    return within([w.throughput for w in last], percent) and within(
        [w.mean_latency_us for w in last], percent
    )
