"""Building the embedding caches of an HPS config: the ``cache_factory`` of ``HPS``.

For every model with ``gpucache: true``, every device of its ``deployed_device_list`` and every
table, ``HPS`` asks this factory for a front cache (one per device: lookups are routed by
device id). The cache type follows ``embedding_cache_type`` (``use_static_table`` forces
static):

- ``dynamic``: ``floor(gpucacheper × rows)`` slots (at least 64) in front of the CPU tiers,
  prefilled at start-up when ``init_ec`` (hottest rows first by ``meta``, else file order);
- ``static``: the whole table on the GPU (in pinned host memory with ``enable_pagelock``);
- ``uvm``: the first ``gpucacheper`` of the file on the GPU, the rest in pinned host memory;
- ``stochastic``: parsed by HPS but not implemented there (it behaves like dynamic); same here.

Each (model, device) gets ``num_of_worker_buffer_in_pool`` worker buffers shared by its tables;
background insertion uses ``thread_pool_size`` threads. With ``refresh_interval`` > 0 a dynamic
cache reloads its keys from the CPU tiers every that many seconds (after ``refresh_delay``).
"""

from __future__ import annotations

import logging
import math

from ..errors import ConfigError
from ..table.reader import TableReader
from ..worker_pool import WorkerPool
from .backend_choice import backend_kind, dynamic_backend, indexed_backend
from .embedding_cache import AsyncInserter, EmbeddingCache

log = logging.getLogger("hps_cli.runtime")


class EmbeddingCacheFactory:
    """Callable ``(model_config, table_id, device_id, table_tiers) -> EmbeddingCache | None``.

    Args:
        prefill: fill dynamic caches at start-up (when the model's ``init_ec`` allows it).
        worker_timeout: seconds a lookup waits for a free worker buffer before failing.
    """

    def __init__(self, *, prefill: bool = True, worker_timeout: float = 10.0):
        self.prefill = prefill
        self.worker_timeout = worker_timeout
        self._pools: dict[tuple[str, int], WorkerPool] = {}
        self._inserter: AsyncInserter | None = None
        self.caches: list[EmbeddingCache] = []

    def _pool(self, model, device_id: int) -> WorkerPool:
        key = (model.model, device_id)
        if key not in self._pools:
            self._pools[key] = WorkerPool(
                model.num_of_worker_buffer_in_pool,
                timeout=self.worker_timeout,
                name=f"model '{model.model}' on device {device_id}",
            )
        return self._pools[key]

    def _async_inserter(self, model) -> AsyncInserter:
        if self._inserter is None:
            self._inserter = AsyncInserter(model.thread_pool_size)
        return self._inserter

    def __call__(self, model, table_id: int, device_id: int, tiers) -> EmbeddingCache | None:
        if not model.gpucache:
            return None
        where = f"$.models[?(@.model=='{model.model}')]"
        if model.fp8_quant:
            raise ConfigError(
                "fp8_quant is not supported by the hps cache",
                location=f"{where}.fp8_quant",
                hint="set fp8_quant to false",
            )
        kind = model.cache_type
        dim = model.embedding_vecsize_per_table[table_id]
        name = f"{model.model}.{model.table_name(table_id)}@{device_id}"
        with TableReader(model.table_path(table_id), dim) as reader:
            if kind in ("dynamic", "stochastic"):
                backend = dynamic_backend(device_id, reader.num_keys, model.gpucacheper, dim)
            else:
                on_device = reader.num_keys
                if kind == "uvm":
                    on_device = int(math.floor(model.gpucacheper * reader.num_keys))
                elif model.enable_pagelock:
                    on_device = 0
                backend = indexed_backend(device_id, reader, on_device)
            cache = EmbeddingCache(
                backend,
                fetch=tiers.fetch if backend.kind == "dynamic" else None,
                hit_rate_threshold=model.hit_rate_threshold,
                default_value=model.default_value(table_id),
                inserter=self._async_inserter(model),
                pool=self._pool(model, device_id),
                name=name,
            )
            if backend.kind == "dynamic" and self.prefill and model.init_ec:
                inserted = cache.prefill(reader)
                log.info(
                    "cache %s (%s): prefilled %d of %d keys",
                    name,
                    backend_kind(device_id),
                    inserted,
                    reader.num_keys,
                )
        if backend.kind == "dynamic" and model.refresh_interval > 0:
            cache.start_refresh(model.refresh_delay, model.refresh_interval)
        self.caches.append(cache)
        return cache

    def flush(self) -> None:
        """Wait for every background insertion (tests, orderly shutdown)."""
        if self._inserter is not None:
            self._inserter.flush()

    def close(self) -> None:
        """Stop refreshes, finish the background insertions, then free every cache's device
        memory (in that order: an insertion still queued needs its cache)."""
        for cache in self.caches:
            cache.close()
        if self._inserter is not None:
            self._inserter.close()
            self._inserter = None
        for cache in self.caches:
            release = getattr(cache.backend, "close", None)
            if release is not None:
                release()
