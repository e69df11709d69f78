"""``HPS``: the CPU lookup runtime of an HPS config (volatile tier → RocksDB → default).

    hps = HPS("ps.json")
    vectors = hps.lookup(keys, "model", "table")            # float32 (len(keys), dim)
    per_table = hps.lookup_tables([k0, k1], "model")        # every table of a model at once
    flat = hps.lookup_concatenated(keys, num_keys, "model") # Triton HPS backend layout
    hps.insert("model", "table", keys, vectors); hps.remove("model", "table", keys)
    hps.stats()                                             # per-table counters and latencies

Start-up (``HPS(config)``): validate everything first (schema, semantics and every table file,
``supportlonglong`` key ranges, what this runtime cannot honour, the RocksDB database — lock,
read-only families, key width and dims — and the Redis Cluster's reachability); only then write:
RocksDB families of changed tables (atomically per family, skipping tables the database already
holds by checksum), then the volatile tier (``initial_cache_rate`` of each table, hottest first).
A failed validation writes nothing anywhere.

Keys: int64 arrays (``supportlonglong: true``), or uint32 arrays — int64 arrays whose values fit
are accepted too — when it is false. Inside, and at the seam below, keys are always int64.

The front-cache seam (for the GPU embedding cache, which sits in front of these tiers):

- ``HPS(config, cache_factory=f)``: after the CPU tiers are loaded, for every model, every
  device in its ``deployed_device_list`` and every table, HPS calls
  ``f(model_config, table_id, device_id, backend)`` where ``backend`` is that table's
  ``TableTiers``. It returns a front cache, or None for no cache of that table on that device.
- A front cache has ``lookup(keys) -> float32 (n, dim)`` (int64 keys; for the keys it misses it
  calls ``backend.fetch(keys)``, which is exact: volatile → persistent → default, with
  write-back and counters), ``update(keys, vectors)`` and ``remove(keys)`` (called after
  ``HPS.insert`` / ``HPS.remove`` changed the CPU tiers, so it can refresh or drop those keys),
  and optionally ``close()``.
- ``HPS.lookup(..., device_id=None)`` routes through the front cache of that device (default:
  the model's last deployed device, as HPS does) when there is one, else straight to
  ``backend.fetch``. ``HPS.table_backend(model, table)`` returns the ``TableTiers``.

Thread safety: lookups may run concurrently from any number of threads; updates of a table are
exclusive with its lookups (see cpu_tiers.py).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .config.files import file_issues
from .config.model import ModelConfig, PsConfig
from .config.validate import load_config
from .cpu_tiers import TableTiers
from .errors import ConfigError, InvalidInputError, NotFoundError
from .persistent.rocksdb_tier import DEFAULT_BLOCK_CACHE_BYTES, RocksDbStore, auto_row_cache_bytes
from .startup_load import load_volatile, table_checksum, volatile_rows
from .stats import TableStats
from .table.reader import TableReader

log = logging.getLogger("hps_cli.runtime")


def _abandon_all(started: list) -> None:
    """Wait for the device work of every started front-cache lookup still pending, so that no
    buffer is reused under it; an interrupt while waiting is re-raised after the rest."""
    interrupt: BaseException | None = None
    for lookup in started:
        if lookup is None:
            continue
        try:
            lookup.abandon()
        except BaseException as exc:  # noqa: BLE001 - e.g. KeyboardInterrupt: finish first
            interrupt = interrupt or exc
    if interrupt is not None:
        raise interrupt


UINT32_MAX = 2**32 - 1
CacheFactory = Callable[[ModelConfig, int, int, TableTiers], object]


@dataclass
class _TablePlan:
    model: ModelConfig
    table_id: int
    name: str
    tag: str
    dim: int
    reader: TableReader
    checksum: str = ""
    persistent_current: bool = False


class HPS:
    """The CPU lookup runtime of an HPS config.

    Args:
        config: a ps.json path, a parsed document, or a ``PsConfig``.
        cache_factory: builds front caches (see the module doc). "auto" (the default): the
            embedding caches the config asks for (``gpucache``: on the GPU when PyCUDA and a
            device are there, else the NumPy reference, runtime/gpu/cache_factory.py); None:
            no caches, lookups go straight to
            the CPU tiers.
        rocksdb_block_cache_bytes / rocksdb_row_cache_bytes: RocksDB's caches, shared by all
            tables. The row cache (0: none) defaults to room for every row of the tables
            (1.5x their raw bytes), at most 1/8 of the machine's memory; it fills only with
            rows looked up in RocksDB.
        redis_options: extra keyword arguments of ``RedisClusterStore`` (timeouts,
            ``retry_interval_s``).
        progress: called with the number of table bytes loaded, for progress bars.

    Raises:
        ConfigError: the config is invalid, or asks for something this runtime cannot do.
        NotFoundError: a read-only database is missing, or lacks a table's column family.
        OutputExistsError: another process holds the RocksDB database's lock.
        ServiceUnavailableError: the Redis Cluster cannot be reached.
    """

    def __init__(
        self,
        config: PsConfig | str | Path | dict,
        *,
        cache_factory: CacheFactory | str | None = "auto",
        rocksdb_block_cache_bytes: int = DEFAULT_BLOCK_CACHE_BYTES,
        rocksdb_row_cache_bytes: int | None = None,
        redis_options: dict | None = None,
        progress: Callable[[int], None] | None = None,
    ):
        self.config = _load_checked(config)
        self.key_width = 64 if self.config.supportlonglong else 32
        if cache_factory == "auto":
            cache_factory = _default_cache_factory(self.config)
        self._cache_factory = cache_factory
        _check_supported(self.config, cache_factory)
        self._rocksdb: RocksDbStore | None = None
        self._redis = None
        self._tables: dict[tuple[str, int], TableTiers] = {}
        self._fronts: dict[tuple[str, int, int], object] = {}
        plans = [
            _TablePlan(
                m,
                t,
                m.table_name(t),
                m.tag(t),
                m.embedding_vecsize_per_table[t],
                TableReader(m.table_path(t), m.embedding_vecsize_per_table[t]),
            )
            for m in self.config.models
            for t in range(m.num_tables)
        ]
        try:
            self._open_tiers(
                plans, rocksdb_block_cache_bytes, rocksdb_row_cache_bytes, redis_options or {}
            )
            self._load(plans, progress)
            if cache_factory is not None:
                self._make_fronts(cache_factory)
        except BaseException:
            self.close()
            raise
        finally:
            for plan in plans:
                plan.reader.close()

    # ------------------------------------------------------------------ start-up

    def _open_tiers(
        self, plans: list[_TablePlan], block_cache: int, row_cache: int | None, redis_options: dict
    ) -> None:
        pdb, vdb = self.config.persistent_db, self.config.volatile_db
        if pdb.enabled:
            if row_cache is None:
                row_cache = auto_row_cache_bytes(
                    sum(p.reader.num_keys * (self.key_width // 8 + 4 * p.dim) for p in plans)
                )
            self._rocksdb = RocksDbStore(
                pdb.path,
                read_only=pdb.read_only,
                num_threads=pdb.num_threads,
                max_batch_size=pdb.max_batch_size,
                key_width=self.key_width,
                block_cache_bytes=block_cache,
                row_cache_bytes=row_cache,
            )
            families = set(self._rocksdb.families())
            for plan in plans:
                plan.checksum = table_checksum(plan.reader)
                if plan.tag in families:
                    plan.persistent_current = self._rocksdb.is_current(
                        plan.tag, plan.checksum, plan.dim
                    )
                    if plan.persistent_current or pdb.read_only:
                        self._rocksdb.check_table(plan.tag, plan.dim)
                elif pdb.read_only:
                    raise NotFoundError(
                        f"the read-only RocksDB database has no column family '{plan.tag}' "
                        f"(table '{plan.name}' of model '{plan.model.model}')",
                        location=pdb.path,
                        hint="load the table with 'hps convert' first, or "
                        "open the database read-write",
                    )
                if pdb.read_only and not plan.persistent_current:
                    log.warning(
                        "read-only RocksDB: family %s does not match %s (by our "
                        "record); serving the database as it is",
                        plan.tag,
                        plan.reader.path,
                    )
        if vdb.type == "redis_cluster":
            from .volatile.redis_cluster import RedisClusterStore

            self._redis = RedisClusterStore(
                vdb.address,
                user_name=vdb.user_name,
                password=vdb.password,
                enable_tls=vdb.enable_tls,
                tls_ca_certificate=vdb.tls_ca_certificate,
                tls_client_certificate=vdb.tls_client_certificate,
                tls_client_key=vdb.tls_client_key,
                tls_server_name_identification=vdb.tls_server_name_identification,
                num_node_connections=vdb.num_node_connections,
                max_batch_size=vdb.max_batch_size,
                **redis_options,
            )

    def _volatile_table(self, plan: _TablePlan, reserve: int):
        vdb = self.config.volatile_db
        margin = vdb.overflow_margin if vdb.has_overflow_limit else None
        if vdb.type in ("hash_map", "parallel_hash_map"):
            from .volatile.hash_map import HashMapTable

            return HashMapTable(
                plan.dim,
                num_partitions=vdb.num_partitions,
                overflow_margin=margin,
                overflow_policy=vdb.overflow_policy,
                overflow_resolution_target=vdb.overflow_resolution_target,
                reserve=reserve,
            )
        if vdb.type == "redis_cluster":
            return self._redis.table(
                plan.tag,
                plan.dim,
                num_partitions=vdb.num_partitions,
                key_width=self.key_width,
                overflow_margin=margin,
                overflow_policy=vdb.overflow_policy,
                overflow_resolution_target=vdb.overflow_resolution_target,
            )
        return None

    def _load(self, plans: list[_TablePlan], progress) -> None:
        pdb, vdb = self.config.persistent_db, self.config.volatile_db
        for plan in plans:
            persistent = None
            if self._rocksdb is not None:
                if not plan.persistent_current and not pdb.read_only:
                    started = time.perf_counter()
                    self._rocksdb.load_table(
                        plan.tag, plan.reader, plan.checksum, progress=progress
                    )
                    log.info(
                        "RocksDB: loaded %s (%d keys) in %.1f s",
                        plan.tag,
                        plan.reader.num_keys,
                        time.perf_counter() - started,
                    )
                persistent = self._rocksdb.table(plan.tag, plan.dim)
            volatile = None
            if vdb.enabled:
                rows = volatile_rows(
                    plan.reader,
                    vdb.initial_cache_rate,
                    num_partitions=vdb.num_partitions,
                    overflow_margin=vdb.overflow_margin if vdb.has_overflow_limit else None,
                )
                count = plan.reader.num_keys if rows is None else rows.size
                volatile = self._volatile_table(plan, count)
                self._fill_volatile(plan, volatile, rows, progress)
            self._tables[(plan.model.model, plan.table_id)] = TableTiers(
                plan.model.model,
                plan.name,
                plan.dim,
                plan.model.default_value(plan.table_id),
                volatile=volatile,
                persistent=persistent,
                cache_missed_embeddings=vdb.cache_missed_embeddings,
                writable_persistent=not pdb.read_only,
                stats=TableStats(),
            )

    def _fill_volatile(self, plan: _TablePlan, volatile, rows, progress) -> None:
        vdb = self.config.volatile_db
        if vdb.type != "redis_cluster":
            load_volatile(volatile, plan.reader, rows, progress=progress)
            return
        checksum = plan.checksum or table_checksum(plan.reader)
        record = {
            "checksum": checksum,
            "dim": plan.dim,
            "num_partitions": vdb.num_partitions,
            "initial_cache_rate": vdb.initial_cache_rate,
            "overflow_margin": vdb.overflow_margin,
            "complete": True,
        }
        # Skip only with RocksDB behind it: if a node lost its data since, its keys still fall
        # through to a full copy. Without one, reload as HPS does.
        if self._rocksdb is not None and volatile.read_record() == record:
            log.info("Redis: %s already holds this table; not reloading", plan.tag)
            return
        volatile.clear()
        load_volatile(volatile, plan.reader, rows, progress=progress)
        volatile.write_record(record)

    def _make_fronts(self, factory: CacheFactory) -> None:
        for model in self.config.models:
            for device in model.deployed_device_list:
                for t in range(model.num_tables):
                    front = factory(model, t, device, self._tables[(model.model, t)])
                    if front is not None:
                        self._fronts[(model.model, t, device)] = front

    # ------------------------------------------------------------------ lookups

    def lookup(
        self, keys: np.ndarray, model: str, table: str | int = 0, device_id: int | None = None
    ) -> np.ndarray:
        """Vectors of ``keys`` in one table: float32 ``(len(keys), dim)``; missing keys get the
        table's default vector."""
        model_cfg, table_id = self._resolve(model, table)
        device = self._device(model_cfg, device_id)
        keys = self._check_keys(keys, model_cfg, table_id)
        return self._lookup_one(keys, model_cfg, table_id, device)

    def _lookup_one(
        self, keys: np.ndarray, model_cfg: ModelConfig, table_id: int, device: int
    ) -> np.ndarray:
        started = time.perf_counter()
        tiers = self._tables[(model_cfg.model, table_id)]
        front = self._fronts.get((model_cfg.model, table_id, device))
        out = front.lookup(keys) if front is not None else tiers.fetch(keys)
        tiers.stats.latency.record(time.perf_counter() - started)
        return out

    def lookup_tables(
        self, keys_per_table: Sequence[np.ndarray], model: str, device_id: int | None = None
    ) -> list[np.ndarray]:
        """Every table of a model in one call: one key array per table, in table order.

        The tables' GPU lookups overlap: every table's query is queued on its cache's stream
        before any is waited for (front caches with ``start``); tables without a front cache
        are fetched from the CPU tiers, in table order, while those run. Each table's latency
        counts from the start of the call. The call holds one worker buffer of the model's pool
        until every table is done, CPU-tier fetches of misses included (HPS: one per lookup
        session call). If a table fails, the tables still queued are waited for (their rows
        dropped) before the error is raised."""
        model_cfg, _ = self._resolve(model, 0)
        device = self._device(model_cfg, device_id)
        if len(keys_per_table) != model_cfg.num_tables:
            raise InvalidInputError(
                f"model '{model}' has {model_cfg.num_tables} tables, got "
                f"{len(keys_per_table)} key arrays",
                location="keys",
            )
        checked = [self._check_keys(k, model_cfg, t) for t, k in enumerate(keys_per_table)]
        started = time.perf_counter()
        pending: list = []
        slots: dict[int, tuple] = {}  # one worker buffer per pool for the whole call, as HPS
        try:
            for t, keys in enumerate(checked):
                front = self._fronts.get((model_cfg.model, t, device))
                if not hasattr(front, "start"):
                    pending.append(None)
                    continue
                pool = front.pool
                if id(pool) not in slots:
                    slots[id(pool)] = (pool, pool.acquire())
                pending.append(front.start(keys, slots[id(pool)][1]))
            results: list[np.ndarray] = []
            for t, keys in enumerate(checked):
                lookup, pending[t] = pending[t], None
                if lookup is None:
                    results.append(self._lookup_one(keys, model_cfg, t, device))
                    continue
                results.append(lookup.result())
                stats = self._tables[(model_cfg.model, t)].stats
                stats.latency.record(time.perf_counter() - started)
            return results
        finally:
            try:
                _abandon_all(pending)  # queued work must finish before its buffers are reused
            finally:
                for pool, slot in slots.values():
                    pool.release(slot)

    def lookup_concatenated(
        self,
        keys: np.ndarray,
        num_keys: Sequence[int] | np.ndarray,
        model: str,
        device_id: int | None = None,
    ) -> np.ndarray:
        """The Triton HPS backend's call: ``keys`` of table 0, then table 1, ... concatenated,
        ``num_keys[t]`` keys per table; returns the flat float32 vectors, table-major."""
        model_cfg, _ = self._resolve(model, 0)
        counts = np.asarray(num_keys).reshape(-1)
        if (
            counts.size != model_cfg.num_tables
            or not np.issubdtype(counts.dtype, np.integer)
            or (counts < 0).any()
        ):
            raise InvalidInputError(
                f"num_keys must hold {model_cfg.num_tables} non-negative counts (one per table "
                f"of '{model}'), got {counts.tolist()}",
                location="num_keys",
            )
        keys = np.asarray(keys)
        if keys.ndim != 1 or keys.size != int(counts.sum()):
            raise InvalidInputError(
                f"keys must be 1-D with sum(num_keys) = {int(counts.sum())} entries, got shape "
                f"{keys.shape}",
                location="keys",
            )
        bounds = np.concatenate([[0], np.cumsum(counts)])
        parts = self.lookup_tables(
            [keys[bounds[t] : bounds[t + 1]] for t in range(counts.size)], model, device_id
        )
        return np.concatenate([p.reshape(-1) for p in parts])

    # ------------------------------------------------------------------ updates

    def insert(self, model: str, table: str | int, keys: np.ndarray, vectors: np.ndarray) -> None:
        """Upsert ``keys`` → ``vectors`` in every tier (and tell the front caches)."""
        model_cfg, table_id = self._resolve(model, table)
        keys = self._check_keys(keys, model_cfg, table_id)
        self._check_updatable(model_cfg, table_id)
        tiers = self._tables[(model_cfg.model, table_id)]
        tiers.insert(keys, vectors)
        for device in model_cfg.deployed_device_list:
            front = self._fronts.get((model_cfg.model, table_id, device))
            if front is not None:
                front.update(keys, np.ascontiguousarray(vectors, dtype=np.float32))

    def remove(self, model: str, table: str | int, keys: np.ndarray) -> None:
        """Remove ``keys`` from every tier (and the front caches); they then get defaults."""
        model_cfg, table_id = self._resolve(model, table)
        keys = self._check_keys(keys, model_cfg, table_id)
        self._check_updatable(model_cfg, table_id)
        self._tables[(model_cfg.model, table_id)].remove(keys)
        for device in model_cfg.deployed_device_list:
            front = self._fronts.get((model_cfg.model, table_id, device))
            if front is not None:
                front.remove(keys)

    def _check_updatable(self, model_cfg: ModelConfig, table_id: int) -> None:
        """Refuse an update a read-only cache (static, uvm) could not follow, before any write."""
        for device in model_cfg.deployed_device_list:
            front = self._fronts.get((model_cfg.model, table_id, device))
            if front is not None and getattr(front, "read_only", False):
                raise InvalidInputError(
                    f"table '{model_cfg.table_name(table_id)}' of model '{model_cfg.model}' has a "
                    f"read-only {model_cfg.cache_type} cache: it cannot take updates",
                    location=f"model '{model_cfg.model}' embedding_cache_type",
                    hint="use embedding_cache_type dynamic for tables that change online",
                )

    # ------------------------------------------------------------------ introspection

    @property
    def model_names(self) -> tuple[str, ...]:
        return self.config.model_names

    def table_backend(self, model: str, table: str | int) -> TableTiers:
        """The CPU hierarchy of one table (the object a front cache falls back to)."""
        model_cfg, table_id = self._resolve(model, table)
        return self._tables[(model_cfg.model, table_id)]

    def front_cache(self, model: str, table: str | int, device_id: int | None = None):
        model_cfg, table_id = self._resolve(model, table)
        return self._fronts.get((model_cfg.model, table_id, self._device(model_cfg, device_id)))

    def counters(self, model: str, table: str | int) -> dict[str, int]:
        return self.table_backend(model, table).counters

    def stats(self) -> dict:
        """{model: {table: {"counters": {...}, "latency": {...}, "fetch_latency": {...},
        "cache": {device: {...}}}}}; ``cache`` holds the embedding caches' counters."""
        out: dict = {}
        for (model, table_id), tiers in self._tables.items():
            entry = out.setdefault(model, {})[tiers.table] = tiers.stats.snapshot()
            caches = {
                device: front.stats()
                for (m, t, device), front in self._fronts.items()
                if m == model and t == table_id and hasattr(front, "stats")
            }
            if caches:
                entry["cache"] = caches
        return out

    def close(self) -> None:
        for front in self._fronts.values():
            close = getattr(front, "close", None)
            if close is not None:
                close()
        self._fronts.clear()
        close = getattr(self._cache_factory, "close", None)
        if close is not None:
            close()
        for tiers in self._tables.values():
            tiers.persistent = None
        if self._rocksdb is not None:
            self._rocksdb.close()
            self._rocksdb = None
        if self._redis is not None:
            self._redis.close()
            self._redis = None

    def __enter__(self) -> "HPS":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ argument checks

    def _resolve(self, model: str, table: str | int) -> tuple[ModelConfig, int]:
        try:
            model_cfg = self.config.model(model)
        except KeyError:
            raise NotFoundError(
                f"no model '{model}'",
                location="model",
                hint="models: " + ", ".join(self.config.model_names),
            ) from None
        names = model_cfg.embedding_table_names
        if isinstance(table, (int, np.integer)) and not isinstance(table, bool):
            if not 0 <= int(table) < model_cfg.num_tables:
                raise NotFoundError(
                    f"model '{model}' has no table {int(table)} (it has {model_cfg.num_tables})",
                    location="table",
                    hint="tables: " + ", ".join(names),
                )
            return model_cfg, int(table)
        if table not in names:
            raise NotFoundError(
                f"model '{model}' has no table '{table}'",
                location="table",
                hint="tables: " + ", ".join(names),
            )
        return model_cfg, names.index(table)

    @staticmethod
    def _device(model_cfg: ModelConfig, device_id: int | None) -> int:
        if device_id is None:
            return model_cfg.deployed_device_list[-1]
        if device_id not in model_cfg.deployed_device_list:
            raise InvalidInputError(
                f"device {device_id} is not in model '{model_cfg.model}''s deployed_device_list "
                f"{list(model_cfg.deployed_device_list)}",
                location="device_id",
            )
        return int(device_id)

    def _check_keys(self, keys, model_cfg: ModelConfig, table_id: int) -> np.ndarray:
        where = f"keys (model '{model_cfg.model}', table '{model_cfg.table_name(table_id)}')"
        keys = np.asarray(keys)
        if keys.ndim != 1:
            raise InvalidInputError(
                f"keys must be a 1-D array, got shape {keys.shape}",
                location=where,
                hint="flatten the keys of one table",
            )
        if self.config.supportlonglong:
            if keys.dtype == np.int64:
                return keys
            if keys.size == 0 and keys.dtype == np.float64:  # np.asarray([])
                return keys.astype(np.int64)
            raise InvalidInputError(
                f"keys must be int64 (supportlonglong is true), got {keys.dtype}", location=where
            )
        if keys.dtype == np.uint32:
            return keys.astype(np.int64)
        if keys.dtype == np.int64:
            if keys.size and (int(keys.min()) < 0 or int(keys.max()) > UINT32_MAX):
                raise InvalidInputError(
                    "keys must fit uint32 (supportlonglong is false), got values in "
                    f"[{int(keys.min())}, {int(keys.max())}]",
                    location=where,
                )
            return keys
        if keys.size == 0 and keys.dtype == np.float64:
            return keys.astype(np.int64)
        raise InvalidInputError(
            f"keys must be uint32 (supportlonglong is false), got {keys.dtype}", location=where
        )


def _load_checked(config: PsConfig | str | Path | dict) -> PsConfig:
    """The typed config, with every table file verified (structure, dims, keys)."""
    if not isinstance(config, PsConfig):
        return load_config(config, check_files=True)
    issues = file_issues(config)
    if issues:
        first = issues[0]
        raise ConfigError(
            first.message,
            issues=tuple(issues),
            location=f"{config.source_path or '<config>'} {first.json_path}",
            hint=first.hint,
        )
    return config


def _default_cache_factory(config: PsConfig):
    """The embedding caches of the config (None when no model asks for one)."""
    if not any(m.gpucache for m in config.models):
        return None
    from .gpu.cache_factory import EmbeddingCacheFactory

    return EmbeddingCacheFactory()


def _check_supported(config: PsConfig, cache_factory) -> None:
    """ConfigError for settings this runtime cannot honour (rather than ignoring them)."""
    vdb, pdb = config.volatile_db, config.persistent_db
    if vdb.type == "multi_process_hash_map":
        raise ConfigError(
            "volatile_db type 'multi_process_hash_map' (a shared-memory map) is not supported",
            location="$.volatile_db.type",
            hint="use parallel_hash_map (in process) or redis_cluster (shared)",
        )
    if config.update_source.type != "null":
        raise ConfigError(
            f"update_source '{config.update_source.type}' is not supported yet",
            location="$.update_source.type",
            hint="remove the block; apply updates with HPS.insert / HPS.remove",
        )
    for i, model in enumerate(config.models):
        if model.fuse_embedding_table:
            raise ConfigError(
                "table fusion (fuse_embedding_table) is not supported by the CPU runtime",
                location=f"$.models[{i}].fuse_embedding_table",
                hint="set fuse_embedding_table to false",
            )
    if not vdb.enabled and not pdb.enabled and cache_factory is None:
        raise ConfigError(
            "both volatile_db and persistent_db are disabled: every lookup would "
            "return default vectors",
            location="$.volatile_db",
            hint="enable a volatile_db (e.g. parallel_hash_map) or a persistent_db",
        )
