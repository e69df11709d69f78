"""`hps serve --workers N`: N real server processes on the same ports, one shared-memory
volatile tier, one /metrics with a worker label, the refused combinations, SIGTERM, and workers
or a supervisor killed with SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from helpers.runtime_configs import make_tables, ps_config, rocks_db
from helpers.serve_client import http_post, lookup_inputs, scrape
from hps_cli.runtime import HPS
from hps_cli.runtime.errors import ExitCode
from hps_cli.runtime.table import write_table
from hps_cli.runtime.table.synthetic import synthetic_vectors

from hps_cli.devtools.serve_process import ServeProcess

TOKEN = "workers-admin-token-0123"
DIM = 8
ROWS = 1000


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve-workers")
    return tmp, make_tables(tmp, {"a": (ROWS, DIM)})


def _config(tables, name: str, **extra) -> str:
    tmp, paths = tables
    volatile = {
        "type": "multi_process_hash_map",
        "num_partitions": 4,
        "shared_memory_size": 32 << 20,
        "shared_memory_name": f"hps_test_workers_{os.getpid()}_{name}",
    }
    path = tmp / f"{name}.json"
    path.write_text(json.dumps(ps_config(paths, {"a": DIM}, volatile=volatile, **extra)))
    return path


@pytest.fixture(scope="module")
def reference(tables):
    tmp, paths = tables
    path = tmp / "reference.json"
    path.write_text(json.dumps(ps_config(paths, {"a": DIM})))
    runtime = HPS(path)
    yield runtime
    runtime.close()


@pytest.fixture(scope="module")
def two_workers(tables):
    server = ServeProcess(
        _config(tables, "shared"),
        extra_args=["--workers", "2", "--shutdown-timeout", "2", "--access-log", "off"],
        env={"HPS_ADMIN_TOKEN": TOKEN},
    ).start()
    yield server
    assert server.stop() == 0, server.log_text()[-3000:]


def _lookup(protocol: str, url: str, keys: np.ndarray) -> np.ndarray:
    module = thttp if protocol == "http" else tgrpc
    client = module.InferenceServerClient(url)  # a new connection
    try:
        result = client.infer("m", lookup_inputs(module, keys, [keys.size]))
        return result.as_numpy("OUTPUT0").reshape(keys.size, DIM)
    finally:
        client.close()


def _requests_by_worker(server) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, value in scrape(server.metrics_url).items():
        ok = 'code="200"' in name or 'code="OK"' in name
        if name.startswith("hps_requests_total{") and ok:
            worker = name.split('worker="')[1].split('"')[0]
            out[worker] = out.get(worker, 0) + value
    return out


def _from_many_connections(server, keys_of, check) -> None:
    """16 threads, half HTTP, half gRPC, each a few lookups on new connections."""
    errors: list[BaseException] = []

    def client(i: int) -> None:
        protocol = "http" if i % 2 else "grpc"
        url = server.http_url if protocol == "http" else server.grpc_url
        try:
            for j in range(3):
                keys = keys_of(i, j)
                check(keys, _lookup(protocol, url, keys))
        except BaseException as exc:  # noqa: BLE001 - asserted below
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]


def test_two_workers_answer_exactly_over_http_and_grpc_and_both_get_connections(
    two_workers, reference
):
    before = _requests_by_worker(two_workers)
    rng = np.random.default_rng(0)
    batches = {(i, j): rng.integers(0, ROWS + 50, 64) for i in range(16) for j in range(3)}

    def check(keys, got):
        np.testing.assert_array_equal(got, reference.lookup(keys, "m"))

    _from_many_connections(two_workers, lambda i, j: batches[(i, j)], check)
    after = _requests_by_worker(two_workers)
    served = {w: after.get(w, 0) - before.get(w, 0) for w in ("0", "1")}
    assert sum(served.values()) == 48
    assert served["0"] > 0 and served["1"] > 0, served  # the kernel spread the connections
    metrics = scrape(two_workers.metrics_url)
    assert metrics["hps_ready"] == 1 and metrics["hps_workers"] == 2
    assert metrics['hps_worker_ready{worker="0"}'] == metrics['hps_worker_ready{worker="1"}'] == 1


def _update(server, op: str, keys, vectors=None) -> tuple[int, dict]:
    inputs = [
        {"name": "KEYS", "datatype": "INT64", "shape": [len(keys)], "data": [int(k) for k in keys]}
    ]
    if vectors is not None:
        inputs.append(
            {
                "name": "VECTORS",
                "datatype": "FP32",
                "shape": list(vectors.shape),
                "data": vectors.reshape(-1).tolist(),
            }
        )
    status, _, body = http_post(
        server.http_url,
        f"/v2/admin/models/m/tables/a/{op}",
        json.dumps({"inputs": inputs}).encode(),
        {"Authorization": f"Bearer {TOKEN}"},
    )
    return status, json.loads(body)


def test_an_admin_update_through_one_worker_is_seen_by_every_worker(two_workers, reference):
    keys = np.array([3, 7, ROWS + 500], np.int64)  # two rows of the table and a new key
    vectors = np.arange(keys.size * DIM, dtype=np.float32).reshape(keys.size, DIM) + 0.5
    status, body = _update(two_workers, "insert", keys, vectors)
    assert status == 200, body
    before = _requests_by_worker(two_workers)

    def check(asked, got):
        np.testing.assert_array_equal(got, vectors)

    _from_many_connections(two_workers, lambda i, j: keys, check)
    after = _requests_by_worker(two_workers)
    assert all(after[w] > before.get(w, 0) for w in ("0", "1")), (before, after)

    status, body = _update(two_workers, "remove", keys)
    assert status == 200, body
    defaults = np.zeros((keys.size, DIM), np.float32)
    _from_many_connections(
        two_workers, lambda i, j: keys, lambda a, got: np.testing.assert_array_equal(got, defaults)
    )


def test_a_private_hash_map_with_several_workers_is_refused(tables, hps):
    tmp, paths = tables
    path = tmp / "private.json"
    path.write_text(json.dumps(ps_config(paths, {"a": DIM})))
    res = hps("serve", "--config", str(path), "--workers", "2", "--http-port", "0")
    assert res.returncode == ExitCode.INVALID, res.stderr
    lines = res.stderr.strip().splitlines()
    assert lines[0].startswith("error: ") and "$.volatile_db.type" in lines[0]
    assert lines[1].startswith("hint: ") and "multi_process_hash_map" in lines[1]


def test_rocksdb_is_read_only_in_the_workers(tables, reference, tmp_path):
    config = _config(tables, "rocks", persistent=rocks_db(tmp_path / "db"))
    server = ServeProcess(
        config,
        extra_args=["--workers", "2", "--shutdown-timeout", "2", "--access-log", "off"],
        env={"HPS_ADMIN_TOKEN": TOKEN},
    ).start()
    try:
        keys = np.arange(0, ROWS, 7, dtype=np.int64)
        for protocol, url in (("http", server.http_url), ("grpc", server.grpc_url)):
            np.testing.assert_array_equal(_lookup(protocol, url, keys), reference.lookup(keys, "m"))
        status, body = _update(server, "remove", [3])
        assert status == 400 and "read-only" in body["error"], body
    finally:
        assert server.stop() == 0, server.log_text()[-3000:]
    # The supervisor loaded the database before the workers opened it read-only: RocksDB alone
    # (no volatile tier) answers every row.
    doc = json.loads(config.read_text())
    doc["volatile_db"] = {"type": "disabled"}
    runtime = HPS(doc, cache_factory=None)
    try:
        keys = np.arange(ROWS, dtype=np.int64)
        np.testing.assert_array_equal(runtime.lookup(keys, "m"), reference.lookup(keys, "m"))
    finally:
        runtime.close()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as status:
            return "\nState:\tZ" not in status.read()
    except FileNotFoundError:
        return False


def _worker_pids(server) -> list[int]:
    return next(e["pids"] for e in server.log_events() if e.get("event") == "ready")


def test_sigterm_stops_every_worker_within_the_shutdown_timeout(tables):
    server = ServeProcess(
        _config(tables, "sigterm"),
        extra_args=["--workers", "2", "--shutdown-timeout", "2", "--access-log", "off"],
    ).start()
    pids = _worker_pids(server)
    started = time.monotonic()
    code = server.stop(timeout=30)
    took = time.monotonic() - started
    assert code == 0 and took < 2.5, (code, took)
    assert not any(_alive(pid) for pid in pids)
    events = [e.get("event") for e in server.log_events()]
    assert events.count("worker_stopped") == 2 and events[-1] == "stopped"


@pytest.mark.slow
def test_a_killed_worker_is_restarted_while_the_other_answers(tables, reference):
    server = ServeProcess(
        _config(tables, "restart"),
        extra_args=["--workers", "2", "--shutdown-timeout", "2", "--access-log", "off"],
    ).start()
    try:
        pids = _worker_pids(server)
        keys = np.arange(10, 30, dtype=np.int64)
        expected = reference.lookup(keys, "m")
        os.kill(pids[0], signal.SIGKILL)
        # Until the kernel has closed its sockets, new connections may still land in the dead
        # worker's accept queue and be reset (SO_REUSEPORT); from then on the other answers.
        # The main thread shows as a zombie while other threads still hold the sockets: wait
        # until the supervisor has reaped it, which happens once every thread is gone.
        deadline = time.monotonic() + 10
        while os.path.exists(f"/proc/{pids[0]}"):
            assert time.monotonic() < deadline, "the killed worker did not go away"
            time.sleep(0.01)
        answered = 0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            protocol = "http" if answered % 2 else "grpc"
            url = server.http_url if protocol == "http" else server.grpc_url
            np.testing.assert_array_equal(_lookup(protocol, url, keys), expected)
            answered += 1
            metrics = scrape(server.metrics_url)
            if metrics['hps_worker_restarts_total{worker="0"}'] == 1 and metrics["hps_ready"]:
                break
        else:
            pytest.fail("the killed worker was not restarted:\n" + server.log_text()[-3000:])
        assert answered > 1
        restarting = [e for e in server.log_events() if e.get("event") == "worker_restarting"]
        assert restarting[0]["level"] == "warning" and restarting[0]["worker"] == 0
    finally:
        assert server.stop() == 0, server.log_text()[-3000:]


def test_a_supervisor_killed_with_sigkill_leaves_no_worker(tables):
    server = ServeProcess(
        _config(tables, "orphans"),
        extra_args=["--workers", "2", "--shutdown-timeout", "1", "--access-log", "off"],
    ).start()
    pids = _worker_pids(server)
    server.kill()
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in pids):
        assert time.monotonic() < deadline, "workers outlived their supervisor"
        time.sleep(0.05)


def test_a_worker_failing_at_start_stops_the_server_with_its_error(tables, tmp_path, hps):
    # The supervisor's checks pass (the config is valid; the model repository is the workers'
    # to load); each worker fails reading the package's manifest.
    repo = tmp_path / "repo"
    (repo / "broken").mkdir(parents=True)
    (repo / "broken" / "manifest.json").write_text("{not json")
    started = time.monotonic()
    res = hps(
        "serve",
        "--config",
        str(_config(tables, "failing")),
        "--model-repository",
        str(repo),
        "--workers",
        "2",
        "--http-port",
        "0",
        "--grpc-port",
        "0",
        "--metrics-port",
        "0",
        "--access-log",
        "off",
    )
    assert res.returncode == ExitCode.INVALID, res.stderr[-2000:]
    assert "error: " in res.stderr and "the manifest is not valid JSON" in res.stderr
    assert '"event": "worker_failed"' in res.stderr
    assert time.monotonic() - started < 60


def test_a_read_only_database_missing_is_refused_by_the_supervisor(tables, tmp_path, hps):
    # The checks validate-config runs, made once before any worker starts.
    missing = rocks_db(tmp_path / "no-such-db", read_only=True)
    config = _config(tables, "missing-db", persistent=missing)
    res = hps("serve", "--config", str(config), "--workers", "2", "--http-port", "0")
    assert res.returncode == ExitCode.INVALID, res.stderr[-2000:]
    assert "no RocksDB database here" in res.stderr
    assert '"worker":' not in res.stderr  # no worker was started


def test_repository_loads_and_unloads_are_refused(two_workers, reference):
    headers = {"Authorization": f"Bearer {TOKEN}"}
    for action in ("load", "unload"):
        status, _, body = http_post(
            two_workers.http_url, f"/v2/repository/models/m/{action}", b"{}", headers
        )
        error = json.loads(body)["error"]
        assert status == 400 and "2 worker processes" in error, (status, body)
    client = tgrpc.InferenceServerClient(two_workers.grpc_url)
    try:
        with pytest.raises(Exception, match="one of them only"):
            client.load_model("m", headers={"authorization": headers["Authorization"]})
    finally:
        client.close()
    keys = np.arange(0, ROWS, 11, dtype=np.int64)  # still served, by both workers
    _from_many_connections(
        two_workers,
        lambda i, j: keys,
        lambda a, got: np.testing.assert_array_equal(got, reference.lookup(keys, "m")),
    )


def test_every_worker_follows_its_database_being_rewritten(tmp_path, hps):
    """A family replaced by another process (convert --overwrite) is served by every worker
    (each reopens its read-only database), without a restart."""
    old = make_tables(tmp_path / "old", {"a": (ROWS, DIM)})["a"]
    new = tmp_path / "new" / "a"
    write_table(new, np.arange(ROWS), np.full((ROWS, DIM), 7.0, np.float32))
    db = tmp_path / "db"
    convert = ("convert", "--to", "rocksdb", "--model", "m", "--table", "a")
    res = hps(convert[0], str(old), str(db), *convert[1:])
    assert res.returncode == 0, res.stderr
    path = tmp_path / "ps.json"
    doc = ps_config({"a": old}, {"a": DIM}, volatile={"type": "disabled"}, persistent=rocks_db(db))
    path.write_text(json.dumps(doc))  # every lookup reaches RocksDB
    server = ServeProcess(
        path,
        extra_args=["--workers", "2", "--shutdown-timeout", "2", "--access-log", "off"],
    ).start()
    try:
        keys = np.arange(0, ROWS, 13, dtype=np.int64)
        before = synthetic_vectors(keys, DIM)
        _from_many_connections(
            server, lambda i, j: keys, lambda a, got: np.testing.assert_array_equal(got, before)
        )
        res = hps(convert[0], str(new), str(db), *convert[1:], "--overwrite")
        assert res.returncode == 0, res.stderr
        deadline = time.monotonic() + 30
        while True:  # every worker polls its database every 2 s
            seen = [(_lookup("http", server.http_url, keys) == 7.0).all() for _ in range(16)]
            if all(seen):
                break
            assert time.monotonic() < deadline, "a worker never saw the change"
            time.sleep(0.2)
        requests = _requests_by_worker(server)
        _from_many_connections(
            server, lambda i, j: keys, lambda a, got: np.testing.assert_array_equal(got, 7.0)
        )
        after = _requests_by_worker(server)
        assert all(after[w] > requests.get(w, 0) for w in ("0", "1")), (requests, after)
        reopened = [e for e in server.log_events() if "reopened" in str(e.get("message", ""))]
        assert {e.get("worker") for e in reopened} == {0, 1}, reopened
    finally:
        assert server.stop() == 0, server.log_text()[-3000:]


def test_updates_of_a_model_with_per_worker_caches_are_refused(tables, reference):
    server = ServeProcess(
        _config(tables, "cached", gpucache=True),
        extra_args=["--workers", "2", "--shutdown-timeout", "2", "--access-log", "off"],
        # Without a GPU the NumPy reference stands in for the embedding caches.
        env={"HPS_ADMIN_TOKEN": TOKEN, "HPS_CACHE_BACKEND": "reference"},
    ).start()
    try:
        keys = np.arange(0, ROWS, 3, dtype=np.int64)
        np.testing.assert_array_equal(
            _lookup("grpc", server.grpc_url, keys), reference.lookup(keys, "m")
        )
        status, body = _update(server, "insert", [3], np.ones((1, DIM), np.float32))
        assert status == 400 and "embedding cache" in body["error"], body
        assert "gpucache" in body["error"]
    finally:
        assert server.stop() == 0, server.log_text()[-3000:]


def test_each_worker_pins_its_event_loop_to_a_cpu_of_its_own(two_workers):
    """Worker i takes the i-th CPU allowed (event_loop.pin_event_loop's slot), so that the
    workers' event loops spread over the CPUs instead of piling onto one."""
    cpus = sorted(os.sched_getaffinity(0))
    events = [e for e in two_workers.log_events() if e.get("event") == "event_loop_pinned"]
    pinned = {e["worker"]: e["cpu"] for e in events}
    if len(cpus) < 2:
        assert pinned == {}
    else:
        assert pinned == {0: cpus[0], 1: cpus[1 % len(cpus)]}
