"""Start-up, second half: the writes, once everything was checked (startup_plan.py).

``load_tables`` builds every storage table's ``TableTiers`` (a fused table's is shared by its
member tables): it loads the RocksDB families of changed tables (atomically per family; a family
the database holds unchanged is kept), then fills the volatile tier. A Redis table whose record
says it already holds this table file (and a RocksDB tier backs it) is not reloaded, nor is a
shared-memory table (``multi_process_hash_map``) that another process has loaded from this table
file. A table
whose front caches hold every row (static, uvm: ``TablePlan.cpu_tiers`` false) gets tiers with
neither tier: no copy of it in host memory or on disk besides the cache's own.

- ``table_checksum``: the identity of a table's content, in ``table.json``'s format (taken from
  a current sidecar, else computed in one streaming CRC32 pass; a fused table's joins its
  members'). RocksDB and Redis keep it in their bookkeeping record, so an unchanged table is
  not rewritten at the next start.
- ``volatile_rows``: which rows go into the volatile tier. HPS's ``initial_cache_rate`` is
  honoured (HPS v24.06 only logs it and inserts everything): the first ``round(rate × keys)``
  rows, hottest first when the table has ``meta`` (access counts), else in file order (tables
  are written hot rows first). With an ``overflow_margin``, each partition takes at most
  ``margin`` of them (the hottest), so the load never evicts what it just inserted.
- ``load_volatile``: insert those rows in chunks (bounded memory, file-order reads).
- ``replay_updates``: the updates journaled in RocksDB since a kept family was loaded (admin
  inserts and removes; rocksdb_families.py) are applied over what the volatile tier and the
  front caches were filled with from the table files, so an update wins over its table file
  until that file changes (then the family is reloaded and its journal cleared).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Callable

import numpy as np

from .checksum import file_crc32
from .config.model import PsConfig
from .cpu_tiers import TableTiers
from .crash_points import crash_point
from .hashing import partition_of
from .seams import FrontCache, VolatileTable
from .stats import TableStats
from .table.file_layout import KEY_FILE, META_FILE, VECTOR_FILE
from .table.fused_reader import FusedTableReader
from .table.reader import TableReader

if TYPE_CHECKING:
    from .startup_plan import Stores, TablePlan
    from .volatile.redis_cluster import RedisTable
    from .volatile.shm_table import SharedHashMapTable

log = logging.getLogger("hps_cli.runtime")

LOAD_ROWS = 1 << 16


def table_checksum(reader: TableReader | FusedTableReader) -> str:
    """``Sidecar.checksum()`` of the table (computed when there is no current sidecar); for a
    fused table, its members' in order."""
    if isinstance(reader, FusedTableReader):
        return "fused[" + "|".join(table_checksum(m) for m in reader.members) + "]"
    if reader.sidecar is not None and reader.sidecar.dim == reader.dim:
        return reader.sidecar.checksum()
    names = [KEY_FILE, VECTOR_FILE] + ([META_FILE] if reader.has_meta else [])
    parts = []
    for name in sorted(names):
        crc, size = file_crc32(reader.path / name)
        parts.append(f"{name}:{size}:{crc:08x}")
    return f"dim={reader.dim};" + ";".join(parts)


def volatile_rows(
    reader: TableReader | FusedTableReader,
    rate: float,
    *,
    num_partitions: int,
    overflow_margin: int | None,
) -> np.ndarray | None:
    """Row numbers to load, in load order; None means every row in file order."""
    n = reader.num_keys
    count = min(n, int(round(max(0.0, min(1.0, rate)) * n)))
    meta = reader.meta()
    limited = overflow_margin is not None and overflow_margin * num_partitions < n
    if count == n and not limited:
        return None
    if meta is not None:
        order = np.argsort(-np.asarray(meta), kind="stable")[:count]  # hottest first
    else:
        order = np.arange(count, dtype=np.int64)
    if limited and order.size:
        part = partition_of(np.take(reader.keys(), order), num_partitions)
        by_part = np.argsort(part, kind="stable")
        starts = np.searchsorted(part[by_part], np.arange(num_partitions))
        rank = np.empty(order.size, dtype=np.int64)
        rank[by_part] = np.arange(order.size) - starts[part[by_part]]
        order = order[rank < overflow_margin]
    return order


def load_volatile(
    tier: VolatileTable,
    reader: TableReader | FusedTableReader,
    rows: np.ndarray | None,
    *,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Insert ``rows`` of the table (all when None) into a volatile tier; returns rows sent."""
    row_bytes = 8 + 4 * reader.dim
    sent = 0
    if rows is None:
        for chunk in reader.chunks(LOAD_ROWS):
            tier.insert(np.array(chunk.keys), np.array(chunk.vectors))
            sent += chunk.keys.size
            if progress:
                progress(chunk.keys.size * row_bytes)
        return sent
    keys, vectors = reader.keys(), reader.vectors()
    for first in range(0, rows.size, LOAD_ROWS):
        part = rows[first : first + LOAD_ROWS]
        ascending = np.sort(part)  # read in file order, insert in load order
        where = np.searchsorted(ascending, part)
        tier.insert(np.take(keys, ascending)[where], np.take(vectors, ascending, axis=0)[where])
        sent += part.size
        if progress:
            progress(part.size * row_bytes)
    return sent


def load_tables(
    config: PsConfig,
    plans: list[TablePlan],
    stores: Stores,
    tables: dict[tuple[str, int], TableTiers],
    progress: Callable[[int], None] | None = None,
) -> None:
    """Load every planned table into its tiers and put its ``TableTiers`` into ``tables``
    (keyed by model name and table number: every member of a fused table maps to its one
    ``TableTiers``), table by table in plan order."""
    pdb, vdb = config.persistent_db, config.volatile_db
    for plan in plans:
        persistent = None
        if not plan.cpu_tiers:
            log.info("%s: its caches hold every row; no CPU tier holds a copy", plan.tag)
        elif stores.rocksdb is not None:
            if not plan.persistent_current and not pdb.read_only:
                started = time.perf_counter()
                plan.checksum = plan.checksum or table_checksum(plan.reader)
                stores.rocksdb.load_table(plan.tag, plan.reader, plan.checksum, progress=progress)
                log.info(
                    "RocksDB: loaded %s (%d keys) in %.1f s",
                    plan.tag,
                    plan.reader.num_keys,
                    time.perf_counter() - started,
                )
            persistent = stores.rocksdb.table(plan.tag, plan.dim)
        volatile = None
        if vdb.enabled and plan.cpu_tiers:
            rows = volatile_rows(
                plan.reader,
                vdb.initial_cache_rate,
                num_partitions=vdb.num_partitions,
                overflow_margin=vdb.overflow_margin if vdb.has_overflow_limit else None,
            )
            count = plan.reader.num_keys if rows is None else rows.size
            if vdb.type == "redis_cluster":
                redis_table = _redis_table(config, plan, stores)
                _fill_redis(config, plan, redis_table, rows, stores, progress)
                volatile = redis_table
            elif vdb.type == "multi_process_hash_map":
                shared_table = _shared_table(config, plan, stores)
                _fill_shared(config, plan, shared_table, rows, progress)
                volatile = shared_table
            else:
                volatile = _hash_map_table(config, plan, count)
                load_volatile(volatile, plan.reader, rows, progress=progress)
        tiers = TableTiers(
            plan.model.model,
            plan.name,
            plan.dim,
            plan.table.default_value,
            volatile=volatile,
            persistent=persistent,
            cache_missed_embeddings=vdb.cache_missed_embeddings,
            stats=TableStats(),
        )
        for table_id in plan.table.table_ids:
            tables[(plan.model.model, table_id)] = tiers


def _hash_map_table(config: PsConfig, plan: TablePlan, reserve: int) -> VolatileTable:
    from .volatile.hash_map import HashMapTable

    vdb = config.volatile_db
    return HashMapTable(
        plan.dim,
        num_partitions=vdb.num_partitions,
        overflow_margin=vdb.overflow_margin if vdb.has_overflow_limit else None,
        overflow_policy=vdb.overflow_policy,
        overflow_resolution_target=vdb.overflow_resolution_target,
        reserve=reserve,
    )


def _redis_table(config: PsConfig, plan: TablePlan, stores: Stores) -> RedisTable:
    vdb = config.volatile_db
    assert stores.redis is not None  # open_stores connected it
    return stores.redis.table(
        plan.tag,
        plan.dim,
        num_partitions=vdb.num_partitions,
        key_width=64 if config.supportlonglong else 32,
        overflow_margin=vdb.overflow_margin if vdb.has_overflow_limit else None,
        overflow_policy=vdb.overflow_policy,
        overflow_resolution_target=vdb.overflow_resolution_target,
    )


def _fill_redis(
    config: PsConfig,
    plan: TablePlan,
    table: RedisTable,
    rows: np.ndarray | None,
    stores: Stores,
    progress: Callable[[int], None] | None,
) -> None:
    """Load the table into Redis unless Redis's record says it holds this very table file."""
    record = _volatile_record(config, plan)
    # Skip only with RocksDB behind it: if a node lost its data since, its keys still fall
    # through to a full copy. Without one, reload as HPS does.
    if stores.rocksdb is not None and table.read_record() == record:
        log.info("Redis: %s already holds this table; not reloading", plan.tag)
        return
    table.clear()
    load_volatile(table, plan.reader, rows, progress=progress)
    table.write_record(record)


def _volatile_record(config: PsConfig, plan: TablePlan) -> dict:
    """What a shared volatile tier records about the table it loaded."""
    vdb = config.volatile_db
    return {
        "checksum": plan.checksum or table_checksum(plan.reader),
        "dim": plan.dim,
        "num_partitions": vdb.num_partitions,
        "initial_cache_rate": vdb.initial_cache_rate,
        "overflow_margin": vdb.overflow_margin,
        "complete": True,
    }


def _shared_table(config: PsConfig, plan: TablePlan, stores: Stores) -> SharedHashMapTable:
    from .volatile.shm_table import SharedHashMapTable

    vdb = config.volatile_db
    assert stores.shared is not None  # open_stores attached it
    return SharedHashMapTable(
        stores.shared,
        plan.tag,
        plan.dim,
        num_partitions=vdb.num_partitions,
        overflow_margin=vdb.overflow_margin if vdb.has_overflow_limit else None,
        overflow_policy=vdb.overflow_policy,
        overflow_resolution_target=vdb.overflow_resolution_target,
        expected_keys=plan.reader.num_keys,
    )


def _fill_shared(
    config: PsConfig,
    plan: TablePlan,
    table: SharedHashMapTable,
    rows: np.ndarray | None,
    progress: Callable[[int], None] | None,
) -> None:
    """Load the table into the shared-memory segment unless the segment's record says a
    process loaded this very table file already. One process loads while the others wait; a
    load that did not finish (its process died) leaves no record, so the next one reloads."""
    record = _volatile_record(config, plan)
    with table.loading():
        if table.read_record() == record:
            log.info("shared memory: %s is loaded already; attached", plan.tag)
            return
        table.mark_loading()
        table.clear()
        load_volatile(table, plan.reader, rows, progress=progress)
        crash_point("shm.loaded")  # every row in, no record yet: the next start reloads
        table.write_record(record)


def replay_updates(
    plans: list[TablePlan],
    stores: Stores,
    tables: dict[tuple[str, int], TableTiers],
    fronts: dict[tuple[str, int, int], FrontCache],
) -> None:
    """Apply each storage table's journaled updates over its volatile tier and front caches
    (a fused group's, which its member tables share, once). A table whose caches hold it whole
    (static, uvm) takes none: they serve its table file (logged when a journal is left from a
    time it had CPU tiers)."""
    if stores.rocksdb is None:
        return
    for plan in plans:
        journal = stores.rocksdb.journal(plan.tag, plan.dim)
        if not len(journal):
            continue
        if not plan.cpu_tiers:
            log.warning(
                "%s: its %s caches hold the table file whole and cannot take the %d journaled "
                "update(s); they serve the table file's vectors for those keys",
                plan.tag,
                plan.model.cache_type,
                len(journal),
            )
            continue
        model, first = plan.model.model, plan.table.table_ids[0]
        tiers = tables[(model, first)]
        targets: list = [tiers.volatile] if tiers.volatile is not None else []
        for device in plan.model.deployed_device_list:
            front = fronts.get((model, first, device))
            if front is not None and front.read_only:
                log.warning(
                    "%s: the %s cache on device %d cannot take the %d journaled update(s); "
                    "it serves the table file's vectors for those keys",
                    plan.tag,
                    plan.model.cache_type,
                    device,
                    len(journal),
                )
            elif front is not None:
                targets.append(front)
        for target in targets:
            if journal.inserted.size:
                if target is tiers.volatile:
                    target.insert(journal.inserted, journal.vectors)
                else:
                    target.update(journal.inserted, journal.vectors)
            if journal.removed.size:
                target.remove(journal.removed)
        log.info(
            "%s: replayed %d inserted and %d removed key(s) journaled since the table was loaded",
            plan.tag,
            journal.inserted.size,
            journal.removed.size,
        )
