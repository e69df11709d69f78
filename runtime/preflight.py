"""Every check start-up makes before it writes anything; ``hps validate-config`` runs the same.

One code path: ``preflight(config)`` returns a ``Preflight`` whose ``issues`` (``ConfigIssue``:
severity, JSON path, message, hint) come, in this order, from

1. the document: JSON syntax, the schema, the cross-field rules (config/validate.py, which
   runs config/schema_check.py and config/semantic.py);
2. ``runtime_issues``: what this runtime cannot honour (typed config);
3. the table files (config/files.py): structure, dims, key range, NaN or Inf in a vector
   (unless ``allow_non_finite``), and keys shared by tables fused into one;
4. ``shared_memory_issues``: whether the ``multi_process_hash_map`` segment can hold this
   config's tables (``shared_memory_name``, ``shared_memory_size``);
5. ``database_issues``: ``persistent_db.path`` and, looking at the database read-only, the
   column family of each storage table with CPU tiers (a table, or a fused group of tables:
   config/fusion.py; not those whose caches hold every row, static and uvm, which RocksDB never
   holds): missing, empty, interrupted, key width, dim, and the updates a reload would discard.

Start-up (startup.py) raises a ``ConfigError`` holding every issue when one is an error and
logs the warnings (fields hps ignores included: config/ignored.py); validate-config prints them
all. Start-up then opens what this cannot judge without taking it: the RocksDB lock (another
process writing: exit 4), the Redis Cluster (unreachable: exit 6) and the shared-memory
segment as other processes left it (their tables, in the same or another layout).

Where a new check belongs: a rule about the document (a field's value, fields that contradict
each other, a field HPS reads but this runtime ignores: its row in config/ignored.py too) goes
in config/semantic.py, returning ``ConfigIssue``s; a rule that needs the typed config goes in
``runtime_issues``; one that needs the disk goes in ``database_issues``,
``shared_memory_issues`` or config/files.py. All of them then reach both ``hps serve`` and
``hps validate-config``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from .config.files import file_issues
from .config.fusion import StorageTable, storage_tables
from .config.issues import ERROR, WARNING, ConfigIssue, json_path
from .config.model import ModelConfig, PsConfig
from .config.validate import ValidationResult, validate_config_file, validate_document
from .errors import ConfigError, HpsError
from .persistent.rocksdb_families import FamilyState

if TYPE_CHECKING:
    from .seams import CacheFactory

log = logging.getLogger("hps_cli.runtime")

AUTO = "auto"  # the cache factory the config asks for (startup.default_cache_factory)

HoldsWholeTable = Callable[[ModelConfig, StorageTable], bool]


@dataclass(frozen=True)
class TableFacts:
    """What the database holds for one storage table, as preflight saw it."""

    checksum: str  # the table file's identity (startup_load.table_checksum; a fused group's)
    family: FamilyState
    current: bool  # the family holds exactly this table file (complete record, same checksum)


@dataclass(frozen=True)
class Preflight:
    """The result of every check of one config; ``config`` is None when the document itself
    is invalid. ``tables`` (by storage tag) is filled when the database was looked at, for the
    storage tables with CPU tiers under the cache factory preflight was given."""

    result: ValidationResult
    tables: dict[str, TableFacts] = field(default_factory=dict)
    allow_non_finite: bool = False

    @property
    def ok(self) -> bool:
        return self.result.ok

    @property
    def config(self) -> PsConfig | None:
        return self.result.config

    @property
    def issues(self) -> tuple[ConfigIssue, ...]:
        return self.result.issues

    def checked_config(self) -> PsConfig:
        """The typed config; raises ``ConfigError`` (every issue in ``.issues``, the message
        naming the first error with its JSON path) when there is an error."""
        result = self.result
        if result.ok and result.config is not None:
            return result.config
        errors = result.errors
        first = errors[0]
        more = len(errors) - 1
        suffix = f" (and {more} more error{'s' * (more > 1)})" if more else ""
        raise ConfigError(
            f"{first.message}{suffix}",
            issues=result.issues,
            location=f"{result.source} {first.json_path}"
            if first.json_path != "$"
            else (first.location or result.source),
            hint=first.hint or f"run 'hps validate-config {result.source}'",
        )


def preflight(
    config: PsConfig | str | Path | dict,
    *,
    check_files: bool = True,
    strict: bool = False,
    allow_non_finite: bool = False,
    cache_factory: CacheFactory | str | None = AUTO,
) -> Preflight:
    """Run every check (see the module doc) of a config file, document or typed config.

    Args:
        check_files: also check the table files and the database (validate-config
            ``--no-check-files`` turns it off; start-up always checks).
        strict: warnings become errors.
        allow_non_finite: NaN and Inf in a table are not an error.
        cache_factory: the embedding caches start-up will build (``HPS``'s argument): whether
            any sit in front of the CPU tiers, and which tables they hold whole. ``AUTO``: the
            caches the config asks for, as ``hps serve`` builds them.
    """
    if isinstance(config, PsConfig):
        result = ValidationResult(config.source_path or "<config>", (), config)
    elif isinstance(config, dict):
        result = validate_document(config, base_dir=Path.cwd(), check_files=False)
    else:
        result = validate_config_file(config, check_files=False)
    typed = result.config
    if typed is None or not result.ok:
        return Preflight(_strict(result, strict), allow_non_finite=allow_non_finite)
    front_caches, holds_whole = cache_rule(typed, cache_factory)
    issues = list(result.issues) + runtime_issues(typed, front_caches)
    tables: dict[str, TableFacts] = {}
    if check_files:
        found = file_issues(typed, scan_values=not allow_non_finite)
        issues += found
        if not any(i.is_error for i in found):
            issues += shared_memory_issues(typed, holds_whole)
            issues += database_issues(typed, tables, holds_whole)
    checked = ValidationResult(result.source, tuple(issues), typed)
    checked = _strict(checked, strict)
    if not checked.ok:
        checked = replace(checked, config=None)
    return Preflight(checked, tables, allow_non_finite)


def _strict(result: ValidationResult, strict: bool) -> ValidationResult:
    if not strict:
        return result
    issues = tuple(i.as_error() for i in result.issues)
    return ValidationResult(result.source, issues, result.config if not issues else None)


def _never(model: ModelConfig, table: StorageTable) -> bool:
    return False


def cache_rule(
    config: PsConfig, cache_factory: CacheFactory | str | None = AUTO
) -> tuple[bool, HoldsWholeTable]:
    """Whether front caches will sit in front of the CPU tiers, and which storage tables they
    hold whole (``CacheFactory.holds_whole_table``)."""
    if cache_factory == AUTO:
        if not any(m.gpucache for m in config.models):
            return False, _never
        from .gpu.cache_factory import holds_whole_table

        return True, holds_whole_table
    if cache_factory is None or isinstance(cache_factory, str):
        return False, _never
    return True, cache_factory.holds_whole_table


# ------------------------------------------------------------------------------ runtime


def runtime_issues(config: PsConfig, front_caches: bool | None = None) -> list[ConfigIssue]:
    """Settings this runtime cannot honour (errors, rather than ignoring them)."""
    issues: list[ConfigIssue] = []
    vdb, pdb = config.volatile_db, config.persistent_db
    if config.update_source.type != "null":
        issues.append(
            ConfigIssue(
                ERROR,
                "$.update_source.type",
                f"update_source '{config.update_source.type}' is not supported: "
                "hps serve would refuse this config",
                "unsupported",
                "remove the block; apply updates through the admin endpoints "
                "(or HPS.insert / HPS.remove)",
            )
        )
    if front_caches is None:
        front_caches = any(m.gpucache for m in config.models)
    if not vdb.enabled and not pdb.enabled and not front_caches:
        issues.append(
            ConfigIssue(
                ERROR,
                "$.volatile_db",
                "both volatile_db and persistent_db are disabled: every lookup would return "
                "default vectors",
                "disabled_tier",
                "enable a volatile_db (e.g. parallel_hash_map) or a persistent_db",
            )
        )
    return issues


# ------------------------------------------------------------------------------ shared memory


def shared_memory_issues(
    config: PsConfig, holds_whole: HoldsWholeTable = _never
) -> list[ConfigIssue]:
    """The segment's name, and its size against the regions of this config's tables with CPU
    tiers (the sizes start-up reserves, volatile/shm_layout.py): other processes' tables can
    only take more."""
    vdb = config.volatile_db
    if vdb.type != "multi_process_hash_map":
        return []
    from .volatile import shm_layout
    from .volatile.shm_segment import human_bytes, segment_path
    from .volatile.shm_table import table_spec

    try:
        segment_path(vdb.shared_memory_name)
    except ConfigError as exc:
        return [
            ConfigIssue(
                ERROR, "$.volatile_db.shared_memory_name", exc.message, "shared_memory", exc.hint
            )
        ]
    need = shm_layout.first_region()
    for model in config.models:
        for table in storage_tables(model):
            if holds_whole(model, table):
                continue
            with table.open() as reader:
                rows = reader.num_keys
            spec = table_spec(
                table.tag,
                table.dim,
                num_partitions=vdb.num_partitions,
                overflow_margin=vdb.overflow_margin if vdb.has_overflow_limit else None,
                overflow_policy=vdb.overflow_policy,
                overflow_resolution_target=vdb.overflow_resolution_target,
                expected_keys=rows,
            )
            need += spec.layout.nbytes
    size = vdb.shared_memory_size
    if need <= size:
        return []
    return [
        ConfigIssue(
            ERROR,
            "$.volatile_db.shared_memory_size",
            f"the tables need {human_bytes(need)} of shared memory (the segment's header and "
            f"directory included), more than shared_memory_size ({human_bytes(size)})",
            "shared_memory",
            f"set shared_memory_size to at least {need} (docs/runtime.md: sizing), or an "
            "overflow_margin",
        )
    ]


# ------------------------------------------------------------------------------ database


def database_issues(
    config: PsConfig,
    tables: dict[str, TableFacts],
    holds_whole: HoldsWholeTable = _never,
) -> list[ConfigIssue]:
    """Check ``persistent_db.path`` and, read-only, the column family of each storage table
    that the caches do not hold whole (``holds_whole``); record what was found per storage tag
    in ``tables``."""
    pdb = config.persistent_db
    if not pdb.enabled:
        return []
    path = Path(pdb.path)
    where = "$.persistent_db.path"
    if path.is_symlink() and not path.exists():
        return [
            ConfigIssue(
                ERROR,
                where,
                "is a broken symbolic link or a symbolic link loop",
                "database",
                "point persistent_db.path at a folder (it is created when missing)",
                str(path),
            )
        ]
    if path.exists() and not path.is_dir():
        return [
            ConfigIssue(
                ERROR,
                where,
                "is a file, not a RocksDB database folder",
                "database",
                "point persistent_db.path at a folder (it is created when missing)",
                str(path),
            )
        ]
    if not (path / "CURRENT").exists():
        return _new_database_issues(config, path, where)
    from .persistent.rocksdb_families import family_state, list_families, open_db

    try:
        db = open_db(path, read_only=True)
    except HpsError as exc:
        return [ConfigIssue(ERROR, where, exc.message, "database", exc.hint, str(path))]
    try:
        families = set(list_families(path))
        issues: list[ConfigIssue] = []
        for m, model in enumerate(config.models):
            for table in storage_tables(model):
                if holds_whole(model, table):
                    continue  # its caches hold every row: it gets no family (startup_load.py)
                state = family_state(db, table.tag, families)
                issues += _family_issues(config, db, m, table, state, tables)
        return issues
    finally:
        db.close()


def _new_database_issues(config: PsConfig, path: Path, where: str) -> list[ConfigIssue]:
    """The database does not exist yet: read-only cannot work; read-write creates it, so its
    nearest existing folder must take a new folder."""
    if config.persistent_db.read_only:
        return [
            ConfigIssue(
                ERROR,
                where,
                "no RocksDB database here, and read_only is set",
                "database",
                "load the tables with 'hps convert --to rocksdb' first, or fix the path",
                str(path),
            )
        ]
    existing = path if path.exists() else next(p for p in path.parents if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        return [
            ConfigIssue(
                ERROR,
                where,
                f"cannot create the database: {existing} is "
                + ("not a folder" if not existing.is_dir() else "not writable"),
                "database",
                "point persistent_db.path at a folder this user may write",
                str(path),
            )
        ]
    return []


def _family_issues(
    config: PsConfig,
    db,
    m: int,
    storage: StorageTable,
    state: FamilyState,
    tables: dict[str, TableFacts],
) -> list[ConfigIssue]:
    from .persistent.rocksdb_bulk import first_value_size
    from .persistent.rocksdb_families import journal_is_empty
    from .startup_load import table_checksum

    model, pdb = config.models[m], config.persistent_db
    dim, tag, first = storage.dim, storage.tag, storage.table_ids[0]
    with storage.open() as reader:
        checksum = table_checksum(reader)
    current = state.holds_table_file(checksum, dim)
    tables[tag] = TableFacts(checksum, state, current)
    table = _describe(model, storage)
    files_path = (
        json_path("models", m, "sparse_files")
        if storage.fused
        else json_path("models", m, "sparse_files", first)
    )
    issues: list[ConfigIssue] = []
    if not state.holds_a_table:
        if pdb.read_only:
            what = "has no column family" if not state.exists else "has an empty column family"
            why = " (left by a load that was interrupted)" if state.interrupted else ""
            issues.append(
                ConfigIssue(
                    ERROR,
                    "$.persistent_db",
                    f"the read-only RocksDB database {what} '{tag}'{why} for {table}",
                    "database",
                    "load the table with 'hps convert --to rocksdb --overwrite' first, "
                    "or open the database read-write",
                    pdb.path,
                )
            )
        return issues
    if current or pdb.read_only:
        sizes = first_value_size(db, tag)
        key_size = 8 if config.supportlonglong else 4
        if sizes is not None and sizes[0] != key_size:
            issues.append(
                ConfigIssue(
                    ERROR,
                    "$.supportlonglong",
                    f"column family '{tag}' stores {sizes[0]}-byte keys, but the config uses "
                    f"{key_size}-byte keys",
                    "database",
                    "supportlonglong must match the database (true: 8-byte keys, false: 4)",
                    pdb.path,
                )
            )
        elif sizes is not None and sizes[1] != 4 * dim:
            issues.append(
                ConfigIssue(
                    ERROR,
                    json_path("models", m, "embedding_vecsize_per_table", first),
                    f"column family '{tag}' stores vectors of {sizes[1] // 4} floats, the config "
                    f"says {dim}",
                    "database",
                    "fix embedding_vecsize_per_table, or point persistent_db.path elsewhere",
                    pdb.path,
                )
            )
    if pdb.read_only and not current:
        what = (
            "a load of it was interrupted, so it holds the previous table or this one"
            if state.interrupted
            else "our record says it holds another table file"
            if state.record
            else "it has no record of ours (written by HPS or by hand)"
        )
        issues.append(
            ConfigIssue(
                WARNING,
                files_path,
                f"the read-only database's family '{tag}' may not match {table}: {what}; "
                "it is served as the database holds it",
                "database_mismatch",
                "reload it with 'hps convert --to rocksdb --overwrite'",
                pdb.path,
            )
        )
    if not pdb.read_only and not current and not journal_is_empty(db, tag):
        issues.append(
            ConfigIssue(
                WARNING,
                files_path,
                f"the table file of {table} differs from what family '{tag}' was loaded from: "
                "start-up reloads it, and the updates made since (admin insert/remove) are "
                "discarded",
                "updates_discarded",
                "keep the table file unchanged to keep the updates",
                pdb.path,
            )
        )
    return issues


def _describe(model: ModelConfig, storage: StorageTable) -> str:
    if not storage.fused:
        return f"table '{storage.name}' of model '{model.model}'"
    members = ", ".join(f"'{model.table_name(t)}'" for t in storage.table_ids)
    return f"fused table '{storage.name}' (tables {members}) of model '{model.model}'"


def log_warnings(checked: Preflight) -> None:
    """Log each warning of a preflight (start-up shows what validate-config would)."""
    for issue in checked.result.warnings:
        log.warning("config %s: %s", checked.result.source, issue.one_line())
