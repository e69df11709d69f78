"""Start-up, first half: the plans, and opening the stores. Nothing here writes.

In this order (startup.py runs it, after preflight.py checked everything):

1. ``plan_tables``: one ``TablePlan`` per storage table of every model (a table, or with
   ``fuse_embedding_table`` a fused group of tables: config/fusion.py), its files open, whether
   its rows go into the CPU tiers (not when the cache factory's caches hold the whole table:
   static, uvm, which never ask them), and what preflight found in the database (the checksum,
   whether the family is current);
2. ``open_stores``: the shared-memory segment (attached, every table's region reserved: the one
   write of this half, so that a segment too small fails before anything is loaded), the RocksDB
   database (its lock; a read-only one is watched for changes by another process,
   persistent/rocksdb_watch.py) and the Redis Cluster (reachability).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .config.fusion import StorageTable, storage_tables
from .config.model import ModelConfig, PsConfig
from .persistent.rocksdb_shared import open_rocksdb, release_rocksdb
from .persistent.rocksdb_tier import RocksDbStore, auto_row_cache_bytes
from .persistent.rocksdb_watch import DatabaseWatcher
from .preflight import Preflight
from .seams import CacheFactory
from .table.fused_reader import FusedTableReader
from .table.reader import TableReader

if TYPE_CHECKING:
    from .volatile.redis_cluster import RedisClusterStore
    from .volatile.shm_segment import SharedSegment


@dataclass
class TablePlan:
    """One storage table of one model as start-up sees it: its open files, whether the CPU
    tiers get its rows, and what RocksDB holds."""

    model: ModelConfig
    table: StorageTable
    reader: TableReader | FusedTableReader
    cpu_tiers: bool = True  # False: its front caches hold every row (static, uvm)
    checksum: str = ""  # the table file's identity, when there is a RocksDB tier
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
    watcher: DatabaseWatcher | None = None  # of a read-only RocksDB

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher = None
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


def plan_tables(checked: Preflight, cache_factory: CacheFactory | None) -> list[TablePlan]:
    """A plan per storage table of every model, in config order, its reader open, with what
    preflight found in the database (the caller closes the readers; if opening one fails,
    those opened before are closed here)."""
    config = checked.checked_config()
    plans: list[TablePlan] = []
    try:
        for model in config.models:
            for table in storage_tables(model):
                whole = cache_factory is not None and cache_factory.holds_whole_table(model, table)
                facts = None if whole else checked.tables.get(table.tag)
                plans.append(
                    TablePlan(
                        model,
                        table,
                        table.open(),
                        cpu_tiers=not whole,
                        checksum=facts.checksum if facts else "",
                        persistent_current=bool(facts and facts.current),
                    )
                )
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
    was opened when a later step fails)."""
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
        if pdb.read_only:
            stores.watcher = DatabaseWatcher(stores.rocksdb)
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
