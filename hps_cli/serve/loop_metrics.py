"""Request counters and histograms that the event-loop thread keeps without locks.

Every request updates a counter and a latency histogram, and every batch two size histograms.
prometheus_client's metrics take a lock and make a few calls per update (about 2 µs each); the
request side is only ever updated on the event loop, so plain lists of integers do the same
work with one bisection and two additions. ``LoopMetrics`` exports them as a collector, read at
scrape time from the metrics server's thread: each read of a list is atomic under the GIL, so
a scrape sees every count that an update finished before it (a histogram's sum may lag its
buckets by the updates that run while it is read).
"""

from __future__ import annotations

from bisect import bisect_left

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString


class _Histogram:
    __slots__ = ("buckets", "total")

    def __init__(self, size: int):
        self.buckets = [0] * size  # per bucket (not cumulative); the last one is +Inf
        self.total = 0.0


class LoopHistogram:
    """A labelled histogram: ``observe(labels, value)`` (labels: a tuple of strings)."""

    def __init__(self, name: str, documentation: str, labelnames: list[str], buckets):
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        self.edges = tuple(float(b) for b in buckets)
        self._les = [floatToGoString(b) for b in self.edges] + ["+Inf"]
        self._series: dict[tuple[str, ...], _Histogram] = {}

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        series = self._series.get(labels)
        if series is None:
            series = self._series[labels] = _Histogram(len(self.edges) + 1)
        series.buckets[bisect_left(self.edges, value)] += 1  # bucket i: value <= edge i
        series.total += value

    def remove(self, predicate) -> None:
        for labels in [k for k in self._series if predicate(k)]:
            del self._series[labels]

    def collect(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, series in list(self._series.items()):
            counts, total = list(series.buckets), series.total
            running, cumulative = 0, []
            for le, count in zip(self._les, counts):
                running += count
                cumulative.append((le, running))
            family.add_metric(list(labels), cumulative, total)
        return family


class LoopCounter:
    """A labelled counter: ``inc(labels)`` or ``inc(labels, amount)``."""

    def __init__(self, name: str, documentation: str, labelnames: list[str]):
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        self._values: dict[tuple[str, ...], int] = {}

    def inc(self, labels: tuple[str, ...], amount: int = 1) -> None:
        values = self._values
        values[labels] = values.get(labels, 0) + amount

    def remove(self, predicate) -> None:
        for labels in [k for k in self._values if predicate(k)]:
            del self._values[labels]

    def collect(self) -> CounterMetricFamily:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, value in list(self._values.items()):
            family.add_metric(list(labels), value)
        return family


class LoopMetrics:
    """A prometheus_client collector over loop counters and histograms."""

    def __init__(self, *metrics):
        self.metrics = metrics

    def describe(self):
        return []

    def collect(self):
        for metric in self.metrics:
            yield metric.collect()
