"""Building the typed config (model.py) from a validated document, applying HPS's defaults."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from .aliases import (
    CACHE_TYPES,
    OVERFLOW_POLICIES,
    PERSISTENT_TYPES,
    UPDATE_SOURCE_TYPES,
    VOLATILE_TYPES,
    canonical,
)
from .model import ModelConfig, PersistentDbConfig, PsConfig, UpdateSourceConfig, VolatileDbConfig


def _known(cls, doc: dict) -> dict:
    """The document's keys that are fields of ``cls``: lists as tuples, and whole numbers
    written as floats (``1e3``, ``8.0``: JSON Schema's integers, and HPS's parser takes them)
    as ints where the field holds ints."""
    types = {f.name: str(f.type) for f in fields(cls)}
    out = {}
    for key, value in doc.items():
        if key not in types:
            continue
        whole = types[key] in ("int", "tuple[int, ...]")
        if isinstance(value, list):
            value = tuple(_whole(v) if whole else v for v in value)
        elif whole:
            value = _whole(value)
        out[key] = value
    return out


def _whole(value: object) -> object:
    return int(value) if isinstance(value, float) and value.is_integer() else value


def build_config(doc: dict, base_dir: Path | str | None = None, source_path: str = "") -> PsConfig:
    """The typed config of a schema-valid document.

    Args:
        doc: the parsed JSON (already validated: types are trusted).
        base_dir: the folder relative ``sparse_files`` resolve against (the config's folder).
        source_path: the config file, kept for messages.
    """
    base = str(Path(base_dir).resolve()) if base_dir is not None else ""
    return PsConfig(
        supportlonglong=doc["supportlonglong"],
        fuse_embedding_table=doc.get("fuse_embedding_table", False),
        volatile_db=_volatile(doc),
        persistent_db=_persistent(doc.get("persistent_db")),
        update_source=_update_source(doc.get("update_source")),
        models=tuple(
            _model(m, base, doc.get("fuse_embedding_table", False)) for m in doc["models"]
        ),
        source_path=source_path,
    )


def _volatile(doc: dict) -> VolatileDbConfig:
    if "volatile_db" not in doc:
        return VolatileDbConfig()  # HPS creates a parallel_hash_map with defaults
    block = dict(doc["volatile_db"])
    # A present block without 'type' disables the tier; unknown spellings fall back to it too.
    block["type"] = canonical(VOLATILE_TYPES, block.get("type"), "disabled")
    block["overflow_policy"] = canonical(
        OVERFLOW_POLICIES, block.get("overflow_policy"), "evict_random"
    )
    return VolatileDbConfig(**_known(VolatileDbConfig, block))


def _persistent(block: dict | None) -> PersistentDbConfig:
    if block is None:
        return PersistentDbConfig()
    block = dict(block)
    block["type"] = canonical(PERSISTENT_TYPES, block.get("type"), "disabled")
    return PersistentDbConfig(**_known(PersistentDbConfig, block))


def _update_source(block: dict | None) -> UpdateSourceConfig:
    if block is None:
        return UpdateSourceConfig()
    block = dict(block)
    block["type"] = canonical(UPDATE_SOURCE_TYPES, block.get("type"), "null")
    return UpdateSourceConfig(**_known(UpdateSourceConfig, block))


def _model(block: dict, base_dir: str, fuse_globally: bool) -> ModelConfig:
    block = dict(block)
    tables = len(block["sparse_files"])
    block.setdefault("embedding_table_names", [f"sparse_embedding{i}" for i in range(tables)])
    block["embedding_cache_type"] = canonical(
        CACHE_TYPES, block.get("embedding_cache_type"), "dynamic"
    )
    # HPS: the per-model flag only matters when fusion is on globally (then it defaults to true).
    block["fuse_embedding_table"] = bool(fuse_globally and block.get("fuse_embedding_table", True))
    if block["fuse_embedding_table"]:
        # HPS: a fused model gets at least one worker buffer per (original) table
        block["num_of_worker_buffer_in_pool"] = max(
            block.get("num_of_worker_buffer_in_pool", 1), tables
        )
    block["default_value_for_each_table"] = [
        float(v) for v in block["default_value_for_each_table"]
    ]
    block["base_dir"] = base_dir
    return ModelConfig(**_known(ModelConfig, block))
