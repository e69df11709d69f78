"""Study: what a handler's own work costs a client at concurrency 1, HTTP and gRPC.

    python benchmarks/study_handler_cost.py [--spins 0,50,100,200] [--seconds 4]

The bare floor of bench_serve_floor.py (``_bare_kserve.py``: aiohttp and grpc.aio on one
uvloop, a canned answer) with ``--spin-us`` µs of busy work on the event loop before each
answer; one stock tritonclient client per protocol sends binary 128-key requests back to back.
Prints the time per request at each spin. If the time grows by the spin, a server's work costs
its clients what it takes; if by more, the protocol stack adds to it (the machine's two cores
are shared by the client's and the server's threads). A study: its figures explain the
concurrency-1 rows of docs/benchmarks.md ("hps serve"), they state no target.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def per_request_us(protocol: str, url: str, seconds: float) -> float:
    if protocol == "http":
        import tritonclient.http as module
    else:
        import tritonclient.grpc as module
    client = module.InferenceServerClient(url)
    keys = module.InferInput("KEYS", [1, 128], "INT64")
    keys.set_data_from_numpy(np.arange(128, dtype=np.int64).reshape(1, -1))
    count = module.InferInput("NUMKEYS", [1, 1], "INT32")
    count.set_data_from_numpy(np.array([[128]], np.int32))
    for _ in range(300):  # warm-up
        client.infer("emb", [keys, count])
    started, done = time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        client.infer("emb", [keys, count])
        done += 1
    return (time.perf_counter() - started) / done * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spins", default="0,50,100,200", help="µs of work per answer")
    ap.add_argument("--seconds", type=float, default=4.0)
    args = ap.parse_args()
    base: dict[str, float] = {}
    for spin in [float(s) for s in args.spins.split(",")]:
        command = [sys.executable, str(HERE / "_bare_kserve.py"), "--floats", "2048"]
        server = subprocess.Popen(
            [*command, "--spin-us", str(spin)], stdout=subprocess.PIPE, text=True
        )
        try:
            ports = json.loads(server.stdout.readline())
            line = []
            for protocol, port in (("http", ports["http_port"]), ("grpc", ports["grpc_port"])):
                us = per_request_us(protocol, f"127.0.0.1:{port}", args.seconds)
                base.setdefault(protocol, us)
                line.append(f"{protocol} {us:6.0f} us (+{us - base[protocol]:4.0f})")
            print(f"spin {spin:5.0f} us: " + ", ".join(line), flush=True)
        finally:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    main()
