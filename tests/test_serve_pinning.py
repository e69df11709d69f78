"""hps serve keeps its event loop and gRPC's poller thread on one CPU (event_loop.py,
``pin_event_loop``), unless told not to; the other threads stay free."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from helpers.runtime_configs import make_tables, ps_config
from helpers.serve_client import lookup_inputs

from hps_cli.devtools.serve_process import ServeProcess

CPUS = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
pytestmark = pytest.mark.skipif(len(CPUS) < 2, reason="pinning needs two CPUs or more")

PROBE = """
import asyncio, json, os, threading
import grpc
from hps_cli.runtime.cpu_affinity import free_this_thread
from hps_cli.serve.event_loop import pin_event_loop, run

def affinity():
    return {t.name: sorted(os.sched_getaffinity(t.native_id)) for t in threading.enumerate()}

async def main():
    server = grpc.aio.server()
    server.add_insecure_port("127.0.0.1:0")
    await server.start()
    before = affinity()
    cpu = pin_event_loop(SLOT)
    started = {}

    def report(free):
        if free:
            free_this_thread()
        started[free] = sorted(os.sched_getaffinity(0))

    for free in (False, True):  # threads the pinned loop starts: inherit, unless freed
        thread = threading.Thread(target=report, args=(free,))
        thread.start()
        thread.join()
    doc = {"cpu": cpu, "before": before, "after": affinity(), "started": started}
    print(json.dumps(doc))
    await server.stop(0)

run(main())
"""


def _probe(slot) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", PROBE.replace("SLOT", repr(slot))],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("slot", [None, 0, 1, len(CPUS) + 1])
def test_the_loop_and_the_grpc_poller_share_one_cpu_and_the_rest_stay_free(slot):
    doc = _probe(slot)
    cpu = doc["cpu"]
    assert cpu in CPUS
    if slot is not None:
        assert cpu == CPUS[slot % len(CPUS)]  # worker i takes the i-th allowed CPU
    after = doc["after"]
    pollers = [name for name in after if "_poll_wrapper" in name]
    assert pollers and after["MainThread"] == [cpu]
    for name, cpus in after.items():
        if name == "MainThread" or name in pollers:
            assert cpus == [cpu], name
        else:
            assert cpus == doc["before"][name], name  # e.g. gRPC's other threads
    assert doc["started"] == {"false": [cpu], "true": CPUS}


def _single_cpu_threads(pid: int) -> list[str]:
    """The CPU lists of the process's threads that may run on one CPU only."""
    pinned = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = (task / "status").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        allowed = status.split("Cpus_allowed_list:")[1].split()[0]
        if "," not in allowed and "-" not in allowed:
            pinned.append(allowed)
    return pinned


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pinning")
    paths = make_tables(tmp, {"a": (200, 8)})
    path = tmp / "ps.json"
    path.write_text(json.dumps(ps_config(paths, {"a": 8}, max_batch_size=65536)))
    return path


def _lookups(server) -> None:
    """Small lookups (run on the event loop) and big ones (in the server's worker threads,
    which the pinned loop starts on demand)."""
    for protocol, url in (("http", server.http_url), ("grpc", server.grpc_url)):
        module = thttp if protocol == "http" else tgrpc
        client = module.InferenceServerClient(url)
        for size in (16, 8192, 8192, 16):
            keys = np.arange(size, dtype=np.int64) % 200
            got = client.infer("m", lookup_inputs(module, keys, [size])).as_numpy("OUTPUT0")
            assert got.size == size * 8


def test_hps_serve_pins_its_loop_and_poller_by_default_and_not_when_told(config):
    with ServeProcess(config, extra_args=["--access-log", "off"]) as server:
        _lookups(server)
        pinned = [e for e in server.log_events() if e.get("event") == "event_loop_pinned"]
        assert len(pinned) == 1 and pinned[0]["cpu"] in CPUS
        # the loop and the poller; the worker threads the loop started are free
        assert _single_cpu_threads(server.process.pid) == [str(pinned[0]["cpu"])] * 2
    args = ["--access-log", "off", "--no-pin-event-loop"]
    with ServeProcess(config, extra_args=args) as server:
        _lookups(server)
        assert not [e for e in server.log_events() if e.get("event") == "event_loop_pinned"]
        assert _single_cpu_threads(server.process.pid) == []


RUNTIME_PROBE = """
import json, os, threading
import numpy as np
from hps_cli.runtime.cpu_affinity import allowed_cpus, pin_threads
from hps_cli.runtime.gpu import embedding_cache

cpu = allowed_cpus()[0]
assert pin_threads(cpu, [threading.get_native_id()])  # as if this were the pinned event loop
seen = {}

def where(name):
    seen.setdefault(name, sorted(os.sched_getaffinity(0)))

inserter = embedding_cache.AsyncInserter(2)
for _ in range(4):
    assert inserter.submit(lambda: where("cache inserter"))
inserter.flush(30)
keys = np.arange(3 * embedding_cache.FETCH_PART_KEYS, dtype=np.int64)

def fetch(part):
    where("fetch pool" if threading.current_thread().name.startswith("hps-fetch") else "caller")
    return np.zeros((part.size, 4), np.float32)

embedding_cache.fetch_in_parts(fetch, keys, 4)
inserter.close()
print(json.dumps({"cpu": cpu, "seen": seen, "here": sorted(os.sched_getaffinity(0))}))
"""


def test_the_runtime_pools_a_pinned_thread_starts_are_free():
    """The cache's background inserter and the fetch pool start their threads from whichever
    thread submits first, which may be hps serve's pinned event loop (small lookups run there):
    their threads run on every CPU, the submitter stays pinned."""
    done = subprocess.run(
        [sys.executable, "-c", RUNTIME_PROBE], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    doc = json.loads(done.stdout.strip().splitlines()[-1])
    assert doc["here"] == [doc["cpu"]]
    assert doc["seen"]["cache inserter"] == CPUS
    assert doc["seen"]["fetch pool"] == CPUS
