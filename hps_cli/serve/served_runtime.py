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
        config: path of the ps.json, or its ``runtime.preflight.Preflight`` (checked already).
        redis_options: passed to ``HPS`` (timeouts, retry interval of a Redis Cluster tier).
        allow_non_finite: tables and inserts may hold NaN/Inf.
        progress: ``HPS``'s load callback (it may raise to stop the load).
    """

    def __init__(
        self,
        config,
        *,
        redis_options: dict | None = None,
        allow_non_finite: bool = False,
        progress=None,
    ):
        from ..runtime import HPS
        from ..runtime.preflight import Preflight

        source = config.result.source if isinstance(config, Preflight) else config
        self.path = Path(source)
        self.hps = HPS(
            config if isinstance(config, Preflight) else self.path,
            redis_options=redis_options,
            allow_non_finite=allow_non_finite,
            progress=progress,
        )
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
