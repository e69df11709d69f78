"""Building the embedding caches of an HPS config: the default seams.CacheFactory of ``HPS``.

For every model with ``gpucache: true``, every device of its ``deployed_device_list`` and every
table, start-up asks this factory for a front cache (one per device: lookups are routed by
device id). The cache type follows ``embedding_cache_type`` (``use_static_table`` forces
static):

- ``dynamic``: room for ``ceil(gpucacheper × rows)`` rows (at least 64; 3 % more slots) in
  front of the CPU tiers, prefilled at start-up when ``init_ec`` (the hottest rows by ``meta``,
  else the first in file order). Without a usable GPU no dynamic cache is built (one warning):
  the CPU tiers serve the table (backend_choice.py);
- ``static``: the whole table on the GPU (in pinned host memory with ``enable_pagelock``);
- ``uvm``: the first ``gpucacheper`` of the file on the GPU, the rest in pinned host memory;
- ``stochastic``: parsed by HPS but not implemented there (it behaves like dynamic); same here.

Background insertion uses ``thread_pool_size`` threads. With ``refresh_interval`` > 0 a dynamic
cache reloads its keys from the CPU tiers every that many seconds (after ``refresh_delay``).
The worker buffers (``num_of_worker_buffer_in_pool`` per model and device) are HPS's.
"""

from __future__ import annotations

import logging
import math

from ..config.model import ModelConfig
from ..cpu_tiers import TableTiers
from ..errors import ConfigError
from ..table.reader import TableReader
from .backend_choice import dynamic_backend, indexed_backend
from .embedding_cache import (
    AsyncInserter,
    DynamicEmbeddingCache,
    EmbeddingCache,
    IndexedEmbeddingCache,
)

log = logging.getLogger("hps_cli.runtime")


class EmbeddingCacheFactory:
    """Callable ``(model_config, table_id, device_id, table_tiers) -> EmbeddingCache | None``
    (a seams.CacheFactory).

    Args:
        prefill: fill dynamic caches at start-up (when the model's ``init_ec`` allows it).
    """

    def __init__(self, *, prefill: bool = True):
        self.prefill = prefill
        self._warned_no_gpu = False
        self._inserter: AsyncInserter | None = None
        self.caches: list[EmbeddingCache] = []

    def _async_inserter(self, model: ModelConfig) -> AsyncInserter:
        if self._inserter is None:
            self._inserter = AsyncInserter(model.thread_pool_size)
        return self._inserter

    def __call__(
        self, model: ModelConfig, table_id: int, device_id: int, tiers: TableTiers
    ) -> EmbeddingCache | None:
        if not model.gpucache:
            return None
        where = f"$.models[?(@.model=='{model.model}')]"
        if model.fp8_quant:
            raise ConfigError(
                "fp8_quant is not supported by the hps cache",
                location=f"{where}.fp8_quant",
                hint="set fp8_quant to false",
            )
        if model.cache_type in ("dynamic", "stochastic"):
            dynamic = self._dynamic(model, table_id, device_id, tiers)
            if dynamic is None:
                return None
            cache: EmbeddingCache = dynamic
        else:
            cache = self._indexed(model, table_id, device_id)
        self.caches.append(cache)
        return cache

    def _dynamic(
        self, model: ModelConfig, table_id: int, device_id: int, tiers: TableTiers
    ) -> DynamicEmbeddingCache | None:
        dim = model.embedding_vecsize_per_table[table_id]
        name = f"{model.model}.{model.table_name(table_id)}@{device_id}"
        with TableReader(model.table_path(table_id), dim) as reader:
            backend = dynamic_backend(device_id, reader.num_keys, model.gpucacheper, dim)
            if backend is None:
                self._warn_no_gpu()
                return None
            cache = DynamicEmbeddingCache(
                backend,
                fetch=tiers.fetch,
                hit_rate_threshold=model.hit_rate_threshold,
                default_value=model.default_value(table_id),
                inserter=self._async_inserter(model),
                name=name,
            )
            if self.prefill and model.init_ec:
                inserted = cache.prefill(reader)
                log.info(
                    "cache %s (%s): prefilled %d of %d keys",
                    name,
                    "gpu" if backend.on_gpu else "reference",
                    inserted,
                    reader.num_keys,
                )
        if model.refresh_interval > 0:
            cache.start_refresh(model.refresh_delay, model.refresh_interval)
        return cache

    def _warn_no_gpu(self) -> None:
        if not self._warned_no_gpu:
            self._warned_no_gpu = True
            log.warning(
                "no usable GPU (no CUDA device or no PyCUDA): tables with gpucache are served "
                "from the CPU tiers, without an embedding cache (HPS_CACHE_BACKEND=reference "
                "builds the cache's NumPy reference instead)"
            )

    def _indexed(self, model: ModelConfig, table_id: int, device_id: int) -> IndexedEmbeddingCache:
        dim = model.embedding_vecsize_per_table[table_id]
        with TableReader(model.table_path(table_id), dim) as reader:
            on_device = reader.num_keys
            if model.cache_type == "uvm":
                on_device = int(math.floor(model.gpucacheper * reader.num_keys))
            elif model.enable_pagelock:
                on_device = 0
            backend = indexed_backend(device_id, reader, on_device)
        self._async_inserter(model)  # the first cache built sizes the shared inserter
        return IndexedEmbeddingCache(
            backend,
            default_value=model.default_value(table_id),
            name=f"{model.model}.{model.table_name(table_id)}@{device_id}",
        )

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
            cache.backend.close()
