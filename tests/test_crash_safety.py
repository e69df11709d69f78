"""Nothing lost, nothing left behind: real kill -9 (and SIGTERM, SIGINT) at every step.

Each command runs in a subprocess with ``HPS_CRASH_AT`` naming a crash point
(runtime/crash_points.py): it kills itself there with a real SIGKILL against real RocksDB and
real folders. Then the output must be the old one or the new one, never a mix or an empty
family; the leftovers of the dead process must be removed by the next run that writes there;
SIGTERM and SIGINT must clean up and exit 143 and 130.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from helpers.cli import run_hps
from helpers.runtime_configs import ps_config, rocks_db
from hps_cli.runtime.atomic import OLD_MARK, TMP_MARK, sweep_stale, temp_sibling
from hps_cli.runtime.errors import ExitCode
from hps_cli.runtime.owners import owner_alive, owner_token, process_start
from hps_cli.runtime.persistent.rocksdb_families import open_db, read_table_record
from hps_cli.runtime.table import TableReader, write_table

ROCKSDB_STAGES = ["built", "marked", "created", "ingested", "recorded"]
NEW_FROM = "ingested"  # from this stage on, the family holds the new table


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if TMP_MARK in p.name or OLD_MARK in p.name)


def _family(db_path, tag="hps_et.m.t"):
    """{key: vector bytes} of a family, read independently (read-only), and its record."""
    db = open_db(db_path, read_only=True)
    try:
        cf = db.get_column_family(tag)
        items = {bytes(k): bytes(v) for k, v in cf.items()}
        del cf
        return items, read_table_record(db, tag)
    finally:
        db.close()


def _as_items(table):
    with TableReader(table) as reader:
        keys, vectors = reader.keys(), reader.vectors()
        return {
            int(k).to_bytes(8, "little", signed=True): vectors[i].astype("<f4").tobytes()
            for i, k in enumerate(keys)
        }


@pytest.fixture(scope="module")
def old_and_new(tmp_path_factory):
    """Two versions of table t: different keys (some shared) and different vectors."""
    tmp = tmp_path_factory.mktemp("versions")
    rng = np.random.default_rng(7)
    old_keys = np.arange(0, 3000, dtype=np.int64)
    new_keys = np.arange(2000, 6000, dtype=np.int64)
    write_table(tmp / "old" / "t", old_keys, rng.standard_normal((3000, 16)).astype(np.float32))
    write_table(tmp / "new" / "t", new_keys, rng.standard_normal((4000, 16)).astype(np.float32))
    return tmp / "old" / "t", tmp / "new" / "t"


def _convert_to_rocksdb(table, db, *extra, env=None):
    return run_hps(
        "convert", str(table), str(db), "--to", "rocksdb", "--model", "m", *extra, env=env
    )


@pytest.mark.parametrize("stage", ROCKSDB_STAGES)
def test_convert_overwrite_killed_at_each_stage_leaves_old_or_new(old_and_new, tmp_path, stage):
    old, new = old_and_new
    db = tmp_path / "db"
    assert _convert_to_rocksdb(old, db).returncode == 0
    res = _convert_to_rocksdb(new, db, "--overwrite", env={"HPS_CRASH_AT": f"rocksdb.{stage}"})
    assert res.returncode == -9, res.stderr
    items, record = _family(db)
    expected = new if ROCKSDB_STAGES.index(stage) >= ROCKSDB_STAGES.index(NEW_FROM) else old
    assert items == _as_items(expected)  # the whole old table or the whole new one
    assert record["complete"] is (stage in ("built", "recorded"))  # else marked incomplete
    assert _leftovers(tmp_path)  # the dead process's work folder
    # the next run removes it and finishes the job
    assert _convert_to_rocksdb(new, db, "--overwrite").returncode == 0
    items, record = _family(db)
    assert items == _as_items(new) and record["complete"] is True
    assert not _leftovers(tmp_path)


def test_an_interrupted_first_load_leaves_an_empty_family_that_counts_as_missing(
    old_and_new, tmp_path
):
    old, _ = old_and_new
    db = tmp_path / "db"
    res = _convert_to_rocksdb(old, db, env={"HPS_CRASH_AT": "rocksdb.created"})
    assert res.returncode == -9
    items, record = _family(db)
    assert items == {} and record["complete"] is False
    # no --overwrite needed: an empty family of an interrupted load holds no table
    assert _convert_to_rocksdb(old, db).returncode == 0
    assert _family(db)[0] == _as_items(old)


def _start_runtime(config_path, crash=None):
    code = "import sys; from hps_cli.runtime import HPS; HPS(sys.argv[1]).close()"
    env = dict(os.environ)
    if crash:
        env["HPS_CRASH_AT"] = crash
    return subprocess.run(
        [sys.executable, "-c", code, str(config_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


@pytest.mark.parametrize("stage", ROCKSDB_STAGES)
def test_start_up_load_killed_at_each_stage_leaves_old_or_new(old_and_new, tmp_path, stage):
    """serve's start-up load (the runtime's RocksDB load) follows the same rule."""
    import json

    old, new = old_and_new
    table = tmp_path / "t"
    shutil.copytree(old, table)
    db = tmp_path / "db"
    config = tmp_path / "ps.json"
    config.write_text(json.dumps(ps_config({"t": table}, {"t": 16}, persistent=rocks_db(db))))
    assert _start_runtime(config).returncode == 0  # loads the old table
    shutil.rmtree(table)
    shutil.copytree(new, table)  # the table file changes: the next start reloads it
    res = _start_runtime(config, crash=f"rocksdb.{stage}")
    assert res.returncode == -9, res.stderr
    items, _ = _family(db)
    expected = new if ROCKSDB_STAGES.index(stage) >= ROCKSDB_STAGES.index(NEW_FROM) else old
    assert items == _as_items(expected)
    assert _leftovers(tmp_path)
    res = _start_runtime(config)
    assert res.returncode == 0, res.stderr
    items, record = _family(db)
    assert items == _as_items(new) and record["complete"] is True
    assert not _leftovers(tmp_path)


def _shared_memory_config(tmp_path, table, name):
    """A ps.json: ``table`` in a multi_process_hash_map segment ``name`` over RocksDB."""
    import json

    volatile = {
        "type": "multi_process_hash_map",
        "shared_memory_name": name,
        "shared_memory_size": 1 << 26,
        "num_partitions": 4,
    }
    doc = ps_config(
        {"t": table}, {"t": 16}, volatile=volatile, persistent=rocks_db(tmp_path / "db")
    )
    config = tmp_path / "ps.json"
    config.write_text(json.dumps(doc))
    return config


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm on this host")
def test_shared_memory_load_killed_before_its_record_is_reloaded_with_the_updates(
    old_and_new, tmp_path, caplog
):
    """A kill after every row went into the shared-memory table but before its load record:
    the segment stays (nobody removed it), and the next start reloads the table and replays
    the journaled update over it."""
    from helpers.shm import remove_segment, segment_name
    from hps_cli.runtime import HPS
    from hps_cli.runtime.volatile.shm_segment import SHM_DIR

    old, _ = old_and_new
    name = segment_name("crash")
    config = _shared_memory_config(tmp_path, old, name)
    key, vector = np.array([10**9]), np.full((1, 16), 0.5, np.float32)
    try:
        with HPS(config) as runtime:
            runtime.insert("m", "t", key, vector)  # journaled in RocksDB
        assert not os.path.exists(os.path.join(SHM_DIR, name))  # auto-removed by the last one
        res = _start_runtime(config, crash="shm.loaded")
        assert res.returncode == -9, res.stderr
        assert os.path.exists(os.path.join(SHM_DIR, name))  # left by the killed process
        with TableReader(old) as reader:
            keys, vectors = np.array(reader.keys()), np.array(reader.vectors())
        with caplog.at_level(logging.INFO, logger="hps_cli.runtime"):
            with HPS(config) as runtime:
                assert np.array_equal(runtime.lookup(keys, "m", "t"), vectors)
                assert np.array_equal(runtime.lookup(key, "m", "t"), vector)
        logged = caplog.text
        assert "loaded already" not in logged  # no record: reloaded, not attached
        assert "replayed 1 inserted" in logged
        assert not os.path.exists(os.path.join(SHM_DIR, name))
    finally:
        remove_segment(name)


@pytest.mark.parametrize("stage", ["built", "swapped"])
def test_folder_output_killed_before_and_after_the_swap(old_and_new, tmp_path, stage):
    old, new = old_and_new
    dst = tmp_path / "out"
    assert run_hps("convert", str(old), str(dst)).returncode == 0
    res = run_hps(
        "convert", str(new), str(dst), "--overwrite", env={"HPS_CRASH_AT": f"atomic.{stage}"}
    )
    assert res.returncode == -9
    expected = old if stage == "built" else new
    assert _as_items(dst / "t") == _as_items(expected)
    assert _leftovers(tmp_path)
    assert run_hps("convert", str(new), str(dst), "--overwrite").returncode == 0
    assert _as_items(dst / "t") == _as_items(new)
    assert not _leftovers(tmp_path)


@pytest.mark.parametrize(
    "how, code", [("TERM", ExitCode.TERMINATED), ("INT", ExitCode.INTERRUPTED)]
)
@pytest.mark.parametrize("target", ["hps", "rocksdb"])
def test_sigterm_and_sigint_remove_the_temporary_output(old_and_new, tmp_path, how, code, target):
    old, new = old_and_new
    dst = tmp_path / "out"
    args = ["--to", "rocksdb", "--model", "m"] if target == "rocksdb" else []
    assert run_hps("convert", str(old), str(dst), *args).returncode == 0
    point = "atomic.built" if target == "hps" else "rocksdb.built"
    res = run_hps(
        "convert", str(new), str(dst), *args, "--overwrite", env={"HPS_CRASH_AT": f"{point}:{how}"}
    )
    assert res.returncode == code, res.stderr
    assert "hint:" in res.stderr
    assert not _leftovers(tmp_path)
    if target == "hps":
        assert _as_items(dst / "t") == _as_items(old)
    else:
        assert _family(dst)[0] == _as_items(old)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_sweep_removes_only_dead_owners_and_restores_an_orphaned_old_version(tmp_path):
    dest = tmp_path / "out"
    dead = _dead_pid()
    assert not owner_alive(dead, None)
    assert owner_alive(os.getpid(), process_start(os.getpid()))
    # a live process whose start time differs is another process reusing the pid
    assert not owner_alive(os.getpid(), process_start(os.getpid()) + 1)
    stale = tmp_path / f".out{TMP_MARK}{dead}-123-0badcafe"
    stale.mkdir()
    (stale / "data").write_bytes(b"x" * 100)
    legacy = tmp_path / f".out{TMP_MARK}{dead}-0badcafe"  # the name older versions used
    legacy.write_bytes(b"y")
    mine = temp_sibling(dest)
    mine.mkdir()
    other = tmp_path / f".other{TMP_MARK}{dead}-123-0badcafe"  # beside another destination
    other.mkdir()
    old_version = tmp_path / f".out{OLD_MARK}{dead}-123-0badcafe"
    old_version.mkdir()
    (old_version / "kept").write_text("the old output")
    swept = sweep_stale(dest)
    assert set(swept) == {stale, legacy, old_version}
    assert not stale.exists() and not legacy.exists()
    assert mine.exists() and other.exists()  # a live owner's, and another destination's
    assert (dest / "kept").read_text() == "the old output"  # dest was missing: restored
    assert owner_token().startswith(f"{os.getpid()}-")


def test_serve_sigterm_while_loading_stops_the_load_and_leaves_nothing(old_and_new, tmp_path):
    """SIGTERM arriving while serve loads RocksDB (sent at a crash point of the load): the
    load stops, removes its work folder, and the server exits 0 without getting ready."""
    import json

    from hps_cli.devtools.serve_process import ServeProcess

    old, new = old_and_new
    config = tmp_path / "ps.json"
    doc = ps_config({"a": old, "b": new}, {"a": 16, "b": 16}, persistent=rocks_db(tmp_path / "db"))
    config.write_text(json.dumps(doc))
    server = ServeProcess(config, env={"HPS_CRASH_AT": "rocksdb.built:TERM"})
    server.launch()
    assert server.process.wait(timeout=120) == 0, server.log_text()
    events = [e.get("event") for e in server.log_events()]
    assert "stopped_while_loading" in events and "ready" not in events
    assert not _leftovers(tmp_path)
