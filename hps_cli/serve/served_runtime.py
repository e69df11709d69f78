"""One HPS runtime as the server holds it: ``HPS(config)`` with the embedding caches the config
asks for (GPU caches on a GPU machine, the NumPy reference elsewhere, prefilled at start-up).

Work on the runtime's tables in worker threads (executions of batches, admin table updates) is
started through ``run_in_thread``, which counts it in ``threads_busy`` until the thread is done
with it. While that count is above 0, batches of its lookup models do not run on the event loop
(batcher.py): such work may hold a lock a lookup waits for (an update holds its tables' write
lock for its whole duration, a batch's write-back holds the volatile tier's), and a lookup
waiting on the event loop would stall every client.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import Executor
from pathlib import Path

log = logging.getLogger("hps_cli.serve")


class ServedRuntime:
    """An ``HPS`` runtime and where it came from; ``close`` is idempotent.

    Args:
        config: path of the ps.json.
        redis_options: passed to ``HPS`` (timeouts, retry interval of a Redis Cluster tier).
    """

    def __init__(self, config: Path, *, redis_options: dict | None = None):
        from ..runtime import HPS

        self.path = Path(config)
        self.hps = HPS(self.path, redis_options=redis_options)
        self._lock = threading.Lock()
        self._closed = False
        self.threads_busy = 0  # work started by run_in_thread and not done (event loop only)

    @property
    def config(self):
        return self.hps.config

    def run_in_thread(self, executor: Executor, fn, *args) -> asyncio.Future:
        """``fn(*args)`` in ``executor``, counted in ``threads_busy`` until the thread has
        finished it (also when an awaiting task is cancelled first). Call on the event loop."""
        loop = asyncio.get_running_loop()
        self.threads_busy += 1
        work = executor.submit(fn, *args)

        def done(_) -> None:  # in the worker thread (or here, when submit ran it at once)
            try:
                loop.call_soon_threadsafe(self._thread_done)
            except RuntimeError:  # the loop is closed: nothing runs inline any more
                pass

        work.add_done_callback(done)
        return asyncio.wrap_future(work, loop=loop)

    def _thread_done(self) -> None:
        self.threads_busy -= 1

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.hps.close()
        log.info("closed the runtime of %s", self.path)
