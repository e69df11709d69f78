"""Start-up, first half: the plans, and opening the stores. Nothing here writes.

In this order (startup.py runs it, after preflight.py checked everything):

1. ``plan_tables``: one ``TablePlan`` per table of every model, its file open, with what
   preflight found in the database (the checksum, whether the family is current);
2. ``open_stores``: the RocksDB database (its lock; a read-only one is watched for changes by
   another process, persistent/rocksdb_watch.py) and the Redis Cluster (reachability).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .config.model import ModelConfig, PsConfig
from .persistent.rocksdb_tier import RocksDbStore, auto_row_cache_bytes
from .persistent.rocksdb_watch import DatabaseWatcher
from .preflight import Preflight
from .table.reader import TableReader

if TYPE_CHECKING:
    from .volatile.redis_cluster import RedisClusterStore

log = logging.getLogger("hps_cli.runtime")


@dataclass
class TablePlan:
    """One table of one model as start-up sees it: its open file and what RocksDB holds."""

    model: ModelConfig
    table_id: int
    name: str
    tag: str  # the storage tag: RocksDB family and Redis hash names
    dim: int
    reader: TableReader
    checksum: str = ""  # the table file's identity, when there is a RocksDB tier
    persistent_current: bool = False  # RocksDB already holds this table file (by checksum)


@dataclass
class Stores:
    """The shared stores of the tiers: one RocksDB database, one Redis Cluster connection."""

    rocksdb: RocksDbStore | None = None
    redis: RedisClusterStore | None = None
    watcher: DatabaseWatcher | None = None  # of a read-only RocksDB

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher = None
        if self.rocksdb is not None:
            self.rocksdb.close()
            self.rocksdb = None
        if self.redis is not None:
            self.redis.close()
            self.redis = None


def key_width(config: PsConfig) -> int:
    """Bits of the keys the stores hold: 64 (int64) or, without ``supportlonglong``, 32."""
    return 64 if config.supportlonglong else 32


def plan_tables(checked: Preflight) -> list[TablePlan]:
    """A plan per table of every model, in config order; the caller closes their readers."""
    config = checked.checked_config()
    plans = []
    try:
        for m in config.models:
            for t in range(m.num_tables):
                facts = checked.tables.get((m.model, t))
                dim = m.embedding_vecsize_per_table[t]
                plans.append(
                    TablePlan(
                        m,
                        t,
                        m.table_name(t),
                        m.tag(t),
                        dim,
                        TableReader(m.table_path(t), dim),
                        facts.checksum if facts else "",
                        bool(facts and facts.current),
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
    """Open the RocksDB database and the Redis Cluster into ``stores`` (so that the caller
    closes whatever was opened when a later step fails)."""
    pdb, vdb = config.persistent_db, config.volatile_db
    width = key_width(config)
    if pdb.enabled:
        if row_cache is None:
            row_cache = auto_row_cache_bytes(
                sum(p.reader.num_keys * (width // 8 + 4 * p.dim) for p in plans)
            )
        stores.rocksdb = RocksDbStore(
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
