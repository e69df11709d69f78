"""The result of a cache query whose misses are not resolved yet, and of work still queued.

A backend's ``launch_query`` queues the work and returns a ``Launched`` at once, so lookups of
several tables overlap on their devices; its ``wait()`` gives a ``PendingLookup`` (``query`` does
both). The caller reads ``miss_keys`` (unique keys the cache did not hold), decides how to
resolve them (HPS's hit_rate_threshold rule), and calls ``finish(rows)`` with the rows of
``miss_keys`` (synchronous, exact) or ``finish(None)`` (the misses keep the default value).
"""

from __future__ import annotations

from typing import Callable

import numpy as np


class PendingLookup:
    """Host-side pending result: ``out`` holds hits and defaults; misses filled by ``finish``."""

    def __init__(
        self,
        out: np.ndarray,
        miss_keys: np.ndarray,
        miss_pos: np.ndarray,
        unique_total: int | None = None,
    ):
        self._out = out
        self._raw_keys = miss_keys
        self._raw_pos = miss_pos
        self._unique: np.ndarray | None = None
        self._inverse: np.ndarray | None = None
        self.unique_total = unique_total
        self.miss_occurrences = int(miss_keys.size)  # missed key occurrences, repeats counted

    def _split(self) -> None:
        if self._unique is None:
            raw = self._raw_keys
            if not raw.size:  # the common all-hit case: skip np.unique's overhead
                self._unique, self._inverse = raw, self._raw_pos
                return
            order = np.argsort(raw)
            ordered = raw[order]
            if (ordered[1:] != ordered[:-1]).all():  # no repeats (uniform keys): no inverse map
                self._unique, self._inverse = ordered, None
                self._raw_pos = self._raw_pos[order]
            else:
                self._unique, self._inverse = np.unique(raw, return_inverse=True)

    @property
    def miss_keys(self) -> np.ndarray:
        """The distinct missed keys, sorted."""
        self._split()
        return self._unique  # type: ignore[return-value]

    def discard(self) -> None:
        """Drop the lookup unfinished: wait for any device work still writing its result
        (nothing here: a host result is complete)."""

    def finish(self, rows: np.ndarray | None) -> np.ndarray:
        """The lookup's rows; ``rows`` (one per ``miss_keys`` entry) fill the misses."""
        if rows is not None and self._raw_keys.size:
            self._split()
            self._out[self._raw_pos] = rows if self._inverse is None else rows[self._inverse]
        return self._out


class Launched:
    """Work queued on a device: ``wait()`` blocks until it is done and returns its result (the
    same object on every call). Whoever launches must wait: until then the device may still be
    reading the launch's staging buffers and writing its pinned result."""

    __slots__ = ("_wait", "_result")

    def __init__(self, wait: Callable[[], object]):
        self._wait: Callable[[], object] | None = wait
        self._result: object = None

    @classmethod
    def done(cls, result: object) -> "Launched":
        """Already finished (a synchronous backend)."""
        launched = cls(lambda: result)
        launched.wait()
        return launched

    def wait(self):
        if self._wait is not None:
            self._result, self._wait = self._wait(), None
        return self._result
