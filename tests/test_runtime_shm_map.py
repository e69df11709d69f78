"""multi_process_hash_map: the shared-memory volatile tier across real processes (sharing,
one copy in memory, a writer killed mid-update, a load killed half-way, auto-remove, fork)
and its start-up (attach without reloading, layout clashes, sizing, validate-config).

The behaviour of one table (lookups, overflow policies, the state machine) is tested with the
in-process map's tests in test_runtime_hash_map.py."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from helpers.hierarchy_machine import HierarchyMachine
from helpers.runtime_configs import make_tables, ps_config, rocks_db
from helpers.serve_client import lookup_inputs
from helpers.shm import Peer, remove_segment, segment_name, shared_segment
from helpers.shm_writer import open_table, writer_vectors
from hps_cli.runtime import HPS
from hps_cli.runtime.config import validate_config_file
from hps_cli.runtime.errors import CapacityError, ConfigError
from hps_cli.runtime.preflight import preflight
from hps_cli.runtime.table.synthetic import synthetic_vectors, write_synthetic_table
from hps_cli.runtime.volatile.shm_layout import first_region
from hps_cli.runtime.volatile.shm_segment import LOADING, SHM_DIR, SharedSegment
from hps_cli.runtime.volatile.shm_table import SharedHashMapTable, table_spec
from hypothesis import HealthCheck, settings

from hps_cli.devtools.serve_process import ServeProcess

pytestmark = pytest.mark.skipif(not Path(SHM_DIR).is_dir(), reason="no /dev/shm on this host")

HELPERS = Path(__file__).parent / "helpers"


def _config(tmp: Path, name: str, specs: dict, *, persistent: bool = False, **volatile) -> Path:
    """A ps.json over synthetic tables with a multi_process_hash_map named ``name``."""
    tables = make_tables(tmp, specs)
    doc = ps_config(
        tables,
        {t: dim for t, (_, dim) in specs.items()},
        defaults={t: -1.0 for t in specs},
        persistent=rocks_db(tmp / "db") if persistent else None,
        volatile={
            "type": "multi_process_hash_map",
            "shared_memory_name": name,
            "shared_memory_size": 1 << 28,
            "num_partitions": 4,
            **volatile,
        },
    )
    path = tmp / "ps.json"
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture
def name():
    """A segment name of the test's own; whatever the test leaves behind is removed."""
    name = segment_name("rt")
    yield name
    remove_segment(name)


def _exists(name: str) -> bool:
    return Path(SHM_DIR, name).exists()


# ---------------------------------------------------------------------------- sharing


def test_two_processes_see_each_others_inserts_and_removes(tmp_path, name):
    config = _config(tmp_path, name, {"t": (2000, 8)})
    new = np.arange(10**9, 10**9 + 50, dtype=np.int64)
    old = np.arange(0, 40, dtype=np.int64)
    with HPS(config) as mine:  # the first process creates the segment and loads the table
        peer = Peer(config)
        assert any("loaded already" in line for line in peer.hello["log"])
        mine.insert("m", "t", new, synthetic_vectors(new, 8, seed=3))
        rows = np.array(peer.ask("lookup", table="t", keys=new.tolist())["rows"], np.float32)
        assert np.array_equal(rows, synthetic_vectors(new, 8, seed=3))
        theirs = new + 1000
        peer.ask("insert", table="t", keys=theirs.tolist(), vectors=np.ones((50, 8)).tolist())
        assert (mine.lookup(theirs, "m", "t") == 1.0).all()
        peer.ask("remove", table="t", keys=old.tolist())
        assert (mine.lookup(old, "m", "t") == -1.0).all()  # the default vector
        mine.remove("m", "t", new)
        rows = np.array(peer.ask("lookup", table="t", keys=new.tolist())["rows"])
        assert (rows == -1.0).all()
        assert len(mine.table_backend("m", "t").volatile) == 2000 - 40 + 50
        peer.close()
    assert not _exists(name)  # the last one out removed it


@pytest.mark.slow
def test_two_processes_hold_one_copy_of_a_100_mb_table(tmp_path, name):
    """RSS counts the shared pages each process touched; USS (pages only this process maps)
    stays far below the table; with the in-process map each process has its own copy."""
    keys, dim = 190_000, 128
    raw = keys * (8 + 4 * dim)  # 99 MB
    growth = {}
    for kind in ("multi_process_hash_map", "parallel_hash_map"):
        folder = tmp_path / kind
        folder.mkdir()
        config = _config(folder, name, {"t": (keys, dim)}, type=kind, num_partitions=16)
        peers = [Peer(config), Peer(config)]  # the first loads, the second attaches
        try:
            for peer in peers:
                assert peer.ask("touch_all", table="t")["keys"] == keys
            growth[kind] = [_memory_growth(peer) for peer in peers]
        finally:
            for peer in peers:
                peer.close()
    print(json.dumps({"table_bytes": raw, "growth": growth}, indent=1))
    for rss, uss, pss in growth["multi_process_hash_map"]:
        assert rss > 0.9 * raw  # every page of the table is mapped in each process
        assert uss < 0.25 * raw  # but is not its own
        assert pss < 0.75 * raw  # each process is charged about half
    for _, uss, _ in growth["parallel_hash_map"]:
        assert uss > 0.9 * raw  # the contrast: one copy per process


def _memory_growth(peer: Peer) -> tuple[int, int, int]:
    """(RSS, USS, PSS) of the peer now, less what it had before it built HPS."""
    now = psutil.Process(peer.pid).memory_full_info()
    before = peer.hello["memory"]
    return now.rss - before["rss"], now.uss - before["uss"], now.pss - before["pss"]


@pytest.mark.slow
def test_two_servers_serve_one_segment(tmp_path, name):
    """``hps serve`` uses the shared map: two servers on one config answer what a third
    process inserted."""
    thttp = pytest.importorskip("tritonclient.http")
    config = _config(tmp_path, name, {"t": (1000, 8)})
    keys = np.array([5, 10**7, 999], dtype=np.int64)
    with ServeProcess(config) as first, ServeProcess(config) as second:
        with HPS(config) as mine:
            mine.insert("m", "t", keys[1:2], np.full((1, 8), 4.5, np.float32))
            expected = mine.lookup(keys, "m", "t")
        assert (expected[1] == 4.5).all()
        for server in (first, second):
            client = thttp.InferenceServerClient(server.http_url)
            result = client.infer("m", lookup_inputs(thttp, keys, np.array([3], np.int32)))
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0").reshape(3, 8), expected)
    assert not _exists(name)


# ---------------------------------------------------------------------------- start-up


def test_a_later_process_attaches_without_loading_and_a_changed_table_reloads(
    tmp_path, name, caplog
):
    config = _config(tmp_path, name, {"t": (3000, 4)}, shared_memory_auto_remove=False)
    keys = np.arange(3000, dtype=np.int64)
    with caplog.at_level(logging.INFO, logger="hps_cli.runtime"):
        with HPS(config) as first:
            first.insert("m", "t", np.array([10**6]), np.full((1, 4), 7, np.float32))
        assert _exists(name)  # auto-remove off: the segment and its table stay
        caplog.clear()
        with HPS(config) as second:
            assert "loaded already" in caplog.text
            assert np.array_equal(second.lookup(keys, "m", "t"), synthetic_vectors(keys, 4))
            assert (second.lookup(np.array([10**6]), "m", "t") == 7).all()  # kept too
        write_synthetic_table(tmp_path / "t", 3000, 4, seed=1, overwrite=True)  # new vectors
        caplog.clear()
        with HPS(config) as third:
            assert "loaded already" not in caplog.text
            assert np.array_equal(third.lookup(keys, "m", "t"), synthetic_vectors(keys, 4, 1))
            assert (third.lookup(np.array([10**6]), "m", "t") == -1).all()  # a fresh load


def test_a_load_killed_half_way_is_done_again_by_the_next_process(tmp_path, name, caplog):
    keys = 300_000  # five load chunks
    config = _config(tmp_path, name, {"t": (keys, 8)})
    peer = Peer(config, stall_load=True)
    assert peer.hello == {"loading": True}  # it stalls after the first chunk
    with SharedSegment(name, 1 << 28, auto_remove=False) as segment:
        assert segment.entry(0)["load_state"] == LOADING
    peer.kill()
    assert _exists(name)  # nobody removed it
    with caplog.at_level(logging.INFO, logger="hps_cli.runtime"):
        with HPS(config) as runtime:
            assert "loaded already" not in caplog.text
            table = runtime.table_backend("m", "t").volatile
            assert len(table) == keys
            sample = np.arange(0, keys, 97)
            assert np.array_equal(runtime.lookup(sample, "m", "t"), synthetic_vectors(sample, 8))
            assert table.read_record()["complete"] is True
    assert not _exists(name)


def test_another_layout_is_refused_while_the_segment_is_in_use(tmp_path, name):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = _config(tmp_path / "a", name, {"t": (1000, 8)}, shared_memory_auto_remove=False)
    other = _config(tmp_path / "b", name, {"t": (1000, 8)}, num_partitions=8)
    with HPS(first):
        with pytest.raises(ConfigError, match="4 partitions") as err:
            HPS(other)
        assert err.value.location.endswith("$.volatile_db.shared_memory_name")
    with HPS(other) as runtime:  # alone now: the segment is rebuilt for the new layout
        keys = np.arange(1000)
        assert np.array_equal(runtime.lookup(keys, "m", "t"), synthetic_vectors(keys, 8))


def test_a_segment_too_small_fails_before_anything_is_loaded(tmp_path, name):
    """The config's own tables exceed shared_memory_size: preflight refuses it, as
    validate-config does, before the segment or RocksDB is touched."""
    config = _config(
        tmp_path, name, {"t": (50_000, 16)}, persistent=True, shared_memory_size=2 << 20
    )
    checked = preflight(config)
    assert [i.json_path for i in checked.result.errors] == ["$.volatile_db.shared_memory_size"]
    with pytest.raises(ConfigError, match="need") as err:
        HPS(config)
    assert err.value.location.endswith("$.volatile_db.shared_memory_size")
    assert "shared_memory_size to at least" in err.value.hint
    assert not (tmp_path / "db").exists()  # RocksDB was not even opened
    assert not _exists(name)


def test_a_segment_name_that_is_no_file_name_is_refused_by_preflight(tmp_path):
    config = _config(tmp_path, "../escape", {"t": (100, 4)})
    checked = preflight(config)
    assert [i.json_path for i in checked.result.errors] == ["$.volatile_db.shared_memory_name"]
    assert checked.result.errors[0].hint


def test_a_segment_other_processes_filled_fails_at_start_up_before_loading(tmp_path, name):
    """Each config fits alone (preflight passes), but the first one's table leaves the second
    too little room: start-up finds it when it reserves the regions, before any load."""
    one = table_spec(
        "hps_et.m.t",
        16,
        num_partitions=4,
        overflow_margin=None,
        overflow_policy="evict_random",
        overflow_resolution_target=0.8,
        expected_keys=20_000,
    ).layout.nbytes
    size = first_region() + one + one // 2
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = _config(
        tmp_path / "a",
        name,
        {"t": (20_000, 16)},
        shared_memory_size=size,
        shared_memory_auto_remove=False,
    )
    other = _config(
        tmp_path / "b", name, {"u": (20_000, 16)}, persistent=True, shared_memory_size=size
    )
    assert preflight(first).ok and preflight(other).ok
    with HPS(first):
        with pytest.raises(CapacityError, match="need") as err:
            HPS(other)
    assert err.value.location.endswith("$.volatile_db.shared_memory_size")
    assert not (tmp_path / "b" / "db").exists()  # RocksDB was not even opened


def test_validate_config_warns_when_dev_shm_is_smaller_than_the_segment(tmp_path, name):
    huge = os.statvfs(SHM_DIR).f_blocks * os.statvfs(SHM_DIR).f_frsize * 2
    config = _config(tmp_path, name, {"t": (100, 4)}, shared_memory_size=huge)
    found = [i for i in validate_config_file(config).warnings if i.rule == "shared_memory"]
    assert [i.json_path for i in found] == ["$.volatile_db.shared_memory_size"]
    assert "docker run --shm-size" in found[0].hint
    (tmp_path / "small").mkdir()
    config = _config(tmp_path / "small", name, {"t": (100, 4)}, shared_memory_size=1 << 20)
    assert not [i for i in validate_config_file(config).issues if i.rule == "shared_memory"]


# ---------------------------------------------------------------------------- robustness


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_writer_killed_mid_update_leaves_the_others_working(name, caplog):
    """Readers never see a row mixing two writes while a writer rewrites every row; after it is
    killed inside an update, reads go on at once and the next write rebuilds the partition from
    its rows first."""
    count, dim, tag = 200_000, 8, "hps_et.kill.t"
    segment, table = open_table(name, tag, dim, count)
    keys = np.arange(count, dtype=np.int64)
    writer = subprocess.Popen(
        [sys.executable, str(HELPERS / "shm_writer.py"), name, tag, str(dim), str(count)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout.readline().strip() == "started"
        rng = np.random.default_rng(0)
        versions = set()
        until = time.monotonic() + 2.0
        while time.monotonic() < until:
            sample = rng.choice(keys, 20_000)
            out, hit, _ = table.get(sample)
            assert hit.all()
            _assert_whole(out, sample)
            versions.update(np.unique(out[:, 1]).tolist())
        assert len(versions) > 1  # the readers did overlap with several writes
        while not table._seq[0] & 1:  # wait until it is inside an update
            time.sleep(0.0005)
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait(30)
        assert table._seq[0] & 1  # it died with its partition marked as being written
        out, hit, _ = table.get(keys)  # reads need no lock: they go on at once
        assert hit.all()
        _assert_whole(out, keys)
        with caplog.at_level(logging.WARNING, logger="hps_cli.runtime"):
            table.insert(keys[:1000], writer_vectors(keys[:1000], dim, 10**6))
        assert "rebuilt partition 0" in caplog.text  # the next writer repaired it first
        assert not table._seq[0] & 1
        out, hit, _ = table.get(keys)
        assert hit.all() and (out[:1000, 1:] == 10**6).all()
        _assert_whole(out, keys)
        assert len(table) == count and np.unique(table.keys()).size == count
    finally:
        writer.kill()
        writer.wait(30)
        segment.close()


def _assert_whole(rows: np.ndarray, keys: np.ndarray) -> None:
    assert np.array_equal(rows[:, 0], keys.astype(np.float32)), "a row of another key"
    assert (rows[:, 1:] == rows[:, 1:2]).all(), "a row mixing two writes"


def test_the_last_process_to_close_removes_the_segment_and_a_dead_one_does_not_count(
    tmp_path, name
):
    config = _config(tmp_path, name, {"t": (500, 4)})
    mine = HPS(config)
    peer = Peer(config)
    mine.close()
    assert _exists(name)  # the peer still uses it
    peer.close()
    assert not _exists(name)
    peer = Peer(config)  # creates it again
    mine = HPS(config)
    peer.kill()  # kill -9: it never detaches
    mine.close()
    assert not _exists(name)


def test_auto_remove_off_keeps_the_segment(tmp_path, name):
    config = _config(tmp_path, name, {"t": (500, 4)}, shared_memory_auto_remove=False)
    HPS(config).close()
    assert _exists(name)


def test_a_forked_child_takes_locks_of_its_own():
    """After fork the child opens the segment anew: a partition lock its parent holds keeps it
    waiting (sharing the parent's open file would let it straight in)."""
    with shared_segment(label="fork") as segment:
        table = SharedHashMapTable(segment, "hps_et.fork.t", 4, num_partitions=1, expected_keys=100)
        keys = np.arange(50, dtype=np.int64)
        with table._locks[0].held():
            pid = os.fork()
            if pid == 0:  # the child: insert, then leave without any clean-up
                try:
                    table.insert(keys, synthetic_vectors(keys, 4))
                    os._exit(0)
                except BaseException:
                    os._exit(1)
            time.sleep(0.5)
            assert os.waitpid(pid, os.WNOHANG) == (0, 0)  # still waiting for our lock
        assert _exit_code(pid, timeout=60) == 0
        out, hit, _ = table.get(keys)
        assert hit.all() and np.array_equal(out, synthetic_vectors(keys, 4))


def _exit_code(pid: int, timeout: float) -> int:
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError(f"the child {pid} did not finish in {timeout} s")


# ---------------------------------------------------------------------------- one table


def test_churn_reuses_rows_and_slots(rng):
    with shared_segment(label="churn") as segment:
        table = SharedHashMapTable(
            segment, "hps_et.churn.t", 2, num_partitions=2, expected_keys=3000
        )
        for round_ in range(30):  # far more keys over time than the room
            keys = rng.integers(0, 2**62, 3000) + round_
            table.insert(keys, np.zeros((keys.size, 2), np.float32))
            assert table.remove(keys) == np.unique(keys).size
        assert len(table) == 0
        assert (table._part[:, 2] < 0.75 * table.layout.slots).all()  # tombstones reclaimed


def test_a_full_partition_without_a_margin_raises_capacity_error():
    with shared_segment(label="full") as segment:
        table = SharedHashMapTable(segment, "hps_et.full.t", 2, num_partitions=1, expected_keys=100)
        keys = np.arange(table.room, dtype=np.int64)
        table.insert(keys, np.zeros((keys.size, 2), np.float32))
        with pytest.raises(CapacityError, match="full") as err:
            table.insert(np.array([-1]), np.zeros((1, 2), np.float32))
        assert "overflow_margin" in err.value.hint
        table.insert(keys, np.ones((keys.size, 2), np.float32))  # updates still fit
        out, hit, _ = table.get(keys)
        assert hit.all() and (out == 1).all()
        assert table.remove(keys[:10]) == 10
        table.insert(np.array([-1]), np.zeros((1, 2), np.float32))  # room again


def test_reads_under_the_locks_give_the_same_answers(rng):
    """The read path of machines without x86-64's load ordering (every read locked)."""
    with shared_segment(label="locked") as segment:
        fast = SharedHashMapTable(segment, "hps_et.l.t", 4, expected_keys=5000)
        locked = SharedHashMapTable(
            segment, "hps_et.l.t", 4, expected_keys=5000, lock_free_reads=False
        )
        keys = rng.integers(0, 10**9, 5000)
        fast.insert(keys, synthetic_vectors(keys, 4))
        query = np.concatenate([keys[:500], keys[:100] + 1])
        a, hit_a, _ = fast.get(query)
        b, hit_b, _ = locked.get(query)
        assert np.array_equal(hit_a, hit_b) and np.array_equal(a, b)
        assert np.array_equal(locked.contains(query), hit_a)


# ---------------------------------------------------------------------------- the hierarchy


class SharedHierarchyMachine(HierarchyMachine):
    """The whole hierarchy with the shared-memory map as the volatile tier."""

    def volatile_block(self) -> dict:
        return {
            "type": "multi_process_hash_map",
            "shared_memory_name": segment_name("hier"),
            "shared_memory_size": 1 << 24,
        }


TestSharedHierarchyMachine = SharedHierarchyMachine.TestCase
TestSharedHierarchyMachine.settings = settings(
    max_examples=15,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
