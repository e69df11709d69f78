"""Periodic refresh of the dynamic caches of one model on one device: HPS's
``refresh_embedding_cache``, which its Triton backend runs on the ``refresh_delay`` /
``refresh_interval`` timers.

A round walks every cache in steps of ``cache_refresh_percentage_per_iteration`` of its sets (at
least one set): a step dumps the keys cached in its sets, fetches their rows from the CPU tiers
(volatile → persistent → default) and overwrites the cached copies
(``DynamicEmbeddingCache.refresh_step``). ``num_of_refresher_buffer_in_pool`` workers run the
steps, so that many steps, and their CPU-tier fetches (Redis round trips, RocksDB reads), are in
flight at once, across the model's tables and within one. HPS holds one refresh workspace for a
whole round and walks its tables one after another; like HPS, a share of 0 refreshes nothing
(validate-config and start-up warn when ``refresh_interval`` asks for refreshes then).
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from ..cpu_affinity import free_this_thread
from .embedding_cache import DynamicEmbeddingCache

log = logging.getLogger("hps_cli.runtime")


class CacheRefresher:
    """The refresh rounds of the dynamic caches of one model on one device.

    Args:
        share: the model's ``cache_refresh_percentage_per_iteration`` (0: refresh nothing).
        workers: the model's ``num_of_refresher_buffer_in_pool``: steps run at once.
        name: ``model@device``, for thread names and messages.
    """

    def __init__(self, share: float, workers: int, name: str = ""):
        self.share = float(share)
        self.workers = max(1, int(workers))
        self.name = name
        self.rounds = 0  # rounds completed
        self._caches: list[DynamicEmbeddingCache] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None
        self._pool = ThreadPoolExecutor(
            max_workers=self.workers,
            thread_name_prefix=f"hps-refresh-{name}",
            initializer=free_this_thread,
        )

    def add(self, cache: DynamicEmbeddingCache) -> None:
        """Refresh ``cache`` from the next round on."""
        with self._lock:
            self._caches.append(cache)

    def refresh(self) -> int:
        """One round over every cache now; returns the keys refreshed. The first error of a
        step is raised after every step ended."""
        if self.share <= 0:
            return 0
        with self._lock:
            caches = list(self._caches)
        futures = [
            self._pool.submit(cache.refresh_step, begin, end)
            for cache in caches
            for begin, end in cache.refresh_ranges(self.share)
        ]
        refreshed, error = 0, None
        for future in futures:
            try:
                refreshed += future.result()
            except Exception as exc:  # noqa: BLE001 - finish the round, then report the first
                error = error or exc
        if error is not None:
            raise error
        self.rounds += 1
        return refreshed

    def start(self, delay: float, interval: float) -> None:
        """A round every ``interval`` seconds after ``delay`` (HPS's refresh_delay /
        refresh_interval), until ``close``; nothing with an interval or a share of 0."""
        if interval <= 0 or self.share <= 0 or self._timer is not None:
            return

        def run() -> None:
            free_this_thread()
            if self._stop.wait(delay):
                return
            while not self._stop.is_set():
                try:
                    self.refresh()
                except Exception:  # a failing tier must not kill the refresher; next round
                    log.exception("cache refresh of %s failed", self.name)
                if self._stop.wait(interval):
                    return

        self._timer = threading.Thread(target=run, name=f"hps-refresh-{self.name}", daemon=True)
        self._timer.start()

    def close(self) -> None:
        """Stop the rounds and wait for the steps running (idempotent)."""
        self._stop.set()
        if self._timer is not None:
            self._timer.join(timeout=30)
            self._timer = None
        self._pool.shutdown(wait=True)
