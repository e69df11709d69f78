"""Worker buffers: a bounded pool of lookup workspaces per (model, device), held by HPS.

HPS gives each (model, device) ``num_of_worker_buffer_in_pool`` workspaces and busy-waits
forever when none is free (hugectr_backend issue 38: throughput collapse under concurrency).
Here a lookup waits at most ``timeout`` seconds, then fails with a clear CapacityError.
"""

from __future__ import annotations

import threading
import time

from .errors import CapacityError


class WorkerPool:
    def __init__(self, size: int, *, timeout: float = 10.0, name: str = ""):
        self.size = max(1, int(size))
        self.timeout = timeout
        self.name = name
        self._free = list(range(self.size))
        self._cond = threading.Condition()
        self.waits = 0  # lookups that found no free workspace at first

    def acquire(self) -> int:
        deadline = time.monotonic() + self.timeout
        with self._cond:
            if not self._free:
                self.waits += 1
            while not self._free:
                left = deadline - time.monotonic()
                if left <= 0 or not self._cond.wait(left):
                    if self._free:
                        break
                    raise CapacityError(
                        f"all {self.size} worker buffer(s) stayed busy for {self.timeout:g} s",
                        location=f"{self.name} num_of_worker_buffer_in_pool",
                        hint="raise num_of_worker_buffer_in_pool (HPS advises 2x the concurrent "
                        "lookups) or lower the concurrency",
                    )
            return self._free.pop()

    def release(self, slot: int) -> None:
        with self._cond:
            self._free.append(slot)
            self._cond.notify()
