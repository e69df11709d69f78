"""Checks across fields that JSON Schema cannot express, and the traps HPS never reports.

They run on the raw document (after the schema check) and tolerate wrongly typed values, which
the schema check has already reported.
"""

from __future__ import annotations

import os

from .addresses import parse_redis_address
from .aliases import CACHE_TYPES, PERSISTENT_TYPES, VOLATILE_TYPES
from .fusion import fusion_issues
from .ignored import ignored_issues
from .issues import ERROR, WARNING, ConfigIssue, json_path
from .model import VolatileDbConfig, default_num_partitions

_PER_TABLE = (
    "embedding_vecsize_per_table",
    "maxnum_catfeature_query_per_table_per_sample",
    "embedding_table_names",
)
_REDIS_BATCH_LIMIT = 262143
SHM_DIR = "/dev/shm"  # where multi_process_hash_map's segment lives (volatile/shm_segment.py)


def semantic_issues(doc: dict) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    models = doc.get("models")
    if isinstance(models, list):
        _check_model_names(models, issues)
        for index, model in enumerate(models):
            if isinstance(model, dict):
                _check_model(index, model, issues)
    _check_volatile(doc, issues)
    issues += fusion_issues(doc)
    issues += ignored_issues(doc)  # fields without effect in hps (ignored.py)
    return issues


def _check_model_names(models: list, issues: list[ConfigIssue]) -> None:
    first_seen: dict[str, int] = {}
    for index, model in enumerate(models):
        name = model.get("model") if isinstance(model, dict) else None
        if not isinstance(name, str):
            continue
        if name in first_seen:
            issues.append(
                ConfigIssue(
                    ERROR,
                    json_path("models", index, "model"),
                    f"model name '{name}' is already used by models[{first_seen[name]}]",
                    "unique_names",
                    "model names must be unique: they key every storage tag",
                )
            )
        else:
            first_seen[name] = index


def _check_model(index: int, model: dict, issues: list[ConfigIssue]) -> None:
    files = model.get("sparse_files")
    if isinstance(files, list):
        tables = len(files)
        for key in _PER_TABLE:
            values = model.get(key)
            if isinstance(values, list) and len(values) != tables:
                issues.append(
                    ConfigIssue(
                        ERROR,
                        json_path("models", index, key),
                        f"has {len(values)} entr{'y' if len(values) == 1 else 'ies'} but "
                        "sparse_files "
                        f"has {tables}: every per-table list needs one entry per table",
                        "array_lengths",
                        "HPS reads past the end of shorter lists (undefined behaviour)"
                        if key != "embedding_vecsize_per_table"
                        else None,
                    )
                )
        defaults = model.get("default_value_for_each_table")
        if isinstance(defaults, list) and len(defaults) != tables:
            shorter = len(defaults) < tables
            issues.append(
                ConfigIssue(
                    WARNING,
                    json_path("models", index, "default_value_for_each_table"),
                    f"has {len(defaults)} entr{'y' if len(defaults) == 1 else 'ies'} for {tables} "
                    f"table(s): HPS {'pads it with 0.0' if shorter else 'ignores the extra ones'}",
                    "array_lengths",
                    "give one default value per table",
                )
            )
    names = model.get("embedding_table_names")
    if isinstance(names, list):
        seen: dict[str, int] = {}
        for t, name in enumerate(names):
            if isinstance(name, str) and name in seen:
                issues.append(
                    ConfigIssue(
                        ERROR,
                        json_path("models", index, "embedding_table_names", t),
                        f"table name '{name}' repeats embedding_table_names[{seen[name]}]",
                        "unique_names",
                        "two tables would share one storage tag and overwrite each other",
                    )
                )
            elif isinstance(name, str):
                seen[name] = t
    threshold = model.get("hit_rate_threshold", 0.9)
    gpucache = model.get("gpucache", True)
    cache_type = model.get("embedding_cache_type", "dynamic")
    is_dynamic = CACHE_TYPES.get(cache_type, "dynamic") == "dynamic" and not model.get(
        "use_static_table", False
    )
    if _number(threshold) and threshold < 1 and gpucache is True and is_dynamic:
        issues.append(
            ConfigIssue(
                WARNING,
                json_path("models", index, "hit_rate_threshold"),
                f"{threshold} < 1: when a batch's hit rate reaches it, missed keys get default "
                "vectors instead of their embeddings (results are not exact)",
                "non_exact",
                "set 1.0 for exact results (the default is 0.9)"
                if "hit_rate_threshold" not in model
                else "set 1.0 for exact results",
            )
        )
    if _number(threshold) and threshold > 1:
        issues.append(
            ConfigIssue(
                WARNING,
                json_path("models", index, "hit_rate_threshold"),
                f"{threshold} is above 1, which no hit rate reaches: it acts as 1.0 (every miss "
                "is fetched before the lookup answers, as HPS does with it)",
                "hps_quirk",
                "write 1.0",
            )
        )
    if cache_type == "stochastic":
        issues.append(
            ConfigIssue(
                WARNING,
                json_path("models", index, "embedding_cache_type"),
                "'stochastic' is parsed by HPS but not implemented; it behaves like a dynamic "
                "cache "
                "that skips filling the CPU tiers",
                "unsupported",
                "use dynamic",
            )
        )
    if (
        model.get("use_static_table") is True
        and "embedding_cache_type" in model
        and cache_type != "static"
    ):
        issues.append(
            ConfigIssue(
                WARNING,
                json_path("models", index, "use_static_table"),
                f"true forces a static cache, overriding embedding_cache_type '{cache_type}'",
                "conflict",
                "remove one of the two",
            )
        )
    refresh = model.get("cache_refresh_percentage_per_iteration", 0.0)
    if _number(refresh) and refresh >= 1.0 and is_dynamic and model.get("init_ec", True) is True:
        issues.append(
            ConfigIssue(
                WARNING,
                json_path("models", index, "cache_refresh_percentage_per_iteration"),
                "at 1.0 HPS's start-up prefill inserts nothing (its loop stops before the first "
                "chunk)",
                "hps_quirk",
                "use a value below 1, e.g. 0.2",
            )
        )


def _check_volatile(doc: dict, issues: list[ConfigIssue]) -> None:
    vdb = doc.get("volatile_db")
    if not isinstance(vdb, dict):
        return
    kind = vdb.get("type")
    if "type" not in vdb:
        issues.append(
            ConfigIssue(
                WARNING,
                json_path("volatile_db"),
                "the block has no 'type': HPS then disables the volatile tier (without the block "
                "it "
                "would create a parallel_hash_map)",
                "disabled_tier",
                'add "type": "parallel_hash_map", or remove the block',
            )
        )
    elif (
        isinstance(kind, str) and kind in PERSISTENT_TYPES and PERSISTENT_TYPES[kind] == "rocks_db"
    ):
        issues.append(
            ConfigIssue(
                ERROR,
                json_path("volatile_db", "type"),
                f"'{kind}' is a persistent backend; HPS aborts on it in volatile_db",
                "wrong_tier",
                "move it to persistent_db, or use parallel_hash_map or redis_cluster",
            )
        )
    if isinstance(kind, str) and VOLATILE_TYPES.get(kind) == "redis_cluster":
        address = vdb.get("address", "127.0.0.1:7000")
        if isinstance(address, str):
            try:
                parse_redis_address(address)
            except ValueError as exc:
                issues.append(
                    ConfigIssue(
                        ERROR,
                        json_path("volatile_db", "address"),
                        f"{exc}: the Redis Cluster could not be reached",
                        "address",
                        'host:port of one or more nodes, e.g. "10.0.0.1:7000,10.0.0.2:7000"',
                    )
                )
        parts, conns = vdb.get("num_partitions"), vdb.get("num_node_connections", 5)
        if isinstance(parts, int) and isinstance(conns, int) and parts < conns:
            issues.append(
                ConfigIssue(
                    ERROR,
                    json_path("volatile_db", "num_partitions"),
                    f"{parts} is below num_node_connections ({conns}); HPS's Redis backend "
                    "refuses it",
                    "redis",
                    "use at least as many partitions as connections per node",
                )
            )
        elif parts is None and isinstance(conns, int) and default_num_partitions() < conns:
            # HPS's default, min(16, hardware threads), depends on the host: the same file
            # starts on a large server and is refused on a small one
            issues.append(
                ConfigIssue(
                    WARNING,
                    json_path("volatile_db"),
                    f"num_partitions is not set: HPS's default on this host, min(16, "
                    f"{os.cpu_count() or 1} hardware threads) = {default_num_partitions()}, is "
                    "below "
                    f"num_node_connections ({conns}), which HPS's Redis backend refuses",
                    "redis",
                    f"set num_partitions (at least {conns}); it must not change once data "
                    "is written",
                )
            )
        batch = vdb.get("max_batch_size", 65536)
        if isinstance(batch, int) and batch > _REDIS_BATCH_LIMIT:
            issues.append(
                ConfigIssue(
                    WARNING,
                    json_path("volatile_db", "max_batch_size"),
                    f"{batch} exceeds {_REDIS_BATCH_LIMIT}; some Redis versions fail on batches "
                    "this large",
                    "redis",
                    "use 65536",
                )
            )
    if isinstance(kind, str) and VOLATILE_TYPES.get(kind) == "multi_process_hash_map":
        _check_shared_memory(vdb, issues)


def _check_shared_memory(vdb: dict, issues: list[ConfigIssue]) -> None:
    """The segment of multi_process_hash_map lives in /dev/shm of this host: warn when /dev/shm
    is smaller than shared_memory_size (Docker's default is 64 MiB)."""
    size = vdb.get("shared_memory_size", VolatileDbConfig.shared_memory_size)
    if not isinstance(size, int) or isinstance(size, bool):
        return
    try:
        st = os.statvfs(SHM_DIR)
    except OSError:
        issues.append(
            ConfigIssue(
                WARNING,
                json_path("volatile_db", "type"),
                f"this host has no {SHM_DIR}: multi_process_hash_map needs Linux's POSIX shared "
                "memory",
                "shared_memory",
                "use parallel_hash_map or redis_cluster here",
            )
        )
        return
    total = st.f_blocks * st.f_frsize
    if total < size:
        where = json_path("volatile_db", "shared_memory_size")
        issues.append(
            ConfigIssue(
                WARNING,
                where if "shared_memory_size" in vdb else json_path("volatile_db"),
                f"shared_memory_size ({_gib(size)}) exceeds {SHM_DIR} on this host "
                f"({_gib(total)}): tables that do not fit in {SHM_DIR} fail at start-up",
                "shared_memory",
                f"enlarge {SHM_DIR} (docker run --shm-size=..., Kubernetes: an emptyDir with "
                "medium Memory) or lower shared_memory_size",
            )
        )


def _gib(count: int) -> str:
    return f"{count / 2**30:.2f} GiB"


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
