"""Building the embedding caches of an HPS config: the default seams.CacheFactory of ``HPS``.

For every model with ``gpucache: true``, every device of its ``deployed_device_list`` and every
storage table (a table, or with ``fuse_embedding_table`` a fused group of tables), start-up asks
this factory for a front cache (one per device: lookups are routed by device id). The cache type
follows ``embedding_cache_type`` (``use_static_table`` forces static):

- ``dynamic``: room for ``ceil(gpucacheper × rows)`` rows (at least 64; 3 % more slots) in
  front of the CPU tiers, prefilled at start-up when ``init_ec`` (the hottest rows by ``meta``,
  else the first in file order). Without a usable GPU no dynamic cache is built (one warning):
  the CPU tiers serve the table (backend_choice.py);
- ``static``: the whole table on the GPU (in pinned host memory with ``enable_pagelock``);
- ``uvm``: the first ``gpucacheper`` of the file on the GPU, the rest in pinned host memory;
- ``stochastic``: parsed by HPS but not implemented there (it behaves like dynamic); same here.

static and uvm caches hold every row and never ask the CPU tiers (``holds_whole_table``), so
start-up loads no CPU tier with those tables: no host or disk copy besides the cache's own.

Each model's background insertion uses its own ``thread_pool_size`` threads. With
``refresh_interval`` > 0 and ``cache_refresh_percentage_per_iteration`` > 0, the dynamic caches
of a model on a device are refreshed from the CPU tiers every ``refresh_interval`` seconds (after
``refresh_delay``) by a ``CacheRefresher`` (refresh.py) with
``num_of_refresher_buffer_in_pool`` workers. The worker buffers (``num_of_worker_buffer_in_pool``
per model and device) are HPS's.
"""

from __future__ import annotations

import logging
import math

from ..config.fusion import StorageTable
from ..config.model import ModelConfig
from ..cpu_tiers import TableTiers
from ..errors import ConfigError
from .backend_choice import dynamic_backend, indexed_backend
from .embedding_cache import (
    AsyncInserter,
    DynamicEmbeddingCache,
    EmbeddingCache,
    IndexedEmbeddingCache,
)
from .refresh import CacheRefresher

log = logging.getLogger("hps_cli.runtime")

WHOLE_TABLE_TYPES = ("static", "uvm")


def holds_whole_table(model: ModelConfig, table: StorageTable) -> bool:
    """Whether this factory's caches of ``table`` hold every row (static and uvm caches): what
    ``EmbeddingCacheFactory.holds_whole_table`` answers, without building a factory (preflight
    asks it before start-up does)."""
    return model.gpucache and model.cache_type in WHOLE_TABLE_TYPES


class EmbeddingCacheFactory:
    """Callable ``(model_config, table, device_id, table_tiers) -> EmbeddingCache | None``
    (a seams.CacheFactory).

    Args:
        prefill: fill dynamic caches at start-up (when the model's ``init_ec`` allows it).
    """

    def __init__(self, *, prefill: bool = True):
        self.prefill = prefill
        self._inserters: dict[str, AsyncInserter] = {}  # by model
        self.refreshers: dict[tuple[str, int], CacheRefresher] = {}  # by (model, device)
        self._warned_no_gpu = False
        self.caches: list[EmbeddingCache] = []

    def inserter(self, model: ModelConfig) -> AsyncInserter:
        """The model's background inserter: ``thread_pool_size`` threads."""
        inserter = self._inserters.get(model.model)
        if inserter is None:
            inserter = self._inserters[model.model] = AsyncInserter(model.thread_pool_size)
        return inserter

    def holds_whole_table(self, model: ModelConfig, table: StorageTable) -> bool:
        return holds_whole_table(model, table)

    def __call__(
        self, model: ModelConfig, table: StorageTable, device_id: int, tiers: TableTiers
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
        if model.cache_type in WHOLE_TABLE_TYPES:
            cache: EmbeddingCache = self._indexed(model, table, device_id)
        else:
            dynamic = self._dynamic(model, table, device_id, tiers)
            if dynamic is None:
                return None
            cache = dynamic
        self.caches.append(cache)
        return cache

    def _dynamic(
        self, model: ModelConfig, table: StorageTable, device_id: int, tiers: TableTiers
    ) -> DynamicEmbeddingCache | None:
        name = f"{model.model}.{table.name}@{device_id}"
        with table.open() as reader:
            backend = dynamic_backend(device_id, reader.num_keys, model.gpucacheper, table.dim)
            if backend is None:
                self._warn_no_gpu()
                return None
            cache = DynamicEmbeddingCache(
                backend,
                fetch=tiers.fetch,
                hit_rate_threshold=model.hit_rate_threshold,
                default_value=table.default_value,
                inserter=self.inserter(model),
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
        self._refresher(model, device_id).add(cache)
        return cache

    def _warn_no_gpu(self) -> None:
        if not self._warned_no_gpu:
            self._warned_no_gpu = True
            log.warning(
                "no usable GPU (no CUDA device or no PyCUDA): tables with gpucache are served "
                "from the CPU tiers, without an embedding cache (HPS_CACHE_BACKEND=reference "
                "builds the cache's NumPy reference instead)"
            )

    def _refresher(self, model: ModelConfig, device_id: int) -> CacheRefresher:
        refresher = self.refreshers.get((model.model, device_id))
        if refresher is None:
            refresher = self.refreshers[(model.model, device_id)] = CacheRefresher(
                model.cache_refresh_percentage_per_iteration,
                model.num_of_refresher_buffer_in_pool,
                name=f"{model.model}@{device_id}",
            )
            refresher.start(model.refresh_delay, model.refresh_interval)
        return refresher

    def _indexed(
        self, model: ModelConfig, table: StorageTable, device_id: int
    ) -> IndexedEmbeddingCache:
        with table.open() as reader:
            on_device = reader.num_keys
            if model.cache_type == "uvm":
                on_device = int(math.floor(model.gpucacheper * reader.num_keys))
            elif model.enable_pagelock:
                on_device = 0
            backend = indexed_backend(device_id, reader, on_device)
        return IndexedEmbeddingCache(
            backend,
            default_value=table.default_value,
            name=f"{model.model}.{table.name}@{device_id}",
        )

    def flush(self) -> None:
        """Wait for every background insertion (tests, orderly shutdown)."""
        for inserter in self._inserters.values():
            inserter.flush()

    def close(self) -> None:
        """Stop refreshes, finish the background insertions, then free every cache's device
        memory (in that order: a refresh step or an insertion still queued needs its cache)."""
        for refresher in self.refreshers.values():
            refresher.close()
        for cache in self.caches:
            cache.close()
        for inserter in self._inserters.values():
            inserter.close()
        self._inserters.clear()
        for cache in self.caches:
            cache.backend.close()
