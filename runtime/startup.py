"""Start-up of an HPS config: check everything, then open and load the tiers and build the caches.

``start_up(config, ...)`` (what ``HPS(config, ...)`` calls) returns the ``Hierarchy`` that
``HPS`` routes lookups over. Its order:

1. check (preflight.py, the code ``hps validate-config`` runs): the config, what this runtime
   cannot honour, its table files and the RocksDB database, read only. A failed check writes
   nothing anywhere; warnings are logged (fields hps ignores included);
2. open (startup_plan.py): the table files (a fused group's together), the shared-memory
   segment, the RocksDB database (its lock), the Redis Cluster;
3. write (startup_load.py): RocksDB families of changed tables, then the volatile tier (neither
   for tables whose caches hold every row: static, uvm);
4. build the front caches (the ``cache_factory``, once per model, device and storage table: a
   table, or a fused group of tables) and a worker-buffer pool for every model and device that
   has one;
5. replay the updates journaled in RocksDB since each kept family was loaded (admin inserts
   and removes) over the volatile tier and the front caches, which were filled from the table
   files: an update outlives the process that made it.

Whatever fails, what was opened or built so far is closed again before the error propagates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, cast

from .config.fusion import storage_tables
from .config.model import PsConfig
from .cpu_tiers import TableTiers
from .errors import ConfigError
from .persistent.rocksdb_tier import DEFAULT_BLOCK_CACHE_BYTES
from .preflight import AUTO, Preflight, log_warnings, preflight
from .seams import CacheFactory, FrontCache
from .startup_load import load_tables, replay_updates
from .startup_plan import Stores, open_stores, plan_tables
from .worker_pool import WorkerPool


@dataclass
class Hierarchy:
    """What start-up built from a config: every table's CPU tiers (by model name and table
    number), the front caches (by model, table and device; the tables of a fused group share
    theirs), the worker buffers of each model on each device with a front cache, and the
    stores, the factory and everything else they hold. ``close`` releases all of it
    (idempotent)."""

    config: PsConfig
    cache_factory: CacheFactory | None
    tables: dict[tuple[str, int], TableTiers] = field(default_factory=dict)
    fronts: dict[tuple[str, int, int], FrontCache] = field(default_factory=dict)
    worker_pools: dict[tuple[str, int], WorkerPool] = field(default_factory=dict)
    stores: Stores = field(default_factory=Stores)

    def close(self) -> None:
        """Stop every front cache, then close their factory (it frees what they share), then
        the stores."""
        for front in {id(f): f for f in self.fronts.values()}.values():  # shared: once
            front.close()
        self.fronts.clear()
        if self.cache_factory is not None:
            self.cache_factory.close()
            self.cache_factory = None
        for tiers in self.tables.values():
            tiers.persistent = None
        self.stores.close()


def start_up(
    config: PsConfig | str | Path | dict | Preflight,
    *,
    cache_factory: CacheFactory | str | None = AUTO,
    rocksdb_block_cache_bytes: int = DEFAULT_BLOCK_CACHE_BYTES,
    rocksdb_row_cache_bytes: int | None = None,
    redis_options: dict | None = None,
    worker_timeout: float = 10.0,
    progress: Callable[[int], None] | None = None,
    allow_non_finite: bool = False,
) -> Hierarchy:
    """Check, open, load and build; the arguments are ``HPS``'s (see its doc). A ``Preflight``
    (what ``preflight(config, cache_factory=...)`` returned for the same ``cache_factory``, e.g.
    to fail before a server binds its ports) is not checked again."""
    if not isinstance(config, Preflight):
        config = preflight(config, allow_non_finite=allow_non_finite, cache_factory=cache_factory)
    checked = config.checked_config()
    log_warnings(config)
    factory = (
        default_cache_factory(checked)
        if cache_factory == AUTO
        else cast("CacheFactory | None", cache_factory)
    )
    built = Hierarchy(checked, factory)
    plans = plan_tables(config, factory)
    try:
        open_stores(
            checked,
            plans,
            built.stores,
            block_cache=rocksdb_block_cache_bytes,
            row_cache=rocksdb_row_cache_bytes,
            redis_options=redis_options or {},
        )
        load_tables(checked, plans, built.stores, built.tables, progress)
        if factory is not None:
            build_fronts(built, factory, worker_timeout)
        replay_updates(plans, built.stores, built.tables, built.fronts)
    except BaseException:
        built.close()
        raise
    finally:
        for plan in plans:
            plan.reader.close()
    return built


def default_cache_factory(config: PsConfig) -> CacheFactory | None:
    """The embedding caches the config asks for (None when no model asks for one)."""
    if not any(m.gpucache for m in config.models):
        return None
    from .gpu.cache_factory import EmbeddingCacheFactory

    return EmbeddingCacheFactory()


def build_fronts(built: Hierarchy, factory: CacheFactory, worker_timeout: float) -> None:
    """Ask ``factory`` for the front cache of every model, device and storage table (each table
    of a fused group gets its group's); give every model and device with one its
    ``num_of_worker_buffer_in_pool`` worker buffers."""
    for model in built.config.models:
        for device in model.deployed_device_list:
            for table in storage_tables(model):
                tiers = built.tables[(model.model, table.table_ids[0])]
                front = factory(model, table, device, tiers)
                if front is None:
                    if factory.holds_whole_table(model, table):  # its tiers are empty
                        raise ConfigError(
                            f"the cache factory holds table '{table.name}' of model "
                            f"'{model.model}' whole but built no cache for device {device}",
                            location=f"model '{model.model}' deployed_device_list",
                        )
                    continue
                for t in table.table_ids:
                    built.fronts[(model.model, t, device)] = front
                if (model.model, device) not in built.worker_pools:
                    built.worker_pools[(model.model, device)] = WorkerPool(
                        model.num_of_worker_buffer_in_pool,
                        timeout=worker_timeout,
                        name=f"model '{model.model}' on device {device}",
                    )
