"""Benchmark: `hps serve` with ``deployed_device_list: [0, 1]`` against ``[0]``, in the same run.

    python benchmarks/bench_serve_devices.py                  # two GPUs (target: >= 1.6x)
    python benchmarks/bench_serve_devices.py --backend reference --keys 20000 --dim 16 \\
        --per-request 256 --concurrency 4 --seconds 1 --rounds 1   # CPU smoke run

One lookup model over a synthetic table (``--keys`` rows of ``--dim``), a dynamic embedding
cache of ``--gpucacheper`` of the rows on each device (prefilled, ``hit_rate_threshold`` 1.0:
exact), the CPU tiers (``parallel_hash_map``) holding every row. Two `hps serve` child processes
run side by side, identical but for ``deployed_device_list``: ``[0, 1]`` (the server spreads the
batches over both devices, ``--instances`` executions per device) and ``[0]``. Clients: stock
tritonclient (``--protocol``, binary tensors), ``--concurrency`` synchronous clients (threads
over up to 4 processes), each request ``--per-request`` keys drawn uniformly from the table.
Every round measures both servers for ``--seconds`` after a warm-up, alternating which goes
first; throughput = requests completed in the window / window; the ratio two / one is per round,
the median reported. Every client checks its first answers against the table. The metrics give
the executions each device ran in the two-device server's windows.

Memory per device: what ``hps bench cache-size`` computes for a dynamic cache
(``cache_memory_bytes`` of ``num_sets_for(rows, gpucacheper)`` sets, per table and device),
against what the devices report (``nvidia-smi``'s used memory of each GPU, before the servers
start and after each is ready: the difference includes the CUDA context, the worker buffers and
the pinned pool). With the NumPy reference (``--backend reference``, or no GPU) there is no
device to ask: only the formula and the servers' resident memory are reported.

``--backend``: ``gpu`` (the default; HPS_CACHE_BACKEND=gpu: a missing GPU is an error),
``reference`` (the NumPy stand-ins: a functional smoke run, not a performance figure: both
servers share the same CPU cores) or ``auto``. Prints one JSON document (also written to
``--out``); exit code 1 when a client saw an error or a wrong answer.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import date
from pathlib import Path
from statistics import median

import numpy as np

from hps_cli.devtools.serve_process import ServeProcess

MODEL = "emb"
TARGET = 1.6


def make_config(work: Path, args, devices: list[int]) -> Path:
    from hps_cli.runtime.table.synthetic import write_synthetic_table

    table = work / "table"
    if not (table / "key").is_file():
        write_synthetic_table(table, args.keys, args.dim, shuffle=True)
    doc = {
        "supportlonglong": True,
        "volatile_db": {"type": "parallel_hash_map", "num_partitions": 16},
        "models": [
            {
                "model": MODEL,
                "sparse_files": [str(table)],
                "embedding_table_names": ["t"],
                "embedding_vecsize_per_table": [args.dim],
                "maxnum_catfeature_query_per_table_per_sample": [args.per_request],
                "default_value_for_each_table": [0.0],
                "deployed_device_list": devices,
                "max_batch_size": 64,
                "gpucache": True,
                "gpucacheper": args.gpucacheper,
                "hit_rate_threshold": 1.0,
                "num_of_worker_buffer_in_pool": max(2, 2 * args.instances),
            }
        ],
    }
    path = work / f"ps_{len(devices)}dev.json"
    path.write_text(json.dumps(doc, indent=1))
    return path


def gpu_memory_used() -> list[int] | None:
    """Bytes used on each GPU as nvidia-smi reports them (None without nvidia-smi)."""
    if shutil.which("nvidia-smi") is None:
        return None
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        return None
    return [int(line) << 20 for line in out.stdout.split()]


def predicted_cache_bytes(rows: int, dim: int, gpucacheper: float) -> int:
    from hps_cli.runtime.gpu.placement import num_sets_for

    from hps_cli.bench.cache_size import cache_memory_bytes

    return cache_memory_bytes(num_sets_for(rows, gpucacheper), dim)


# ---------------------------------------------------------------------------------- clients


def _client_process(url, protocol, threads, keys, dim, start_at, seconds, queue) -> None:
    """``threads`` synchronous clients, each a loop of requests inside the window."""
    if protocol == "http":
        import tritonclient.http as module
    else:
        import tritonclient.grpc as module
    from hps_cli.runtime.table.synthetic import synthetic_vectors

    counts = [0] * threads
    errors: list[str] = []

    def run(index: int) -> None:
        try:
            client = module.InferenceServerClient(url)
            requests = []
            for k in keys:
                a = module.InferInput("KEYS", [1, k.size], "INT64")
                a.set_data_from_numpy(k.reshape(1, -1))
                b = module.InferInput("NUMKEYS", [1, 1], "INT32")
                b.set_data_from_numpy(np.array([[k.size]], np.int32))
                requests.append([a, b])
            for r, k in zip(requests[:2], keys):  # warm-up, and a check of the vectors
                got = client.infer(MODEL, r).as_numpy("OUTPUT0").reshape(-1)
                if not np.array_equal(got, synthetic_vectors(k, dim).reshape(-1)):
                    raise RuntimeError("wrong vectors")
            while time.time() < start_at:
                time.sleep(0.001)
            end, i = start_at + seconds, index
            while time.time() < end:
                got = client.infer(MODEL, requests[i % len(requests)]).as_numpy("OUTPUT0")
                if got.size != keys[i % len(keys)].size * dim:
                    raise RuntimeError("wrong output size")
                if time.time() <= end:
                    counts[index] += 1
                i += 1
        except Exception as exc:  # noqa: BLE001 - reported in the result
            errors.append(f"{type(exc).__name__}: {exc}")

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    queue.put({"requests": sum(counts), "errors": errors})


def metrics_lines(server: ServeProcess) -> list[str]:
    with urllib.request.urlopen(server.metrics_url, timeout=30) as response:
        return response.read().decode().splitlines()


def executions(server: ServeProcess) -> dict[str, float]:
    """hps_executions_total of the model by device label."""
    out = {}
    for line in metrics_lines(server):
        if line.startswith("hps_executions_total{") and f'model="{MODEL}"' in line:
            device = line.split('device="')[1].split('"')[0]
            out[device] = float(line.rsplit(" ", 1)[1])
    return out


def measure(server: ServeProcess, args, keys: list) -> dict:
    url = server.grpc_url if args.protocol == "grpc" else server.http_url
    ctx = mp.get_context("fork")
    procs_n = min(args.concurrency, 4)
    per = [
        args.concurrency // procs_n + (1 if i < args.concurrency % procs_n else 0)
        for i in range(procs_n)
    ]
    queue = ctx.Queue()
    start_at = time.time() + 2.0 + 0.1 * args.concurrency  # clients connect and warm up
    before = executions(server)
    procs = [
        ctx.Process(
            target=_client_process,
            args=(url, args.protocol, n, keys, args.dim, start_at, args.seconds, queue),
        )
        for n in per
    ]
    for p in procs:
        p.start()
    results = [queue.get(timeout=args.seconds + 600) for _ in procs]
    for p in procs:
        p.join()
    after = executions(server)
    errors = [e for r in results for e in r["errors"]]
    requests = sum(r["requests"] for r in results)
    return {
        "requests_per_s": round(requests / args.seconds, 1),
        "keys_per_s": round(requests * args.per_request / args.seconds),
        "executions_by_device": {d: after[d] - before.get(d, 0) for d in sorted(after)},
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
    }


# ---------------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keys", type=int, default=2_000_000, help="rows of the table")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--per-request", type=int, default=2048, help="keys per request")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=5.0, help="measurement window")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--gpucacheper", type=float, default=1.0, help="cache share of the rows")
    ap.add_argument("--instances", type=int, default=2, help="executions per device")
    ap.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    ap.add_argument("--backend", choices=("gpu", "reference", "auto"), default="gpu")
    ap.add_argument("--work", type=Path, help="working folder (default: a temporary one)")
    ap.add_argument("--out", type=Path, help="also write the JSON result here")
    args = ap.parse_args()

    own = args.work is None
    work = Path(tempfile.mkdtemp(prefix="hps-bench-devices-")) if own else args.work
    work.mkdir(parents=True, exist_ok=True)
    env = {"HPS_CACHE_BACKEND": args.backend}
    server_args = ["--access-log", "off", "--instances", str(args.instances)]
    rng = np.random.default_rng(7)
    keys = [rng.integers(0, args.keys, args.per_request, dtype=np.int64) for _ in range(16)]
    servers: dict[str, ServeProcess] = {}
    memory: dict = {}
    try:
        used = gpu_memory_used() if args.backend != "reference" else None
        for name, devices in (("two", [0, 1]), ("one", [0])):
            servers[name] = ServeProcess(
                make_config(work, args, devices),
                extra_args=server_args,
                env=env,
                log_path=work / f"server_{name}.log",
                ready_timeout=1200,
            ).start()
            now = gpu_memory_used() if used is not None else None
            memory[name] = {
                "device_memory_delta_bytes": (
                    [b - a for a, b in zip(used, now)] if used and now else None
                ),
            }
            used = now
        rounds = []
        for r in range(args.rounds):
            order = ("two", "one") if r % 2 == 0 else ("one", "two")
            result = {name: measure(servers[name], args, keys) for name in order}
            result["ratio"] = round(
                result["two"]["keys_per_s"] / max(1, result["one"]["keys_per_s"]), 3
            )
            rounds.append(result)
            print(json.dumps(result), file=sys.stderr, flush=True)
        for name, server in servers.items():
            memory[name]["server_rss_bytes"] = next(
                (
                    float(line.split()[1])
                    for line in metrics_lines(server)
                    if line.startswith("process_resident_memory_bytes ")
                ),
                None,
            )
    finally:
        codes = {name: server.stop(timeout=120) for name, server in servers.items()}
        if own:
            shutil.rmtree(work, ignore_errors=True)
    ratios = [r["ratio"] for r in rounds]
    errors = sum(r[n]["errors"] for r in rounds for n in ("two", "one"))
    predicted = predicted_cache_bytes(args.keys, args.dim, args.gpucacheper)
    doc = {
        "benchmark": "bench_serve_devices",
        "date": date.today().isoformat(),
        "machine": {
            "host": platform.node(),
            "cpus": mp.cpu_count(),
            "python": sys.version.split()[0],
        },
        "backend": args.backend,
        "params": {
            k: getattr(args, k)
            for k in (
                "keys",
                "dim",
                "per_request",
                "concurrency",
                "seconds",
                "rounds",
                "gpucacheper",
                "instances",
                "protocol",
            )
        },
        "rounds": rounds,
        "ratio_median": median(ratios) if ratios else None,
        "ratio_range": [min(ratios), max(ratios)] if ratios else None,
        "target": TARGET,
        "meets_target": bool(ratios) and median(ratios) >= TARGET,
        "memory": {
            "predicted_cache_bytes_per_device": predicted,
            "two_devices": {**memory.get("two", {}), "predicted_per_device": [predicted] * 2},
            "one_device": {**memory.get("one", {}), "predicted_per_device": [predicted]},
        },
        "errors": errors,
        "server_exit_codes": codes,
    }
    text = json.dumps(doc, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 1 if errors or any(codes.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
