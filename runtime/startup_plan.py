"""Start-up, first half: everything that only reads. A failure here has written nothing.

In this order (startup.py runs it):

1. ``checked_config``: the config's schema and semantics and every table file (structure, dims,
   ``supportlonglong`` key ranges, keys of fused tables apart); its warnings (fields hps
   ignores, non-exact settings, ...) are logged;
2. ``check_supported``: what this runtime cannot honour;
3. ``plan_tables``: one ``TablePlan`` per storage table of every model (a table, or with
   ``fuse_embedding_table`` a fused group of tables: config/fusion.py), its files open, and
   whether its rows go into the CPU tiers: not when the cache factory's caches hold the whole
   table (static, uvm), which never ask them;
4. ``open_stores``: the RocksDB database (its lock, and for each table with CPU tiers: its
   checksum, whether the database already holds it, the key width and dim of a family that is
   kept, the families a read-only database must have), the Redis Cluster (reachability) and the
   shared-memory segment (attached, every table's region reserved: the one write of this half, so
   that a segment too small fails before anything is loaded).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .config.files import file_issues
from .config.fusion import StorageTable, storage_tables
from .config.model import ModelConfig, PsConfig
from .config.validate import load_validated
from .errors import ConfigError, NotFoundError
from .persistent.rocksdb_shared import open_rocksdb, release_rocksdb
from .persistent.rocksdb_tier import RocksDbStore, auto_row_cache_bytes
from .seams import CacheFactory
from .startup_load import table_checksum
from .table.fused_reader import FusedTableReader
from .table.reader import TableReader

if TYPE_CHECKING:
    from .volatile.redis_cluster import RedisClusterStore
    from .volatile.shm_segment import SharedSegment

log = logging.getLogger("hps_cli.runtime")


@dataclass
class TablePlan:
    """One storage table of one model as start-up sees it: its open files, whether the CPU
    tiers get its rows, and what RocksDB holds."""

    model: ModelConfig
    table: StorageTable
    reader: TableReader | FusedTableReader
    cpu_tiers: bool = True  # False: its front caches hold every row (static, uvm)
    checksum: str = ""  # set by open_stores when there is a RocksDB tier
    persistent_current: bool = False  # RocksDB already holds this table file (by checksum)

    @property
    def name(self) -> str:
        return self.table.name

    @property
    def tag(self) -> str:
        """The storage tag: RocksDB family and Redis hash names."""
        return self.table.tag

    @property
    def dim(self) -> int:
        return self.table.dim


@dataclass
class Stores:
    """The shared stores of the tiers: one RocksDB database (shared with the other runtimes of
    the process that name it: rocksdb_shared.py), one Redis Cluster connection, one
    shared-memory segment."""

    rocksdb: RocksDbStore | None = None
    redis: RedisClusterStore | None = None
    shared: SharedSegment | None = None

    def close(self) -> None:
        if self.shared is not None:
            self.shared.close()
            self.shared = None
        if self.rocksdb is not None:
            release_rocksdb(self.rocksdb)
            self.rocksdb = None
        if self.redis is not None:
            self.redis.close()
            self.redis = None


def key_width(config: PsConfig) -> int:
    """Bits of the keys the stores hold: 64 (int64) or, without ``supportlonglong``, 32."""
    return 64 if config.supportlonglong else 32


def checked_config(config: PsConfig | str | Path | dict) -> PsConfig:
    """The typed config, with every table file verified (structure, dims, keys). The warnings
    of a file or document are logged (a ``PsConfig`` was validated when it was built)."""
    if not isinstance(config, PsConfig):
        result = load_validated(config, check_files=True)
        for issue in result.warnings:
            log.warning("config %s: %s", result.source, issue.one_line())
        assert result.config is not None  # load_validated raised otherwise
        return result.config
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


def check_supported(config: PsConfig, cache_factory: CacheFactory | None) -> None:
    """ConfigError for settings this runtime cannot honour (rather than ignoring them)."""
    vdb, pdb = config.volatile_db, config.persistent_db
    if config.update_source.type != "null":
        raise ConfigError(
            f"update_source '{config.update_source.type}' is not supported yet",
            location="$.update_source.type",
            hint="remove the block; apply updates with HPS.insert / HPS.remove",
        )
    if not vdb.enabled and not pdb.enabled and cache_factory is None:
        raise ConfigError(
            "both volatile_db and persistent_db are disabled: every lookup would "
            "return default vectors",
            location="$.volatile_db",
            hint="enable a volatile_db (e.g. parallel_hash_map) or a persistent_db",
        )


def plan_tables(config: PsConfig, cache_factory: CacheFactory | None) -> list[TablePlan]:
    """A plan per storage table of every model, in config order, its reader open (the caller
    closes them; if opening one fails, those opened before are closed here)."""
    plans: list[TablePlan] = []
    try:
        for model in config.models:
            for table in storage_tables(model):
                whole = cache_factory is not None and cache_factory.holds_whole_table(model, table)
                plans.append(TablePlan(model, table, table.open(), cpu_tiers=not whole))
    except BaseException:
        for plan in plans:
            plan.reader.close()
        raise
    return plans


def open_stores(
    config: PsConfig,
    plans: list[TablePlan],
    stores: Stores,
    *,
    block_cache: int,
    row_cache: int | None,
    redis_options: dict,
) -> None:
    """Open the shared-memory segment (first: it is the quickest to find too small), the
    RocksDB database and the Redis Cluster into ``stores`` (so that the caller closes whatever
    was opened when a later check fails), checking each table with CPU tiers against the
    database and filling in those plans' ``checksum`` and ``persistent_current``."""
    pdb, vdb = config.persistent_db, config.volatile_db
    width = key_width(config)
    plans = [p for p in plans if p.cpu_tiers]
    if vdb.type == "multi_process_hash_map":
        stores.shared = open_shared_segment(config, plans)
    if pdb.enabled:
        if row_cache is None:
            row_cache = auto_row_cache_bytes(
                sum(p.reader.num_keys * (width // 8 + 4 * p.dim) for p in plans)
            )
        stores.rocksdb = open_rocksdb(
            pdb.path,
            read_only=pdb.read_only,
            num_threads=pdb.num_threads,
            max_batch_size=pdb.max_batch_size,
            key_width=width,
            block_cache_bytes=block_cache,
            row_cache_bytes=row_cache,
        )
        _check_families(stores.rocksdb, plans, read_only=pdb.read_only, path=pdb.path)
    if vdb.type == "redis_cluster":
        from .volatile.redis_cluster import RedisClusterStore

        stores.redis = RedisClusterStore(
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


def open_shared_segment(config: PsConfig, plans: list[TablePlan]) -> SharedSegment:
    """Attach to (or create) the ``multi_process_hash_map`` segment and reserve the region of
    every table, so that a segment or /dev/shm too small fails here, before any load."""
    from .volatile.shm_segment import SharedSegment
    from .volatile.shm_table import table_spec

    vdb = config.volatile_db
    segment = SharedSegment(
        vdb.shared_memory_name, vdb.shared_memory_size, auto_remove=vdb.shared_memory_auto_remove
    )
    specs = [
        table_spec(
            plan.tag,
            plan.dim,
            num_partitions=vdb.num_partitions,
            overflow_margin=vdb.overflow_margin if vdb.has_overflow_limit else None,
            overflow_policy=vdb.overflow_policy,
            overflow_resolution_target=vdb.overflow_resolution_target,
            expected_keys=plan.reader.num_keys,
        )
        for plan in plans
    ]
    try:
        segment.reserve(specs)
    except BaseException:
        segment.close()
        raise
    return segment


def _check_families(
    rocksdb: RocksDbStore, plans: list[TablePlan], *, read_only: bool, path: str
) -> None:
    families = set(rocksdb.families())
    for plan in plans:
        plan.checksum = table_checksum(plan.reader)
        if plan.tag in families:
            plan.persistent_current = rocksdb.is_current(plan.tag, plan.checksum, plan.dim)
            if plan.persistent_current or read_only:
                rocksdb.check_table(plan.tag, plan.dim)
        elif read_only:
            raise NotFoundError(
                f"the read-only RocksDB database has no column family '{plan.tag}' "
                f"(table '{plan.name}' of model '{plan.model.model}')",
                location=path,
                hint="load the table with 'hps convert' first, or open the database read-write",
            )
        if read_only and not plan.persistent_current:
            log.warning(
                "read-only RocksDB: family %s does not match %s (by our record); serving the "
                "database as it is",
                plan.tag,
                plan.reader.path,
            )
