"""validate-config fails exactly when serve refuses: both run runtime/preflight.py.

Every config of the invalid corpus (tests/configs/invalid/), and configs built here that need
something on disk (a database path that is a file, symlink loops, a read-only database missing
a table or holding the empty family an interrupted load left, a table with NaN, fused tables
that share keys, a shared-memory segment too small for the tables), plus valid ones (table
fusion, over a read-only database too; the shared-memory map; static caches, which need no
family), goes through the real `hps validate-config` and the real `hps serve`.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from helpers.cli import run_hps
from helpers.paths import REPO
from helpers.runtime_configs import make_tables, ps_config, rocks_db
from helpers.shm import remove_segment, segment_name
from hps_cli.runtime import HPS
from hps_cli.runtime.table import write_table
from hps_cli.runtime.volatile.shm_layout import first_region

from hps_cli.devtools.serve_process import ServeProcess

pytestmark = pytest.mark.slow

INVALID = REPO / "tests" / "configs" / "invalid"
CORPUS = sorted(p.stem for p in INVALID.glob("*.json") if p.stem != "expected")


def _write(path, doc):
    path.write_text(json.dumps(doc, indent=2))
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """name → (config, extra flags, whether it is valid): configs that need files."""
    tmp = tmp_path_factory.mktemp("parity")
    tables = make_tables(tmp, {"users": (300, 8), "items": (200, 4)})
    dims = {"users": 8, "items": 4}
    cases = {}

    def case(name, doc, valid, *flags):
        cases[name] = (_write(tmp / f"{name}.json", doc), flags, valid)

    case("plain", ps_config(tables, dims), True)
    case("hit_rate_above_one", ps_config(tables, dims, hit_rate_threshold=1.5), True)
    (tmp / "a_file").write_text("not a database")
    case(
        "persistent_path_is_a_file",
        ps_config(tables, dims, persistent=rocks_db(tmp / "a_file")),
        False,
    )
    os.symlink(tmp / "db_loop", tmp / "db_loop")
    db_loop = rocks_db(tmp / "db_loop")
    case("persistent_path_is_a_symlink_loop", ps_config(tables, dims, persistent=db_loop), False)
    looped = tmp / "looped"
    looped.mkdir()
    for name in ("emb_vector", "table.json"):
        os.link(tables["users"] / name, looped / name)
    os.symlink("key", looped / "key")  # key -> key: a symbolic link loop
    case("table_file_symlink_loop", ps_config({"users": looped}, {"users": 8}), False)
    os.symlink(tmp / "loop", tmp / "loop")
    case("table_folder_symlink_loop", ps_config({"users": tmp / "loop"}, {"users": 8}), False)
    vectors = np.ones((50, 8), np.float32)
    vectors[7, 2] = np.nan
    write_table(tmp / "nan", np.arange(50), vectors, allow_non_finite=True)
    case("table_with_nan", ps_config({"users": tmp / "nan"}, {"users": 8}), False)
    case(
        "table_with_nan_allowed",
        ps_config({"users": tmp / "nan"}, {"users": 8}),
        True,
        "--allow-non-finite",
    )
    case(
        "read_only_database_missing",
        ps_config(tables, dims, persistent=rocks_db(tmp / "nodb", read_only=True)),
        False,
    )
    db = tmp / "db"
    for name in ("users", "items"):
        res = run_hps(
            "convert",
            str(tables[name]),
            str(db),
            "--to",
            "rocksdb",
            "--model",
            "m",
            "--table",
            name,
        )
        assert res.returncode == 0, res.stderr
    read_only = rocks_db(db, read_only=True)
    case("read_only_database", ps_config(tables, dims, persistent=read_only), True)
    half = tmp / "half"
    res = run_hps(
        "convert",
        str(tables["users"]),
        str(half),
        "--to",
        "rocksdb",
        "--model",
        "m",
        "--table",
        "users",
    )
    assert res.returncode == 0, res.stderr
    case(
        "read_only_database_missing_a_family",
        ps_config(tables, dims, persistent=rocks_db(half, read_only=True)),
        False,
    )
    res = run_hps(
        "convert",
        str(tables["items"]),
        str(half),
        "--to",
        "rocksdb",
        "--model",
        "m",
        "--table",
        "items",
        env={"HPS_CRASH_AT": "rocksdb.created"},  # killed with the family created, still empty
    )
    assert res.returncode == -9, res.stderr
    case(
        "read_only_database_with_an_interrupted_family",
        ps_config(tables, dims, persistent=rocks_db(half, read_only=True)),
        False,
    )
    # Static caches hold their tables whole: the CPU tiers, RocksDB included, never hold them.
    static = {"gpucache": True, "embedding_cache_type": "static"}
    other_model = {"model": "s", "persistent": read_only}  # families hps_et.s.* are not in db
    case(
        "static_caches_over_a_database_without_their_families",
        ps_config(tables, dims, **other_model, **static),
        True,
    )
    case(
        "dynamic_caches_over_a_database_without_their_families",
        ps_config(tables, dims, **other_model, gpucache=True),
        False,
    )
    _fusion_cases(tmp, case)
    segments = _shared_memory_cases(tables, dims, case)
    yield cases
    for name in segments:  # serve removes them; a failed test may leave one
        remove_segment(name)


def _fusion_cases(tmp, case) -> None:
    """Table fusion: tables of one dim share a storage table (fused_embedding<k>)."""
    fused = {
        **make_tables(tmp / "fused", {"a": (300, 8), "c": (100, 4)}),
        **make_tables(tmp / "fused", {"b": (200, 8)}, first_key=1000),  # keys apart from a's
    }
    dims = {"a": 8, "b": 8, "c": 4}

    def doc(tables, **extra):
        built = ps_config(tables, {t: dims[t] for t in tables}, **extra)
        built["fuse_embedding_table"] = True
        return built

    case("fused", doc(fused), True)
    overlap = make_tables(tmp / "overlap", {"b": (200, 8)})  # keys 0..199, as a's
    case("fused_tables_sharing_keys", doc({"a": fused["a"], "b": overlap["b"]}), False)
    db = tmp / "fused_db"
    with HPS(doc(fused, persistent=rocks_db(db))):  # loads the fused families
        pass
    case(
        "fused_over_a_read_only_database", doc(fused, persistent=rocks_db(db, read_only=True)), True
    )
    unfused = doc(fused, persistent=rocks_db(db, read_only=True))
    unfused["fuse_embedding_table"] = False  # asks for hps_et.m.a, ..., which db does not hold
    case("unfused_over_a_fused_read_only_database", unfused, False)


def _shared_memory_cases(tables, dims, case) -> list[str]:
    """multi_process_hash_map: serve creates the segment, and removes it when it stops. Returns
    the segments' names."""
    names = []

    def doc(size):
        names.append(segment_name("parity"))
        volatile = {
            "type": "multi_process_hash_map",
            "shared_memory_name": names[-1],
            "shared_memory_size": size,
            "num_partitions": 4,
        }
        return ps_config(tables, dims, volatile=volatile)

    case("shared_memory_map", doc(1 << 26), True)
    case("shared_memory_too_small", doc(first_region() + 4096), False)
    return names


def _validates(config, flags) -> bool:
    res = run_hps("validate-config", str(config), *flags)
    assert res.returncode in (0, 3), res.stderr
    return res.returncode == 0


def _serves(config, flags, tmp_path) -> bool:
    """True when `hps serve` gets ready; False when it exits before (non-zero, with an
    error line and its hint)."""
    server = ServeProcess(config, extra_args=list(flags), log_path=tmp_path / "serve.log")
    server.launch()
    try:
        server.wait_for("ready")
    except RuntimeError:
        code = server.process.returncode if server.process else None
        log = server.log_text()
        assert code not in (None, 0, 1), log  # refused with a documented code, not a crash
        assert "error:" in log and "hint:" in log, log
        return False
    assert server.stop() == 0
    return True


@pytest.mark.parametrize("name", CORPUS)
def test_the_invalid_corpus_is_refused_by_both(name, tmp_path):
    config = INVALID / f"{name}.json"
    assert not _validates(config, ())
    assert not _serves(config, (), tmp_path)


@pytest.mark.parametrize(
    "name",
    [
        "plain",
        "hit_rate_above_one",
        "persistent_path_is_a_file",
        "persistent_path_is_a_symlink_loop",
        "table_file_symlink_loop",
        "table_folder_symlink_loop",
        "table_with_nan",
        "table_with_nan_allowed",
        "read_only_database_missing",
        "read_only_database",
        "read_only_database_missing_a_family",
        "read_only_database_with_an_interrupted_family",
        "static_caches_over_a_database_without_their_families",
        "dynamic_caches_over_a_database_without_their_families",
        "fused",
        "fused_tables_sharing_keys",
        "fused_over_a_read_only_database",
        "unfused_over_a_fused_read_only_database",
        "shared_memory_map",
        "shared_memory_too_small",
    ],
)
def test_validate_config_fails_exactly_when_serve_refuses(built, name, tmp_path):
    config, flags, valid = built[name]
    assert _validates(config, flags) is valid
    assert _serves(config, flags, tmp_path) is valid


def test_every_issue_names_its_json_path(built):
    """Each refused built config is reported at a JSON path, in one line with a hint."""
    for name, (config, flags, valid) in built.items():
        if valid:
            continue
        res = run_hps("--json", "validate-config", str(config), *flags)
        doc = json.loads(res.stdout)
        errors = [i for i in doc["configs"][0]["issues"] if i["severity"] == "error"]
        assert errors and all(i["json_path"].startswith("$") for i in errors), (name, errors)
        assert all(i["hint"] for i in errors), (name, errors)
