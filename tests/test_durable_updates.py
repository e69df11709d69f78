"""Updates (HPS.insert / remove, the server's admin endpoints) outlive the process with a
writable RocksDB tier: journaled in the same write batch as the family, replayed at start-up
over what the volatile tier and the embedding caches load from the table files. Without one
they last until the runtime closes. A read-only tier follows its database being rewritten."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers.cli import run_hps
from helpers.runtime_configs import make_tables, ps_config, rocks_db
from hps_cli.runtime import HPS
from hps_cli.runtime.errors import InvalidInputError
from hps_cli.runtime.preflight import preflight
from hps_cli.runtime.table import write_table
from hps_cli.runtime.table.synthetic import synthetic_vectors

DIM = 8
X = np.full((1, DIM), 3.5, np.float32)
Y = np.full((1, DIM), -2.0, np.float32)


@pytest.fixture
def setup(tmp_path, monkeypatch):
    # Without a GPU no dynamic cache is built; the NumPy reference stands in, so that the
    # replay reaches a front cache too (subprocesses inherit the variable).
    monkeypatch.setenv("HPS_CACHE_BACKEND", "reference")
    tables = make_tables(tmp_path, {"t": (1000, DIM)})

    def config(persistent=True, **extra):
        doc = ps_config(
            tables,
            {"t": DIM},
            persistent=rocks_db(tmp_path / "db") if persistent else None,
            gpucache=True,  # the NumPy reference cache here: prefilled from the table file
            gpucacheper=0.5,
            hit_rate_threshold=1.0,
            **extra,
        )
        path = tmp_path / ("ps.json" if persistent else "ps_volatile.json")
        path.write_text(json.dumps(doc))
        return path

    return tmp_path, tables["t"], config


def _look(hps, keys):
    keys = np.asarray(keys, np.int64)
    assert hps.front_cache("m", "t") is not None
    via_cache = hps.lookup(keys, "m", "t")
    via_tiers = hps.table_backend("m", "t").fetch(keys)
    np.testing.assert_array_equal(via_cache, via_tiers)
    return via_cache


def test_updates_survive_a_restart_and_win_over_the_table_file(setup):
    _, _, config = setup
    with HPS(config()) as hps:
        assert hps.durable_updates
        hps.insert("m", "t", np.array([10]), X)  # a key the table file holds
        hps.insert("m", "t", np.array([5000]), Y)  # a key it does not
        hps.remove("m", "t", np.array([11]))
    with HPS(config()) as hps:
        got = _look(hps, [10, 5000, 11, 12])
    np.testing.assert_array_equal(got[0], X[0])
    np.testing.assert_array_equal(got[1], Y[0])
    assert (got[2] == 0.0).all()  # removed: the default vector
    np.testing.assert_array_equal(got[3], synthetic_vectors(np.array([12]), DIM)[0])


def test_updates_survive_kill_9(setup):
    _, _, config = setup
    code = (
        "import os, signal, sys, numpy as np; from hps_cli.runtime import HPS;"
        "h = HPS(sys.argv[1]);"
        "h.insert('m', 't', np.array([10, 7000]), np.full((2, 8), 3.5, np.float32));"
        "h.remove('m', 't', np.array([13]));"
        "os.kill(os.getpid(), signal.SIGKILL)"
    )
    res = subprocess.run([sys.executable, "-c", code, str(config())], capture_output=True)
    assert res.returncode == -9, res.stderr
    with HPS(config()) as hps:
        got = _look(hps, [10, 7000, 13])
    np.testing.assert_array_equal(got[:2], np.full((2, DIM), 3.5, np.float32))
    assert (got[2] == 0.0).all()


def test_a_changed_table_file_is_reloaded_and_its_updates_discarded(setup):
    tmp, table, config = setup
    with HPS(config()) as hps:
        hps.insert("m", "t", np.array([10]), X)
    shutil.rmtree(table)
    write_table(table, np.arange(1000), np.ones((1000, DIM), np.float32))
    checked = preflight(config())
    assert "updates_discarded" in [i.rule for i in checked.result.warnings]
    with HPS(config()) as hps:
        got = _look(hps, [10, 11])
    assert (got == 1.0).all()  # the new file's vectors; the old update is gone
    with HPS(config()) as hps:  # and stays gone
        assert (_look(hps, [10]) == 1.0).all()


def test_updates_of_fused_tables_survive_a_restart(tmp_path, monkeypatch, caplog):
    """A fused group has one family and one journal (its storage tag); the replay reaches the
    cache its member tables share, once."""
    monkeypatch.setenv("HPS_CACHE_BACKEND", "reference")
    tables = {
        **make_tables(tmp_path, {"a": (300, DIM)}),
        **make_tables(tmp_path, {"b": (200, DIM)}, first_key=1000),
    }
    doc = ps_config(
        tables,
        {"a": DIM, "b": DIM},
        persistent=rocks_db(tmp_path / "db"),
        gpucache=True,
        gpucacheper=0.5,
        hit_rate_threshold=1.0,
    )
    doc["fuse_embedding_table"] = True
    with HPS(doc) as hps:
        hps.insert("m", "b", np.array([1005, 50000]), np.concatenate([X, Y]))
        hps.remove("m", "a", np.array([3]))
    with caplog.at_level(logging.INFO, logger="hps_cli.runtime"):
        with HPS(doc) as hps:
            assert hps.front_cache("m", "a") is hps.front_cache("m", "b") is not None
            a, b = hps.lookup_tables([np.array([3, 4]), np.array([1005, 50000, 1006])], "m")
            single = hps.lookup(np.array([1005]), "m", "b")
    np.testing.assert_array_equal(b[:2], np.concatenate([X, Y]))
    np.testing.assert_array_equal(single, X)
    assert (a[0] == 0.0).all()  # removed: the default vector
    np.testing.assert_array_equal(a[1], synthetic_vectors(np.array([4]), DIM)[0])
    np.testing.assert_array_equal(b[2], synthetic_vectors(np.array([1006]), DIM)[0])
    replayed = [r.getMessage() for r in caplog.records if "replayed" in r.getMessage()]
    assert replayed == [
        "hps_et.m.fused_embedding0: replayed 2 inserted and 1 removed key(s) journaled since "
        "the table was loaded"
    ]


def test_a_static_cache_serves_its_table_file_over_a_journal_left_from_before(setup, caplog):
    """Static caches hold their table whole and take no updates; a journal written while the
    table had a dynamic cache is left alone (logged), not half applied."""
    _, _, config = setup
    with HPS(config()) as hps:
        hps.insert("m", "t", np.array([10]), X)
    with caplog.at_level(logging.WARNING, logger="hps_cli.runtime"):
        with HPS(config(embedding_cache_type="static")) as hps:
            got = hps.lookup(np.array([10]), "m", "t")
    np.testing.assert_array_equal(got[0], synthetic_vectors(np.array([10]), DIM)[0])
    assert any("cannot take the 1 journaled update" in r.getMessage() for r in caplog.records)
    with HPS(config()) as hps:  # dynamic again: the update is still there
        np.testing.assert_array_equal(_look(hps, [10])[0], X[0])


def test_without_a_persistent_db_updates_last_until_the_runtime_closes(setup):
    _, _, config = setup
    with HPS(config(persistent=False)) as hps:
        assert not hps.durable_updates
        hps.insert("m", "t", np.array([10]), X)
        np.testing.assert_array_equal(_look(hps, [10])[0], X[0])
    with HPS(config(persistent=False)) as hps:
        np.testing.assert_array_equal(
            _look(hps, [10])[0], synthetic_vectors(np.array([10]), DIM)[0]
        )


def test_a_read_only_runtime_replays_the_journal_too(setup):
    tmp, tables, config = setup
    with HPS(config()) as hps:
        hps.insert("m", "t", np.array([10]), X)
    doc = json.loads(config().read_text())
    doc["persistent_db"]["read_only"] = True
    (tmp / "ro.json").write_text(json.dumps(doc))
    with HPS(tmp / "ro.json") as hps:
        assert not hps.durable_updates
        np.testing.assert_array_equal(_look(hps, [10])[0], X[0])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_inserting_non_finite_vectors_is_refused_naming_the_key(setup, bad):
    _, _, config = setup
    vectors = np.ones((3, DIM), np.float32)
    vectors[1, 4] = bad
    with HPS(config(persistent=False)) as hps:
        with pytest.raises(InvalidInputError, match=r"key 21 \(row 1\)"):
            hps.insert("m", "t", np.array([20, 21, 22]), vectors)
        np.testing.assert_array_equal(  # nothing of the batch went in
            _look(hps, [20])[0], synthetic_vectors(np.array([20]), DIM)[0]
        )
    with HPS(config(persistent=False), allow_non_finite=True) as hps:
        hps.insert("m", "t", np.array([20, 21, 22]), vectors)


def test_a_read_only_runtime_follows_its_database_being_rewritten(tmp_path, caplog):
    """Another process replaces the family (convert --overwrite): the read-only tier reopens
    the database and serves the new rows, and says which family changed."""
    old = make_tables(tmp_path / "old", {"t": (500, DIM)})["t"]
    new = tmp_path / "new" / "t"
    write_table(new, np.arange(500), np.full((500, DIM), 7.0, np.float32))
    db = tmp_path / "db"
    convert = ("convert", "--to", "rocksdb", "--model", "m", "--table", "t")
    res = run_hps(convert[0], str(old), str(db), *convert[1:])
    assert res.returncode == 0, res.stderr
    doc = ps_config(
        {"t": old},
        {"t": DIM},
        volatile={"type": "disabled"},  # every lookup reaches RocksDB
        persistent=rocks_db(db, read_only=True),
    )
    with HPS(doc) as hps:
        np.testing.assert_array_equal(
            hps.lookup(np.array([3]), "m", "t")[0], synthetic_vectors(np.array([3]), DIM)[0]
        )
        res = run_hps(convert[0], str(new), str(db), *convert[1:], "--overwrite")
        assert res.returncode == 0, res.stderr
        deadline = time.monotonic() + 30
        while (hps.lookup(np.array([3]), "m", "t") != 7.0).any():
            assert time.monotonic() < deadline, "the read-only tier never saw the change"
            time.sleep(0.2)
    assert any(
        "hps_et.m.t" in r.getMessage() and "reopened" in r.getMessage() for r in caplog.records
    )
    assert not [p for p in os.listdir(tmp_path) if ".hps-tmp-" in p]
