"""Every field of ps.json is honoured, refused or reported as ignored (runtime/config/ignored.py):
the table covers the schema, every ignored field warns with its JSON path when a config sets it,
every scoped field warns where it has no effect, honoured fields do not warn where they take
effect, and start-up and validate-config both report the warnings."""

from __future__ import annotations

import json
import logging

import pytest
from helpers.runtime_configs import make_tables, ps_config
from hps_cli.runtime import HPS
from hps_cli.runtime.config import validate_document
from hps_cli.runtime.config.ignored import (
    FIELDS,
    HONOURED,
    IGNORED,
    REFUSED,
    RULE,
    SCOPES,
    schema_sections,
)
from hps_cli.runtime.config.issues import json_path
from hps_cli.runtime.resources import load_schema

SCHEMA = load_schema("ps_config.schema.json")
SCHEMA_FIELDS = {
    f"{section}.{key}": prop
    for section, node in schema_sections(SCHEMA)
    for key, prop in node["properties"].items()
}
_WHERE = {
    "$": (),
    "$.volatile_db": ("volatile_db",),
    "$.persistent_db": ("persistent_db",),
    "$.update_source": ("update_source",),
    "$.models[]": ("models", 0),
}


def test_the_table_covers_every_schema_field_and_nothing_else():
    assert set(FIELDS) == set(SCHEMA_FIELDS)
    for path, field in FIELDS.items():
        assert field.status in (HONOURED, IGNORED, REFUSED) and field.note, path
    for scope in SCOPES:
        assert set(scope.fields) <= set(FIELDS), scope.when
        # scopes narrow honoured fields; an ignored field warns everywhere anyway
        assert all(FIELDS[p].status != IGNORED for p in scope.fields), scope.when


def _doc() -> dict:
    """A valid document with every block: hash map + RocksDB, one dynamic-cached model."""
    return {
        "supportlonglong": True,
        "volatile_db": {"type": "parallel_hash_map", "num_partitions": 8},
        "persistent_db": {"type": "rocks_db", "path": "/tmp/rocksdb"},
        "update_source": {"type": "null"},
        "models": [
            {
                "model": "m",
                "sparse_files": ["a"],
                "deployed_device_list": [0],
                "default_value_for_each_table": [0.0],
                "embedding_vecsize_per_table": [4],
                "maxnum_catfeature_query_per_table_per_sample": [1],
                "hit_rate_threshold": 1.0,
            }
        ],
    }


def _block(doc: dict, section: str) -> dict:
    where = _WHERE[section]
    return doc if not where else doc[where[0]] if len(where) == 1 else doc["models"][0]


def _sample(prop: dict):
    """A valid value of a field other than its default."""
    default = prop.get("default")
    if "$ref" in prop:
        return {}
    if "enum" in prop:
        return next(v for v in prop["enum"] if v != default and v not in ("disabled", "null"))
    kind = prop.get("type")
    if kind == "boolean":
        return not default
    if kind == "integer":
        if default is None:
            return prop.get("minimum", 0) + 7
        return default + 1 if default + 1 <= prop.get("maximum", default + 1) else 1000
    if kind == "number":
        return 0.5 if default != 0.5 else 0.25
    if kind == "array":
        item = prop["items"].get("type")
        return ["sample"] if item == "string" else [1]
    return "sample-value"


def _set(doc: dict, path: str):
    section, key = path.rsplit(".", 1)
    block = _block(doc, section)
    block[key] = _sample(SCHEMA_FIELDS[path])
    return json_path(*_WHERE[section], key)


def _ignored_warnings(doc: dict) -> set[str]:
    result = validate_document(doc, check_files=False)
    assert result.ok, [i.one_line() for i in result.errors]
    return {i.json_path for i in result.warnings if i.rule == RULE}


@pytest.mark.parametrize("path", sorted(p for p, f in FIELDS.items() if f.status == IGNORED))
def test_each_ignored_field_warns_with_its_path_when_set(path):
    doc = _doc()
    where = _set(doc, path)
    assert where in _ignored_warnings(doc)
    assert where not in _ignored_warnings(_doc()) or FIELDS[path].always


_SCOPED = [(i, p) for i, scope in enumerate(SCOPES) for p in scope.fields]


@pytest.mark.parametrize("scope, path", _SCOPED, ids=[f"{i}-{p}" for i, p in _SCOPED])
def test_each_scoped_field_warns_where_it_has_no_effect(scope, path):
    doc = _doc()
    section = path.rsplit(".", 1)[0]
    SCOPES[scope].example(doc, _block(doc, section))
    where = _set(doc, path)
    warnings = validate_document(doc, check_files=False).warnings
    found = [i for i in warnings if i.rule == RULE and i.json_path == where]
    assert found and "has no effect when" in found[0].message


def _setups() -> list[dict]:
    """Setups where the honoured fields take effect: a Redis tier with TLS over RocksDB, a
    fused model with a refreshed dynamic cache; a static cache in pinned memory; a
    multi_process_hash_map."""
    redis = _doc()
    redis["fuse_embedding_table"] = True
    redis["volatile_db"] = {"type": "redis_cluster", "num_partitions": 8, "enable_tls": True}
    redis["models"][0].update(refresh_interval=5, cache_refresh_percentage_per_iteration=0.2)
    static = _doc()
    static["models"][0].update(embedding_cache_type="static", enable_pagelock=True)
    shared = _doc()
    shared["volatile_db"] = {"type": "multi_process_hash_map"}
    return [redis, static, shared]


@pytest.mark.parametrize(
    "path",
    sorted(
        p
        for p, f in FIELDS.items()
        if f.status != IGNORED and "$ref" not in SCHEMA_FIELDS[p] and p != "$.models"
    ),
)
def test_honoured_fields_do_not_warn_where_they_take_effect(path):
    quiet = []
    for doc in _setups():
        where = _set(doc, path)
        quiet.append(where not in _ignored_warnings(doc))
    assert any(quiet)


def test_a_field_at_hps_default_is_not_reported_unless_its_default_is_not_ours_either():
    doc = _doc()
    doc["models"][0].update(dense_file="", label_dim=1, gpucacheper=0.2, use_context_stream=True)
    assert _ignored_warnings(doc) == {"$.models[0].use_context_stream"}


def test_validate_config_prints_the_warning_with_its_path(tmp_path, hps):
    doc = _doc()
    doc["models"][0]["use_hctr_cache_implementation"] = False
    doc["volatile_db"]["allocation_rate"] = 1 << 20
    path = tmp_path / "ps.json"
    path.write_text(json.dumps(doc))
    res = hps("validate-config", "--no-check-files", str(path))
    assert res.returncode == 0, res.stderr
    assert "$.models[0].use_hctr_cache_implementation: has no effect" in res.stderr
    assert "$.volatile_db.allocation_rate: has no effect" in res.stderr
    strict = hps("validate-config", "--no-check-files", "--strict", str(path))
    assert strict.returncode == 3


def test_start_up_logs_the_warnings(tmp_path, caplog):
    tables = make_tables(tmp_path, {"t": (50, 4)})
    doc = ps_config(tables, {"t": 4}, use_context_stream=False, slot_num=3)
    doc["volatile_db"]["update_filters"] = [".+"]
    with caplog.at_level(logging.WARNING, logger="hps_cli.runtime"):
        with HPS(doc):
            pass
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for where in (
        "$.models[0].use_context_stream",
        "$.models[0].slot_num",
        "$.volatile_db.update_filters",
    ):
        assert f"{where}: has no effect" in logged
