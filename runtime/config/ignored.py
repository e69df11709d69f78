"""What hps does with every field of ps.json, and the warnings for the fields it ignores.

``FIELDS`` maps every field of schemas/ps_config.schema.json (``$.models[].gpucache``, ...) to
its ``Field``: **honoured** (the note says where it takes effect), **refused** (start-up stops
with an error; the note says where) or **ignored** (the note says why). A test walks the schema
and fails on a field missing here, and sets every ignored field to check its warning.

Some honoured fields have no effect in some setups (Redis fields without a Redis tier, cache
fields without a cache, ...): ``SCOPES`` says when, and they are reported then too.

``ignored_issues(doc)`` gives a warning (rule ``ignored_field``) with its JSON path and why for
every field the document sets that has no effect: an ignored field set to a value other than
HPS's default (``use_context_stream`` and ``use_hctr_cache_implementation`` whenever they are
present: hps has neither HPS behaviour), or a scoped field set in a setup where it does nothing.
validate-config reports them (semantic.py calls this) and start-up logs them (preflight.py,
the checks both run). docs/config.md shows this table (docs.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Callable, Iterator

from ..resources import load_schema
from .aliases import CACHE_TYPES, PERSISTENT_TYPES, VOLATILE_TYPES
from .issues import WARNING, ConfigIssue, json_path

HONOURED, IGNORED, REFUSED = "honoured", "ignored", "refused"
RULE = "ignored_field"


@dataclass(frozen=True)
class Field:
    """What hps does with one field: ``status`` and a note (where / why).

    ``always``: an ignored field reported whenever it is present, even at HPS's default (its
    default names an HPS behaviour that hps does not have either)."""

    status: str
    note: str
    always: bool = False


def _h(note: str) -> Field:
    return Field(HONOURED, note)


def _i(note: str, always: bool = False) -> Field:
    return Field(IGNORED, note, always)


def _r(note: str) -> Field:
    return Field(REFUSED, note)


_REDIS = "the Redis Cluster connection (runtime/volatile/redis_cluster.py)"
_KAFKA = "Kafka consumer setting; hps has no Kafka consumer (update_source.type is refused)"
_OLD_BACKEND = "only the old HugeCTR Triton backend read it; neither HPS nor hps does"

FIELDS: dict[str, Field] = {
    # ---------------------------------------------------------------- top level
    "$.$schema": _h("editors (a pointer to the schema); validate-config checks the bundled one"),
    "$.supportlonglong": _h("key type of lookups (int64 or uint32) and of RocksDB and Redis keys"),
    "$.fuse_embedding_table": _h(
        "table fusion (runtime/config/fusion.py): a model's tables of one dim share one storage "
        "table, cache and query"
    ),
    "$.volatile_db": _h("the volatile tier, loaded at start-up (runtime/startup_load.py)"),
    "$.persistent_db": _h("the persistent tier, loaded at start-up (runtime/startup_load.py)"),
    "$.update_source": _h("online updates: only type null is accepted"),
    "$.models": _h("the models served"),
    # ---------------------------------------------------------------- models[]
    "$.models[].model": _h("model name in lookups and in storage tags hps_et.<model>.<table>"),
    "$.models[].sparse_files": _h("the table folders loaded at start-up"),
    "$.models[].dense_file": _i(
        "HPS's lookup does not read it either; hps serves dense models from inference packages "
        "(hps build-graph, hps serve --repository)"
    ),
    "$.models[].network_file": _i(_OLD_BACKEND),
    "$.models[].num_of_worker_buffer_in_pool": _h(
        "worker buffers per model and device (runtime/worker_pool.py); hps serve runs at most "
        "this many lookups of a cached model at once on each device"
    ),
    "$.models[].num_of_refresher_buffer_in_pool": _h(
        "refresh steps run at once per model and device (runtime/gpu/refresh.py)"
    ),
    "$.models[].deployed_device_list": _h(
        "one embedding cache per device; hps serve spreads a model's batches over the devices, "
        "the TensorFlow layers look up on their replica's"
    ),
    "$.models[].max_batch_size": _h(
        "hps serve's samples per batch; the TensorFlow layers' key capacity"
    ),
    "$.models[].default_value_for_each_table": _h("the vector of keys no tier holds"),
    "$.models[].maxnum_des_feature_per_sample": _i(_OLD_BACKEND),
    "$.models[].maxnum_catfeature_query_per_table_per_sample": _h(
        "hps serve's samples per request; the TensorFlow layers' key capacity"
    ),
    "$.models[].embedding_vecsize_per_table": _h("vector size of each table (checked on disk)"),
    "$.models[].embedding_table_names": _h("table names in lookups and storage tags"),
    "$.models[].refresh_delay": _h("seconds before the first cache refresh (gpu/refresh.py)"),
    "$.models[].refresh_interval": _h("seconds between cache refreshes (gpu/refresh.py)"),
    "$.models[].hit_rate_threshold": _h(
        "synchronous or background insertion of misses (gpu/embedding_cache.py); above 1 it "
        "acts as 1.0 (a warning)"
    ),
    "$.models[].gpucache": _h("whether the model's tables get embedding caches"),
    "$.models[].gpucacheper": _h("dynamic cache slots; the uvm cache's share in device memory"),
    "$.models[].cache_refresh_percentage_per_iteration": _h(
        "share of each cache's sets per refresh step (gpu/refresh.py); 0: no refresh, as HPS"
    ),
    "$.models[].use_static_table": _h("true forces a static cache"),
    "$.models[].embedding_cache_type": _h("the cache kind (gpu/cache_factory.py)"),
    "$.models[].use_context_stream": _i(
        "hps's lookups take and return host arrays; the TensorFlow layers call them from the "
        "host, so there is no framework CUDA stream to run on",
        always=True,
    ),
    "$.models[].use_hctr_cache_implementation": _i(
        "hps has one dynamic cache (8-way sets, LFU with dynamic aging: docs/gpu.md), neither "
        "of HugeCTR's two",
        always=True,
    ),
    "$.models[].thread_pool_size": _h("the model's background insertion threads"),
    "$.models[].init_ec": _h("start-up prefill of dynamic caches (to their capacity)"),
    "$.models[].enable_pagelock": _h("a static cache's rows in pinned host memory"),
    "$.models[].fp8_quant": _r("true is refused when the caches are built: they store float32"),
    "$.models[].fuse_embedding_table": _h("the model's opt-out of table fusion"),
    "$.models[].label_dim": _i(_OLD_BACKEND),
    "$.models[].slot_num": _i(_OLD_BACKEND),
    # ---------------------------------------------------------------- volatile_db
    "$.volatile_db.type": _h(
        "hash_map / parallel_hash_map (in process), multi_process_hash_map (one shared-memory "
        "copy for the processes of a host, runtime/volatile/shm_table.py) or redis_cluster"
    ),
    "$.volatile_db.address": _h(_REDIS + "; each entry must be host:port (checked)"),
    "$.volatile_db.user_name": _h(_REDIS),
    "$.volatile_db.password": _h(_REDIS),
    "$.volatile_db.num_partitions": _h("partitions of every table (hash map and Redis)"),
    "$.volatile_db.allocation_rate": _i(
        "the in-process hash map keeps a table's rows in one array that grows as needed "
        "(about 1.06x the raw bytes), and the shared-memory map reserves each table's region "
        "whole at start-up, not in pages of this size"
    ),
    "$.volatile_db.shared_memory_size": _h(
        "the size of the shared-memory segment (runtime/volatile/shm_segment.py); one too "
        "small for the config's tables is refused (runtime/preflight.py)"
    ),
    "$.volatile_db.shared_memory_name": _h(
        "the segment's name in /dev/shm (runtime/volatile/shm_segment.py)"
    ),
    "$.volatile_db.shared_memory_auto_remove": _h(
        "the last process to close removes the segment (runtime/volatile/shm_segment.py)"
    ),
    "$.volatile_db.num_node_connections": _h(_REDIS),
    "$.volatile_db.max_batch_size": _h("keys per Redis pipeline batch"),
    "$.volatile_db.enable_tls": _h(_REDIS),
    "$.volatile_db.tls_ca_certificate": _h(_REDIS),
    "$.volatile_db.tls_client_certificate": _h(_REDIS),
    "$.volatile_db.tls_client_key": _h(_REDIS),
    "$.volatile_db.tls_server_name_identification": _i(
        "redis-py sends each node's host name for TLS SNI, never this value"
    ),
    "$.volatile_db.overflow_margin": _h("most entries per partition (hash map and Redis)"),
    "$.volatile_db.overflow_policy": _h("which entries an overflowing partition evicts"),
    "$.volatile_db.overflow_resolution_target": _h("how far an overflowing partition shrinks"),
    "$.volatile_db.initial_cache_rate": _h("share of each table loaded at start-up"),
    "$.volatile_db.cache_missed_embeddings": _h("write-back of persistent hits (cpu_tiers.py)"),
    "$.volatile_db.update_filters": _i(_KAFKA),
    "$.volatile_db.initialize_after_startup": _i(
        "HPS v24.06 does not read it and always loads the tier at start-up; so does hps"
    ),
    # ---------------------------------------------------------------- persistent_db
    "$.persistent_db.type": _h("rocks_db or disabled"),
    "$.persistent_db.path": _h(
        "the RocksDB folder (preflight looks at it read-only: each table's family, its record)"
    ),
    "$.persistent_db.num_threads": _h("RocksDB background threads"),
    "$.persistent_db.read_only": _h(
        "open RocksDB read-only (reopened when another process changes it); updates refused"
    ),
    "$.persistent_db.max_batch_size": _h("keys per RocksDB write batch and multi-get"),
    "$.persistent_db.update_filters": _i(_KAFKA),
    "$.persistent_db.initialize_after_startup": _i(
        "HPS v24.06 does not read it and always loads the tier at start-up; so does hps"
    ),
    # ---------------------------------------------------------------- update_source
    "$.update_source.type": _r(
        "anything but null is refused by start-up and validate-config (runtime/preflight.py): "
        "apply updates with HPS.insert / HPS.remove or hps serve's admin API"
    ),
    "$.update_source.brokers": _i(_KAFKA),
    "$.update_source.metadata_refresh_interval_ms": _i(_KAFKA),
    "$.update_source.receive_buffer_size": _i(_KAFKA),
    "$.update_source.poll_timeout_ms": _i(_KAFKA),
    "$.update_source.max_batch_size": _i(_KAFKA),
    "$.update_source.failure_backoff_ms": _i(_KAFKA),
    "$.update_source.max_commit_interval": _i(_KAFKA),
}


# ------------------------------------------------------------------------------- scopes

Applies = Callable[[dict, dict], bool]  # (the field's block, the document) -> no effect there


@dataclass(frozen=True)
class Scope:
    """Honoured fields that have no effect where ``applies`` says so; ``when`` says where, for
    the user. ``example(doc, block)`` makes a document such a setup (for the tests)."""

    fields: tuple[str, ...]
    when: str
    applies: Applies
    example: Callable[[dict, dict], None]


def _volatile_type(doc: dict) -> str:
    if "volatile_db" not in doc:
        return "parallel_hash_map"
    block = doc["volatile_db"]
    kind = block.get("type") if isinstance(block, dict) else None
    return VOLATILE_TYPES.get(kind, "disabled") if isinstance(kind, str) else "disabled"


def _persistent_type(doc: dict) -> str:
    block = doc.get("persistent_db")
    kind = block.get("type", "disabled") if isinstance(block, dict) else "disabled"
    return PERSISTENT_TYPES.get(kind, "disabled") if isinstance(kind, str) else "disabled"


def _cache_type(model: dict) -> str:
    if model.get("use_static_table") is True:
        return "static"
    kind = model.get("embedding_cache_type", "dynamic")
    return CACHE_TYPES.get(kind, "dynamic") if isinstance(kind, str) else "dynamic"


def _number(block: dict, key: str, default: float) -> float:
    value = block.get(key, default)
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else default


def _set(key: str, value):
    def change(doc: dict, block: dict) -> None:
        block[key] = value

    return change


def _set_doc(key: str, value):
    def change(doc: dict, block: dict) -> None:
        if value is None:
            doc.pop(key, None)
        else:
            doc[key] = value

    return change


_VDB = "$.volatile_db."
_PDB = "$.persistent_db."
_MODEL = "$.models[]."
_CACHE_FIELDS = (
    "gpucacheper",
    "hit_rate_threshold",
    "cache_refresh_percentage_per_iteration",
    "refresh_delay",
    "refresh_interval",
    "embedding_cache_type",
    "use_static_table",
    "init_ec",
    "enable_pagelock",
    "fp8_quant",
    "thread_pool_size",
    "num_of_refresher_buffer_in_pool",
    "num_of_worker_buffer_in_pool",
)
_DYNAMIC_FIELDS = (
    "hit_rate_threshold",
    "cache_refresh_percentage_per_iteration",
    "refresh_delay",
    "refresh_interval",
    "init_ec",
    "thread_pool_size",
    "num_of_refresher_buffer_in_pool",
)

SCOPES: tuple[Scope, ...] = (
    Scope(
        tuple(
            _VDB + k
            for k in (
                "num_partitions",
                "overflow_margin",
                "overflow_policy",
                "overflow_resolution_target",
                "initial_cache_rate",
                "cache_missed_embeddings",
            )
        ),
        "the volatile tier is disabled (type disabled, or a volatile_db block without type)",
        lambda block, doc: _volatile_type(doc) == "disabled",
        _set("type", "disabled"),
    ),
    Scope(
        tuple(
            _VDB + k
            for k in (
                "address",
                "user_name",
                "password",
                "num_node_connections",
                "enable_tls",
                "tls_ca_certificate",
                "tls_client_certificate",
                "tls_client_key",
            )
        ),
        "volatile_db.type is not redis_cluster",
        lambda block, doc: _volatile_type(doc) != "redis_cluster",
        _set("type", "parallel_hash_map"),
    ),
    Scope(
        tuple(_VDB + k for k in ("tls_ca_certificate", "tls_client_certificate", "tls_client_key")),
        "enable_tls is not true",
        lambda block, doc: block.get("enable_tls") is not True,
        _set("type", "redis_cluster"),
    ),
    Scope(
        (_VDB + "max_batch_size",),
        "volatile_db.type is a hash map (it handles each call in one vectorized pass: this is the "
        "Redis tier's batch size)",
        lambda block, doc: _volatile_type(doc) in ("hash_map", "parallel_hash_map"),
        _set("type", "parallel_hash_map"),
    ),
    Scope(
        tuple(
            _VDB + k
            for k in ("shared_memory_size", "shared_memory_name", "shared_memory_auto_remove")
        ),
        "volatile_db.type is not multi_process_hash_map",
        lambda block, doc: _volatile_type(doc) != "multi_process_hash_map",
        _set("type", "parallel_hash_map"),
    ),
    Scope(
        (_VDB + "cache_missed_embeddings",),
        "there is no persistent tier (no hits to write back)",
        lambda block, doc: _persistent_type(doc) == "disabled",
        _set_doc("persistent_db", None),
    ),
    Scope(
        tuple(_PDB + k for k in ("path", "num_threads", "read_only", "max_batch_size")),
        "persistent_db.type is disabled",
        lambda block, doc: _persistent_type(doc) == "disabled",
        _set("type", "disabled"),
    ),
    Scope(
        tuple(_MODEL + k for k in _CACHE_FIELDS),
        "gpucache is false (no embedding cache)",
        lambda block, doc: block.get("gpucache", True) is False,
        _set("gpucache", False),
    ),
    Scope(
        tuple(_MODEL + k for k in _DYNAMIC_FIELDS),
        "the cache is static or uvm (it holds the whole table: nothing to insert, refresh or "
        "prefill)",
        lambda block, doc: _cache_type(block) in ("static", "uvm"),
        _set("embedding_cache_type", "static"),
    ),
    Scope(
        (_MODEL + "gpucacheper",),
        "the cache is static (it holds the whole table)",
        lambda block, doc: _cache_type(block) == "static",
        _set("embedding_cache_type", "static"),
    ),
    Scope(
        (_MODEL + "enable_pagelock",),
        "the cache is not static",
        lambda block, doc: _cache_type(block) != "static",
        _set("embedding_cache_type", "dynamic"),
    ),
    Scope(
        tuple(
            _MODEL + k
            for k in (
                "refresh_delay",
                "cache_refresh_percentage_per_iteration",
                "num_of_refresher_buffer_in_pool",
            )
        ),
        "refresh_interval is 0 (no periodic refresh; hps prefills at start-up whenever init_ec "
        "is true, whatever cache_refresh_percentage_per_iteration says)",
        lambda block, doc: _number(block, "refresh_interval", 0) <= 0,
        _set("refresh_interval", 0),
    ),
    Scope(
        tuple(_MODEL + k for k in ("refresh_interval", "refresh_delay")),
        "cache_refresh_percentage_per_iteration is 0 (as in HPS, a refresh then refreshes nothing)",
        lambda block, doc: _number(block, "cache_refresh_percentage_per_iteration", 0.0) <= 0,
        _set("cache_refresh_percentage_per_iteration", 0.0),
    ),
    Scope(
        (_MODEL + "num_of_refresher_buffer_in_pool",),
        "cache_refresh_percentage_per_iteration is 0 (as in HPS, a refresh then refreshes nothing)",
        lambda block, doc: _number(block, "cache_refresh_percentage_per_iteration", 0.0) <= 0,
        _set("cache_refresh_percentage_per_iteration", 0.0),
    ),
    Scope(
        (_MODEL + "fuse_embedding_table",),
        "the top-level fuse_embedding_table is not true (HPS then fuses no model)",
        lambda block, doc: doc.get("fuse_embedding_table") is not True,
        _set_doc("fuse_embedding_table", False),
    ),
)


# ------------------------------------------------------------------------------- the check


def ignored_issues(doc: dict) -> list[ConfigIssue]:
    """A warning for every field ``doc`` sets that has no effect in hps (see the module doc).
    Tolerates wrongly typed values (the schema check reports those)."""
    issues: list[ConfigIssue] = []
    defaults = schema_defaults()
    for section, where, block in _blocks(doc):
        for key, value in block.items():
            path = f"{section}.{key}"
            field = FIELDS.get(path)
            if field is None:
                continue  # an unknown key: the schema check reports it
            reason = _reason(path, field, value, defaults.get(path, _NO_DEFAULT), block, doc)
            if reason is not None:
                issues.append(
                    ConfigIssue(
                        WARNING,
                        json_path(*where, key),
                        f"has no effect{reason}",
                        RULE,
                        "remove it" if field.status == IGNORED else None,
                    )
                )
    return issues


_NO_DEFAULT = object()


def _reason(path: str, field: Field, value, default, block: dict, doc: dict) -> str | None:
    at_default = default is not _NO_DEFAULT and value == default
    if field.status == IGNORED:
        return f": {field.note}" if field.always or not at_default else None
    if at_default:
        return None
    for scope in SCOPES:
        if path in scope.fields and scope.applies(block, doc):
            return f" when {scope.when}"
    return None


def _blocks(doc: dict) -> Iterator[tuple[str, tuple, dict]]:
    """(schema section, JSON path parts, block) of every object of the document."""
    yield "$", (), doc
    for name in ("volatile_db", "persistent_db", "update_source"):
        if isinstance(doc.get(name), dict):
            yield f"$.{name}", (name,), doc[name]
    models = doc.get("models")
    if isinstance(models, list):
        for i, model in enumerate(models):
            if isinstance(model, dict):
                yield "$.models[]", ("models", i), model


@cache
def schema_defaults() -> dict[str, object]:
    """Field path → HPS's default, from the schema."""
    schema = load_schema("ps_config.schema.json")
    out: dict[str, object] = {}
    for section, node in schema_sections(schema):
        for key, prop in node.get("properties", {}).items():
            if "default" in prop:
                out[f"{section}.{key}"] = prop["default"]
    return out


def schema_sections(schema: dict) -> list[tuple[str, dict]]:
    """(section path, schema object) of the top level and of each block of the config."""
    defs = schema["$defs"]
    return [
        ("$", schema),
        ("$.models[]", defs["model"]),
        ("$.volatile_db", defs["volatile_db"]),
        ("$.persistent_db", defs["persistent_db"]),
        ("$.update_source", defs["update_source"]),
    ]


def field_note(path: str) -> str:
    """The docs' line for a field: its status, where or why, and when it has no effect."""
    field = FIELDS[path]
    text = {HONOURED: "", IGNORED: "**ignored**: ", REFUSED: "**refused**: "}[field.status]
    text += field.note + "."
    scopes = [s.when for s in SCOPES if path in s.fields]
    if scopes:
        text += " No effect when " + "; when ".join(scopes) + "."
    return text
