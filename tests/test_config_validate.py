"""validate-config: the invalid corpus, the valid HPS examples, warnings, --strict, exit codes."""

from __future__ import annotations

import json
from dataclasses import fields

import pytest
from helpers.paths import EXAMPLES, REPO
from hps_cli.runtime.config import (
    ModelConfig,
    PersistentDbConfig,
    UpdateSourceConfig,
    VolatileDbConfig,
    load_config,
    validate_config_file,
    validate_document,
)
from hps_cli.runtime.errors import ConfigError
from hps_cli.runtime.preflight import preflight
from hps_cli.runtime.resources import load_schema

CORPUS = REPO / "tests" / "configs"
INVALID = CORPUS / "invalid"
EXPECTED = json.loads((INVALID / "expected.json").read_text())


def test_corpus_is_large_enough():
    assert len(EXPECTED) >= 25
    assert {p.stem for p in INVALID.glob("*.json")} - {"expected"} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_invalid_config_reports_its_json_path(name):
    expected = EXPECTED[name]
    result = preflight(INVALID / f"{name}.json").result  # what validate-config and serve run
    assert not result.ok
    found = [(i.json_path, i.rule) for i in result.errors]
    assert (expected["json_path"], expected["rule"]) in found, found


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_invalid_config_exits_3_with_the_path_on_stderr(name, hps):
    res = hps("validate-config", str(INVALID / f"{name}.json"))
    assert res.returncode == 3, res.stderr
    assert EXPECTED[name]["json_path"] in res.stderr
    assert "invalid" in res.stdout


def test_syntax_errors_carry_line_and_column():
    result = validate_config_file(INVALID / "syntax_comment.json")
    issue = result.errors[0]
    assert issue.location.endswith(":13:29")
    assert "comments" in issue.hint


@pytest.mark.parametrize("path", sorted((CORPUS / "valid").glob("*.json")), ids=lambda p: p.stem)
def test_hps_reference_examples_are_valid(path):
    # They point at tables on other machines, so only the files check is skipped.
    result = validate_config_file(path, check_files=False)
    assert result.ok, [i.one_line() for i in result.errors]


@pytest.mark.parametrize(
    "path", sorted((EXAMPLES / "configs").glob("*.json")), ids=lambda p: p.stem
)
def test_examples_validate_with_file_checks_and_strict(path):
    result = validate_config_file(path, strict=True)
    assert result.ok, [i.one_line() for i in result.issues]
    assert not result.warnings


def _doc(**model_overrides):
    model = {
        "model": "m",
        "sparse_files": ["a"],
        "deployed_device_list": [0],
        "default_value_for_each_table": [0.0],
        "embedding_vecsize_per_table": [4],
        "maxnum_catfeature_query_per_table_per_sample": [1],
        "hit_rate_threshold": 1.0,
    }
    model.update(model_overrides)
    return {"supportlonglong": True, "models": [model]}


@pytest.mark.parametrize(
    "mutate, path, rule",
    [
        (lambda d: d["models"][0].update(gpucahce=True), "$.models[0].gpucahce", "unknown_key"),
        (
            lambda d: d.update(volatile_db={"type": "parallel_hash_map", "max_get_batch_size": 5}),
            "$.volatile_db.max_get_batch_size",
            "unknown_key",
        ),
        (
            lambda d: d["models"][0].update(embedding_cache_type="dynamc"),
            "$.models[0].embedding_cache_type",
            "unknown_enum",
        ),
        (
            lambda d: d.update(volatile_db={"type": "redis_clustr"}),
            "$.volatile_db.type",
            "unknown_enum",
        ),
        (
            lambda d: d["models"][0].update(hit_rate_threshold=0.5),
            "$.models[0].hit_rate_threshold",
            "non_exact",
        ),
        (
            lambda d: d["models"][0].pop("hit_rate_threshold"),
            "$.models[0].hit_rate_threshold",
            "non_exact",
        ),
        (lambda d: d.update(volatile_db={"num_partitions": 4}), "$.volatile_db", "disabled_tier"),
        (
            lambda d: d["models"][0].update(
                sparse_files=["a", "b"],
                embedding_vecsize_per_table=[4, 4],
                maxnum_catfeature_query_per_table_per_sample=[1, 1],
            ),
            "$.models[0].default_value_for_each_table",
            "array_lengths",
        ),
        (
            lambda d: d["models"][0].update(embedding_cache_type="stochastic"),
            "$.models[0].embedding_cache_type",
            "unsupported",
        ),
        (
            lambda d: d["models"][0].update(hit_rate_threshold=1.5),
            "$.models[0].hit_rate_threshold",
            "hps_quirk",
        ),
    ],
)
def test_warnings_and_strict(mutate, path, rule):
    doc = _doc()
    mutate(doc)
    result = validate_document(doc, check_files=False)
    assert result.ok, [i.one_line() for i in result.errors]
    assert (path, rule) in [(i.json_path, i.rule) for i in result.warnings]
    strict = validate_document(doc, check_files=False, strict=True)
    assert not strict.ok and (path, rule) in [(i.json_path, i.rule) for i in strict.errors]


@pytest.mark.parametrize("threads, warned", [(2, True), (4, True), (5, False), (64, False)])
def test_redis_without_num_partitions_warns_where_hps_default_is_too_small(
    monkeypatch, threads, warned
):
    """HPS's default partition count is min(16, hardware threads): below num_node_connections
    (5 by default) HPS's Redis backend refuses the config on that host."""
    import os

    monkeypatch.setattr(os, "cpu_count", lambda: threads)
    doc = _doc()
    doc["volatile_db"] = {"type": "redis_cluster", "address": "127.0.0.1:7000"}
    result = validate_document(doc, check_files=False)
    found = [i for i in result.warnings if (i.json_path, i.rule) == ("$.volatile_db", "redis")]
    assert bool(found) == warned
    if warned:
        assert f"= {threads}" in found[0].message and "num_node_connections (5)" in found[0].message
    doc["volatile_db"]["num_partitions"] = 8  # set explicitly: nothing to warn about
    assert not [i for i in validate_document(doc, check_files=False).issues if i.rule == "redis"]


def test_unknown_key_suggests_the_right_one():
    doc = _doc(gpucahce=True)
    issue = validate_document(doc, check_files=False).warnings[0]
    assert issue.hint == "did you mean 'gpucache'?"


def test_strict_flag_on_the_cli(tmp_path, hps):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps(_doc(gpucahce=True)))
    assert hps("validate-config", "--no-check-files", str(cfg)).returncode == 0
    res = hps("validate-config", "--no-check-files", "--strict", str(cfg))
    assert res.returncode == 3 and "$.models[0].gpucahce" in res.stderr


def test_cli_json_and_usage_codes(hps):
    res = hps(
        "validate-config",
        "--json",
        str(INVALID / "vecsize_zero.json"),
        str(EXAMPLES / "configs" / "minimal.json"),
    )
    assert res.returncode == 3
    doc = json.loads(res.stdout)
    assert doc["valid"] is False and [c["valid"] for c in doc["configs"]] == [False, True]
    assert hps("validate-config").returncode == 2
    assert hps("validate-config", "--bogus").returncode == 2
    missing = hps("validate-config", "/no/such/file.json")
    assert missing.returncode == 3 and "/no/such/file.json" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) <= 2  # one line plus a hint, no traceback


def test_print_schema(hps):
    res = hps("validate-config", "--print-schema")
    assert res.returncode == 0 and json.loads(res.stdout)["title"].startswith("HPS")


# --- the typed config ------------------------------------------------------------------------


def _schema_defaults(defname: str) -> dict:
    props = load_schema("ps_config.schema.json")["$defs"][defname]["properties"]
    return {k: v["default"] for k, v in props.items() if "default" in v}


@pytest.mark.parametrize(
    "cls, defname",
    [
        (ModelConfig, "model"),
        (VolatileDbConfig, "volatile_db"),
        (PersistentDbConfig, "persistent_db"),
        (UpdateSourceConfig, "update_source"),
    ],
)
def test_dataclass_defaults_equal_schema_defaults(cls, defname):
    defaults = _schema_defaults(defname)
    by_name = {f.name: f for f in fields(cls)}
    assert defaults, defname
    for key, value in defaults.items():
        assert key in by_name, f"{cls.__name__} lacks {key}"
        got = by_name[key].default
        expected = tuple(value) if isinstance(value, list) else value
        assert got == expected, f"{cls.__name__}.{key}: {got!r} != schema {expected!r}"
    # and every JSON key of the schema is a field (nothing silently dropped)
    schema_keys = set(load_schema("ps_config.schema.json")["$defs"][defname]["properties"])
    assert schema_keys <= set(by_name)


def test_hps_defaults_and_aliases_are_applied(tmp_path):
    doc = _doc(embedding_cache_type="uvm")
    doc["volatile_db"] = {"type": "redis", "overflow_policy": "oldest"}
    doc["persistent_db"] = {"type": "rocksdb"}
    cfg = load_config(doc, base_dir=tmp_path)
    model = cfg.models[0]
    assert (
        cfg.volatile_db.type == "redis_cluster"
        and cfg.volatile_db.overflow_policy == "evict_oldest"
    )
    assert cfg.persistent_db.type == "rocks_db" and cfg.persistent_db.path == "/tmp/rocksdb"
    assert model.embedding_table_names == ("sparse_embedding0",)
    assert model.max_batch_size == 64 and model.gpucacheper == 0.2
    assert model.tag(0) == "hps_et.m.sparse_embedding0"
    assert model.table_path(0) == tmp_path.resolve() / "a"
    assert model.cache_type == "uvm"


def test_volatile_block_absent_vs_present_without_type():
    absent = load_config(_doc())
    assert absent.volatile_db.type == "parallel_hash_map"
    present = load_config({**_doc(), "volatile_db": {"num_partitions": 3}})
    assert present.volatile_db.type == "disabled"
    static = load_config(_doc(use_static_table=True))
    assert static.models[0].cache_type == "static"


def test_load_config_raises_with_first_path():
    with pytest.raises(ConfigError) as err:
        load_config(INVALID / "vecsize_zero.json")
    assert "$.models[0].embedding_vecsize_per_table[1]" in str(err.value)
    assert err.value.issues


def test_generated_docs_match_the_schema():
    from hps_cli.runtime.config.docs import render_markdown

    committed = (REPO / "docs" / "config.md").read_text(encoding="utf-8")
    assert committed == render_markdown(), (
        "docs/config.md is stale: run python -m hps_cli.runtime.config.docs docs/config.md"
    )


def test_schema_is_valid_draft_2020_12():
    from jsonschema import Draft202012Validator

    Draft202012Validator.check_schema(load_schema("ps_config.schema.json"))


def test_every_schema_property_has_a_description():
    schema = load_schema("ps_config.schema.json")
    nodes = [schema] + list(schema["$defs"].values())
    for node in nodes:
        for name, prop in node["properties"].items():
            if "$ref" not in prop:
                assert prop.get("description"), name
                assert "type" in prop, name


def test_whole_numbers_written_as_floats_are_ints_in_the_typed_config():
    doc = _doc(max_batch_size=1e3, embedding_vecsize_per_table=[4.0])
    doc["volatile_db"] = {"type": "parallel_hash_map", "num_partitions": 8.0}
    config = load_config(doc)
    model = config.models[0]
    assert model.max_batch_size == 1000 and type(model.max_batch_size) is int
    assert model.embedding_vecsize_per_table == (4,)
    assert type(config.volatile_db.num_partitions) is int


@pytest.mark.parametrize(
    "address, ok",
    [
        ("127.0.0.1:7000", True),
        ("a:7000, b:7001,[::1]:7002", True),
        ("redis-0", True),  # HPS's default port 7000
        ("localhost:notaport", False),
        ("", False),
        (" , ", False),
        ("127.0.0.1:99999", False),
        (":7000", False),
    ],
)
def test_redis_addresses(address, ok):
    doc = _doc()
    doc["volatile_db"] = {"type": "redis_cluster", "address": address, "num_partitions": 8}
    found = [i for i in validate_document(doc, check_files=False).errors if i.rule == "address"]
    assert bool(found) is not ok, found
    if found:
        assert found[0].json_path == "$.volatile_db.address" and found[0].hint
