"""A read-only RocksDB tier watching its database: another process (``hps convert --to rocksdb
--overwrite``, a read-write server) may rewrite it while we serve it.

Every ``interval_s`` seconds a daemon thread asks the store whether the database's MANIFEST
changed (``RocksDbStore.reopen_if_changed``); if so, the store reopens it and moves every
table onto the new instance, so lookups see the new data instead of files the writer has
deleted, and a warning names the families whose record changed. Writes that the writer has not
flushed yet (its WAL) are not seen until it flushes (``hps convert`` and start-up loads do).
"""

from __future__ import annotations

import logging
import threading

from ..cpu_affinity import free_this_thread

log = logging.getLogger("hps_cli.runtime.rocksdb")

WATCH_INTERVAL_S = 2.0


class DatabaseWatcher:
    """Polls one read-only store until ``stop``."""

    def __init__(self, store, interval_s: float = WATCH_INTERVAL_S):
        self.store = store
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"rocksdb-watch:{store.path.name}", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        free_this_thread()
        while not self._stop.wait(self.interval_s):
            try:
                self.store.reopen_if_changed()
            except Exception:  # noqa: BLE001 - the watcher must outlive one bad look
                log.exception("watching the read-only RocksDB %s failed", self.store.path)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=30)
