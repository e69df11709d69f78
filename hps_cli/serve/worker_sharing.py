"""What the hierarchy means when ``hps serve --workers N`` runs N > 1 server processes.

Every worker opens the ps.json's runtimes itself, so each tier must be one the workers can
share, or one that is read-only:

- ``volatile_db``: ``multi_process_hash_map`` (one copy in shared memory: the first worker loads
  it, the others attach) and ``redis_cluster`` are shared; every worker sees an admin insert or
  remove at once. ``parallel_hash_map`` lives inside a process: N workers would hold N copies
  (N times the memory) and an admin update would reach the one worker whose connection carried
  it, so start-up refuses it (``refuse_private_volatile``). ``disabled`` is fine.
- ``persistent_db`` (RocksDB): one process may open a database read-write. The supervisor
  loads what the database lacks once, before any worker starts (``prepare_persistent``), and
  every worker checks and serves the config with ``persistent_db.read_only`` set
  (``read_only_persistent``): a read-only runtime notices when another process replaces a
  family (``hps convert --to rocksdb --overwrite``, say) and reopens the database within a few
  seconds (runtime/persistent/rocksdb_watch.py), so every worker follows. Admin updates of such
  models are refused (400): they must reach every tier, and a read-only database takes none.
- Embedding caches (``gpucache``) are per process, as on any multi-instance deployment: an
  update would refresh the cache of one worker only, so admin updates of a model with caches
  are refused (``refuse_unshared_update``, which also refuses updates of a package's own
  runtime with a private volatile tier); lookups use every worker's cache.
- The model repository: a load, reload or unload request reaches the one worker whose
  connection carried it, and the workers would then serve different models or versions, so
  every such request is refused (400, ``refuse_repository_change``); restart the server to
  change its models.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from ..runtime.errors import ConfigError, InvalidInputError

log = logging.getLogger("hps_cli.serve")

SHARED_VOLATILE = ("multi_process_hash_map", "redis_cluster", "disabled")


def refuse_private_volatile(config, workers: int) -> None:
    """ConfigError when ``workers`` > 1 processes would each hold a private volatile tier."""
    vdb = config.volatile_db
    if workers > 1 and vdb.type not in SHARED_VOLATILE:
        source = config.source_path or "<config>"
        raise ConfigError(
            f"volatile_db.type '{vdb.type}' is private to each process: {workers} workers "
            "would hold a copy each, and an admin update would reach one of them only",
            location=f"{source} $.volatile_db.type",
            hint="set volatile_db.type to multi_process_hash_map (one copy in shared memory "
            "for every worker) or redis_cluster, or serve with --workers 1",
        )


def needs_read_only_persistent(config, workers: int) -> bool:
    pdb = config.persistent_db
    return workers > 1 and pdb.enabled and not pdb.read_only


def prepare_persistent(checked) -> bool:
    """Load into RocksDB what it lacks (changed or new tables), once, in this process, so that
    the workers can open it read-only; ``checked``: the supervisor's ``Preflight``. Nothing is
    opened when preflight found every table current in the database; else only the persistent
    tier is built (no volatile tier, no caches; start-up checks that config as always). Returns
    whether it loaded."""
    from ..runtime import HPS

    facts = checked.tables
    if facts and all(f.current for f in facts.values()):
        return False
    config = checked.checked_config()
    only_persistent = dataclasses.replace(
        config, volatile_db=dataclasses.replace(config.volatile_db, type="disabled")
    )
    HPS(only_persistent, cache_factory=None, allow_non_finite=checked.allow_non_finite).close()
    log.info("RocksDB %s prepared for read-only workers", config.persistent_db.path)
    return True


def read_only_persistent(config_path: Path):
    """The typed config of ``config_path`` with ``persistent_db.read_only`` set: what a worker
    checks (preflight) and serves. Only the document is validated here: preflight checks the
    rest."""
    from ..runtime.config.validate import load_config

    config = load_config(config_path, check_files=False)
    return dataclasses.replace(
        config, persistent_db=dataclasses.replace(config.persistent_db, read_only=True)
    )


def refuse_repository_change(name: str, what: str, workers: int) -> None:
    """400 for a repository load or unload that would reach this worker only."""
    if workers <= 1:
        return
    raise InvalidInputError(
        f"cannot {what} model '{name}': the server runs {workers} worker processes and the "
        "request would reach one of them only",
        location="model",
        hint="restart the server to change its models, or serve with --workers 1",
    )


def refuse_unshared_update(runtime, hps_model: str, workers: int) -> None:
    """400 for an admin update that would reach this worker only: a model with embedding
    caches, or a runtime with a private volatile tier (an inference package's own ps.json,
    which start-up does not check)."""
    if workers <= 1:
        return
    config = runtime.config
    if config.volatile_db.type not in SHARED_VOLATILE:
        raise InvalidInputError(
            f"the runtime of model '{hps_model}' has a private volatile tier "
            f"({config.volatile_db.type}) in each of the {workers} worker processes: an "
            "update would reach this worker only",
            location="volatile_db.type",
            hint="use multi_process_hash_map or redis_cluster, or serve with --workers 1",
        )
    cfg = config.model(hps_model)
    cached = any(
        runtime.hps.front_cache(cfg.model, t, device) is not None
        for device in cfg.deployed_device_list
        for t in range(cfg.num_tables)
    )
    if cached:
        raise InvalidInputError(
            f"model '{hps_model}' has an embedding cache in each of the {workers} worker "
            "processes: an update would refresh this worker's cache only",
            location="gpucache",
            hint="set gpucache false for models updated at run time, or serve with --workers 1",
        )
