"""One HPS runtime as the server holds it: ``HPS(config)`` with the embedding caches the config
asks for (GPU caches on a GPU machine, the NumPy reference elsewhere, prefilled at start-up).

Every lookup model has a runtime of its own (a config of that one model: lookup_configs.py), so
that it can be loaded, reloaded and unloaded alone; an inference package uses the runtime of
the lookup model it shares its tables with, or one of its own from its ps.json.
"""

from __future__ import annotations

import logging
import threading
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
