"""One HPS runtime as the server holds it: ``HPS(config)`` with the embedding caches the config
asks for (GPU caches on a GPU machine, the NumPy reference elsewhere, prefilled at start-up).

Every lookup model has a runtime of its own (a config of that one model: lookup_configs.py), so
that it can be loaded, reloaded and unloaded alone; an inference package uses the runtime of
the lookup model it shares its tables with, or one of its own from its ps.json.

Work on the runtime's tables in worker threads (executions of batches, admin table updates) is
started through ``run_in_thread``, which counts it in ``threads_busy`` until the thread is done
with it. While that count is above 0, batches of the models over this runtime do not run on the
event loop (batcher.py): such work may hold a lock a lookup waits for (an update holds its
tables' write lock for its whole duration, a batch's write-back holds the volatile tier's), and
a lookup waiting on the event loop would stall every client. The count lives here because the
runtime owns those locks (its ``HPS``'s tiers and caches): a package over a lookup model's
tables shares that model's runtime and so its count, while another runtime's work never holds
them (runtimes that share a RocksDB database share only its store, whose gets wait for no
update). A reloaded model gets a new runtime and a new count; work still running on the old one
counts down on the old one.
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
        config: a ps.json path, a typed config (``PsConfig``), or a config's
            ``runtime.preflight.Preflight`` (checked already: not checked again).
        path: where the config came from, for messages (default: ``config``, or the source of
            the typed or checked config).
        redis_options: passed to ``HPS`` (timeouts, retry interval of a Redis Cluster tier).
        rocksdb_row_cache_bytes: passed to ``HPS`` (None: its default).
        allow_non_finite: tables and inserts may hold NaN/Inf.
        progress: ``HPS``'s load callback (it may raise to stop the load).
    """

    def __init__(
        self,
        config,
        *,
        path: Path | str | None = None,
        redis_options: dict | None = None,
        rocksdb_row_cache_bytes: int | None = None,
        allow_non_finite: bool = False,
        progress=None,
    ):
        from ..runtime import HPS
        from ..runtime.preflight import Preflight

        if path is None:
            if isinstance(config, Preflight):
                path = config.result.source
            elif isinstance(config, (str, Path)):
                path = config
            else:
                path = config.source_path or "<config>"
        self.path = Path(path)
        self.hps = HPS(
            config,
            redis_options=redis_options,
            rocksdb_row_cache_bytes=rocksdb_row_cache_bytes,
            allow_non_finite=allow_non_finite,
            progress=progress,
        )
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
