"""One HPS runtime as the server holds it: ``HPS(config)`` with the embedding caches the config
asks for (GPU caches on a GPU machine, the NumPy reference elsewhere, prefilled at start-up).
"""

from __future__ import annotations

import logging
import threading
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

    @property
    def config(self):
        return self.hps.config

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.hps.close()
        log.info("closed the runtime of %s", self.path)
