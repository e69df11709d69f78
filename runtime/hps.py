"""``HPS``: the lookup runtime of an HPS config — lookups and updates routed through each
table's front cache (the embedding cache on a device) and its CPU tiers (volatile → persistent →
default).

    hps = HPS("ps.json")
    vectors = hps.lookup(keys, "model", "table")            # float32 (len(keys), dim)
    per_table = hps.lookup_tables([k0, k1], "model")        # every table of a model at once
    flat = hps.lookup_concatenated(keys, num_keys, "model") # Triton HPS backend layout
    hps.insert("model", "table", keys, vectors); hps.remove("model", "table", keys)
    hps.stats()                                             # per-table counters and latencies

``HPS(config)`` runs start-up (startup.py: check everything, then load the tiers and build the
caches; a failed check writes nothing anywhere) and routes over what it built. The seams it
routes through are in seams.py: a ``FrontCache`` per model, device and table (built by a
``CacheFactory``), a ``TableTiers`` per model and table. With table fusion
(``fuse_embedding_table``, config/fusion.py) the tables of a fused group share one of each, and
``lookup_tables`` asks it once for all of them; callers keep naming the model's own tables.

- ``HPS.lookup(..., device_id=None)`` goes through the front cache of that device (default: the
  model's last deployed device, as HPS does) when there is one, else straight to
  ``TableTiers.fetch`` (exact: volatile → persistent → default, with write-back and counters).
  Every front-cache query runs in a worker buffer of the model's pool on that device, which HPS
  owns (``num_of_worker_buffer_in_pool``; a lookup waits at most ``worker_timeout`` seconds for
  one).
- ``insert`` / ``remove`` change the CPU tiers first, then the table's front caches on every
  device (refused up front when one of them is read-only). Vectors holding NaN or Inf are
  refused (naming the key) unless ``allow_non_finite``. With a writable RocksDB tier the
  change is journaled there and outlives the process (``durable_updates``); without one it
  lasts until the runtime closes.

Keys: int64 arrays (``supportlonglong: true``), or uint32 arrays — int64 arrays whose values fit
are accepted too — when it is false. Inside, and at every seam, keys are always int64.

Thread safety: lookups may run concurrently from any number of threads; updates of a table are
exclusive with its lookups (see cpu_tiers.py).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .config.fusion import storage_tables
from .config.model import ModelConfig, PsConfig
from .cpu_tiers import TableTiers
from .errors import InvalidInputError, NotFoundError
from .key_arrays import is_int64_vector
from .persistent.rocksdb_tier import DEFAULT_BLOCK_CACHE_BYTES
from .preflight import Preflight
from .seams import CacheFactory, FrontCache, StartedQuery
from .startup import AUTO, start_up
from .table.finite import check_finite
from .worker_pool import WorkerPool

UINT32_MAX = 2**32 - 1


def _joined(keys_per_table: list[np.ndarray], table_ids: tuple[int, ...]) -> np.ndarray:
    """The keys of the tables of one storage table, in table order (no copy for one table)."""
    if len(table_ids) == 1:
        return keys_per_table[table_ids[0]]
    return np.concatenate([keys_per_table[t] for t in table_ids])


def _split(
    rows: np.ndarray,
    table_ids: tuple[int, ...],
    keys_per_table: list[np.ndarray],
    out: list[np.ndarray],
) -> None:
    """Put each table's share of a storage table's ``rows`` (views) at its place in ``out``."""
    first = 0
    for t in table_ids:
        count = keys_per_table[t].size
        out[t] = rows if len(table_ids) == 1 else rows[first : first + count]
        first += count


def _abandon_all(started: list[StartedQuery | None]) -> None:
    """Wait for the device work of every launched front-cache query still pending, so that no
    buffer is reused under it; an interrupt while waiting is re-raised after the rest."""
    interrupt: BaseException | None = None
    for query in started:
        if query is None:
            continue
        try:
            query.abandon()
        except BaseException as exc:  # noqa: BLE001 - e.g. KeyboardInterrupt: finish first
            interrupt = interrupt or exc
    if interrupt is not None:
        raise interrupt


class HPS:
    """The lookup runtime of an HPS config: routes lookups and updates over the tiers and caches
    that start-up built (see the module doc).

    Args:
        config: a ps.json path, a parsed document, or a ``PsConfig``.
        cache_factory: builds the front caches (a seams.CacheFactory). "auto" (the default):
            the embedding caches the config asks for (``gpucache``: on the GPU when PyCUDA and
            a device are there, else the NumPy reference; runtime/gpu/cache_factory.py); None:
            no caches, lookups go straight to the CPU tiers.
        rocksdb_block_cache_bytes / rocksdb_row_cache_bytes: RocksDB's caches, shared by all
            tables. The row cache (0: none) defaults to room for every row of the tables
            (1.5x their raw bytes), at most 1/8 of the machine's memory; it fills only with
            rows looked up in RocksDB.
        redis_options: extra keyword arguments of ``RedisClusterStore`` (timeouts,
            ``retry_interval_s``).
        worker_timeout: seconds a lookup waits for a free worker buffer before it fails with a
            CapacityError.
        progress: called with the number of table bytes loaded, for progress bars (an
            exception it raises stops the start-up, which then removes what it built).
        allow_non_finite: tables and inserted vectors may hold NaN or Inf (refused otherwise).

    Raises:
        ConfigError: a check of preflight.py failed (``.issues`` lists them with JSON paths):
            the config, a table file (NaN/Inf included unless allowed), what this runtime
            cannot do, or the database (a read-only one missing or lacking a table, ...).
        OutputExistsError: another process holds the RocksDB database's lock.
        ServiceUnavailableError: the Redis Cluster cannot be reached.
    """

    def __init__(
        self,
        config: PsConfig | str | Path | dict | Preflight,
        *,
        cache_factory: CacheFactory | str | None = AUTO,
        rocksdb_block_cache_bytes: int = DEFAULT_BLOCK_CACHE_BYTES,
        rocksdb_row_cache_bytes: int | None = None,
        redis_options: dict | None = None,
        worker_timeout: float = 10.0,
        progress: Callable[[int], None] | None = None,
        allow_non_finite: bool = False,
    ):
        if isinstance(config, Preflight):
            allow_non_finite = allow_non_finite or config.allow_non_finite
        self.allow_non_finite = allow_non_finite
        self._built = start_up(
            config,
            cache_factory=cache_factory,
            rocksdb_block_cache_bytes=rocksdb_block_cache_bytes,
            rocksdb_row_cache_bytes=rocksdb_row_cache_bytes,
            redis_options=redis_options,
            worker_timeout=worker_timeout,
            progress=progress,
            allow_non_finite=allow_non_finite,
        )
        self.config = self._built.config
        self.key_width = 64 if self.config.supportlonglong else 32
        self._tables: dict[tuple[str, int], TableTiers] = self._built.tables
        self._fronts: dict[tuple[str, int, int], FrontCache] = self._built.fronts
        self._pools: dict[tuple[str, int], WorkerPool] = self._built.worker_pools
        # Per model: its config and storage tables (fusion groups), worked out once: every
        # lookup_tables call needs them and the config never changes.
        self._storage = {m.model: (m, storage_tables(m)) for m in self.config.models}

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
        if front is None:
            out = tiers.fetch(keys)
        else:
            pool = self._pools[(model_cfg.model, device)]
            slot = pool.acquire()
            try:
                out = front.launch_query(keys, slot).result()
            finally:
                pool.release(slot)
        tiers.stats.latency.record(time.perf_counter() - started)
        return out

    def lookup_tables(
        self, keys_per_table: Sequence[np.ndarray], model: str, device_id: int | None = None
    ) -> list[np.ndarray]:
        """Every table of a model in one call: one key array per table, in table order.

        The tables' GPU lookups overlap: every table's query is launched on its front cache
        before any is waited for; tables without a front cache are fetched from the CPU tiers,
        in table order, while those run. With table fusion, the tables of a fused group are one
        query of their concatenated keys (as HPS), split again for the result. Each table's
        latency counts from the start of the call. The call holds one worker buffer of the
        model's pool on that device until every table is done, CPU-tier fetches of misses
        included (HPS: one per lookup session call). If a table fails, the tables still queued
        are waited for (their rows dropped) before the error is raised."""
        storage = self._storage.get(model)
        if storage is None:
            self._resolve(model, 0)  # raises NotFoundError
        model_cfg, groups = storage
        device = self._device(model_cfg, device_id)
        if len(keys_per_table) != model_cfg.num_tables:
            raise InvalidInputError(
                f"model '{model}' has {model_cfg.num_tables} tables, got "
                f"{len(keys_per_table)} key arrays",
                location="keys",
            )
        checked = [self._check_keys(k, model_cfg, t) for t, k in enumerate(keys_per_table)]
        joined = [_joined(checked, g.table_ids) for g in groups]
        started = time.perf_counter()
        pending: list[StartedQuery | None] = []
        pool = self._pools.get((model_cfg.model, device))
        lease: tuple[WorkerPool, int] | None = None  # one worker buffer for the call, as HPS
        try:
            for group, keys in zip(groups, joined):
                front = self._fronts.get((model_cfg.model, group.table_ids[0], device))
                if front is None or pool is None:
                    pending.append(None)
                    continue
                if lease is None:
                    lease = (pool, pool.acquire())
                pending.append(front.launch_query(keys, lease[1]))
            results: list[np.ndarray] = [None] * model_cfg.num_tables  # type: ignore[list-item]
            for g, (group, keys) in enumerate(zip(groups, joined)):
                first = group.table_ids[0]
                query, pending[g] = pending[g], None
                if query is None:
                    rows = self._lookup_one(keys, model_cfg, first, device)
                else:
                    rows = query.result()
                    stats = self._tables[(model_cfg.model, first)].stats
                    stats.latency.record(time.perf_counter() - started)
                _split(rows, group.table_ids, checked, results)
            return results
        finally:
            try:
                _abandon_all(pending)  # queued work must finish before its buffer is reused
            finally:
                if lease is not None:
                    lease[0].release(lease[1])

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

    @property
    def durable_updates(self) -> bool:
        """Whether ``insert``/``remove`` outlive the process: a writable RocksDB tier journals
        them and start-up replays the journal over the table files (docs/runtime.md)."""
        pdb = self.config.persistent_db
        return pdb.enabled and not pdb.read_only

    def insert(self, model: str, table: str | int, keys: np.ndarray, vectors: np.ndarray) -> None:
        """Upsert ``keys`` → ``vectors`` in every tier (and tell the front caches)."""
        model_cfg, table_id = self._resolve(model, table)
        keys = self._check_keys(keys, model_cfg, table_id)
        self._check_updatable(model_cfg, table_id)
        if not self.allow_non_finite:
            check_finite(
                keys,
                vectors,
                f"vectors (model '{model_cfg.model}', table '{model_cfg.table_name(table_id)}')",
            )
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
            if front is not None and front.read_only:
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

    def front_cache(
        self, model: str, table: str | int, device_id: int | None = None
    ) -> FrontCache | None:
        """The front cache of a table on a device (default: the model's last deployed one), or
        None when it has none."""
        model_cfg, table_id = self._resolve(model, table)
        return self._fronts.get((model_cfg.model, table_id, self._device(model_cfg, device_id)))

    def worker_pool(self, model: str, device_id: int | None = None) -> WorkerPool | None:
        """The worker buffers of a model on a device (default: its last deployed one), or None
        when no table of it has a front cache there."""
        model_cfg, _ = self._resolve(model, 0)
        return self._pools.get((model_cfg.model, self._device(model_cfg, device_id)))

    def counters(self, model: str, table: str | int) -> dict[str, int]:
        return self.table_backend(model, table).counters

    def stats(self) -> dict:
        """{model: {table: {"counters": {...}, "latency": {...}, "fetch_latency": {...},
        "cache": {device: {...}}}}}; ``cache`` holds the embedding caches' counters. Tables
        are storage tables: with fusion, ``fused_embedding<k>`` for its member tables."""
        out: dict = {}
        seen: set[int] = set()
        for (model, table_id), tiers in self._tables.items():
            if id(tiers) in seen:  # a fused table, shared by its member tables
                continue
            seen.add(id(tiers))
            entry = out.setdefault(model, {})[tiers.table] = tiers.stats.snapshot()
            caches = {
                device: front.stats()
                for (m, t, device), front in self._fronts.items()
                if m == model and t == table_id
            }
            if caches:
                entry["cache"] = caches
        return out

    def close(self) -> None:
        """Stop the front caches, close their factory, then the stores (idempotent)."""
        self._built.close()

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
        if self.config.supportlonglong and is_int64_vector(keys):
            return keys  # the common case, decided without NumPy calls
        keys = np.asarray(keys)
        if keys.ndim != 1:
            raise InvalidInputError(
                f"keys must be a 1-D array, got shape {keys.shape}",
                location=_keys_where(model_cfg, table_id),
                hint="flatten the keys of one table",
            )
        if self.config.supportlonglong:
            if keys.dtype == np.int64:
                return keys
            if keys.size == 0 and keys.dtype == np.float64:  # np.asarray([])
                return keys.astype(np.int64)
            raise InvalidInputError(
                f"keys must be int64 (supportlonglong is true), got {keys.dtype}",
                location=_keys_where(model_cfg, table_id),
            )
        if keys.dtype == np.uint32:
            return keys.astype(np.int64)
        if keys.dtype == np.int64:
            if keys.size and (int(keys.min()) < 0 or int(keys.max()) > UINT32_MAX):
                raise InvalidInputError(
                    "keys must fit uint32 (supportlonglong is false), got values in "
                    f"[{int(keys.min())}, {int(keys.max())}]",
                    location=_keys_where(model_cfg, table_id),
                )
            return keys
        if keys.size == 0 and keys.dtype == np.float64:
            return keys.astype(np.int64)
        raise InvalidInputError(
            f"keys must be uint32 (supportlonglong is false), got {keys.dtype}",
            location=_keys_where(model_cfg, table_id),
        )


def _keys_where(model_cfg: ModelConfig, table_id: int) -> str:
    return f"keys (model '{model_cfg.model}', table '{model_cfg.table_name(table_id)}')"
