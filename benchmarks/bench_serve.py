"""Benchmark: `hps serve` measured with tritonclient against in-process ``HPS.lookup``.

    python benchmarks/bench_serve.py --keys 500000 --dim 128 --seconds 4 --rounds 3

One dim-128 lookup model on the CPU tiers (in-process hash map holding every row, RocksDB
behind it; no embedding cache), served by a real `hps serve` child process. Clients are stock
tritonclient (HTTP and gRPC, binary tensors), one client per thread, threads spread over up to
4 client processes (tritonclient's HTTP ``async_infer`` sleeps 10 ms per call, so concurrency
comes from threads and processes, as perf_analyzer's concurrency mode keeps N requests in
flight). Every level runs for ``--seconds`` after a warm-up; throughput = requests completed in
the window / window.

1. Concurrency sweep with small requests (``--small-keys`` keys): throughput at concurrency 16
   must be at least the throughput at concurrency 1 (no collapse as in hugectr_backend issue 38).
2. 16 K-key requests (8 MiB of vectors per answer): served keys/s against ``HPS.lookup`` of the
   same key sets in a child process that loads the same table (its own RocksDB copy), one
   thread, in the same run. Transports: the binary tensor extension over HTTP and gRPC, and
   the same with the output written into a system shared memory region of the client (Triton's
   extension, tritonclient.utils.shared_memory). The rounds alternate baseline and served
   measurements (the machine is shared); ratios are per round, medians reported. Target:
   served ≥ 0.5× in-process. Every client checks its first answers against the table.

Prints one JSON document (also written to ``--out``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

import numpy as np

from hps_cli.devtools.serve_process import ServeProcess

MODEL = "emb"


# ---------------------------------------------------------------------------------- set-up


def make_config(work: Path, keys: int, dim: int, db: str) -> Path:
    from hps_cli.runtime.table.synthetic import write_synthetic_table

    table = work / "table"
    if not (table / "key").is_file():
        write_synthetic_table(table, keys, dim, shuffle=True)
    doc = {
        "supportlonglong": True,
        "volatile_db": {"type": "parallel_hash_map", "num_partitions": 16},
        "persistent_db": {"type": "rocks_db", "path": str(work / db)},
        "models": [
            {
                "model": MODEL,
                "sparse_files": [str(table)],
                "embedding_table_names": ["t"],
                "embedding_vecsize_per_table": [dim],
                "maxnum_catfeature_query_per_table_per_sample": [1],
                "default_value_for_each_table": [0.0],
                "deployed_device_list": [0],
                "max_batch_size": 65536,
                "gpucache": False,
            }
        ],
    }
    path = work / f"ps_{db}.json"
    path.write_text(json.dumps(doc, indent=1))
    return path


def key_sets(keys: int, per_request: int, count: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, keys, per_request, dtype=np.int64) for _ in range(count)]


# ---------------------------------------------------------------------------------- clients


def _client_process(
    url: str,
    transport: str,
    threads: int,
    keys: list,
    dim: int,
    start_at: float,
    seconds: float,
    queue,
) -> None:
    """``threads`` tritonclient clients, each a loop of synchronous requests in the window.

    ``transport``: http or grpc (binary tensors), or http-shm / grpc-shm (the output written by
    the server into a system shared memory region of the thread, Triton's extension)."""
    protocol = transport.split("-")[0]
    if protocol == "http":
        import tritonclient.http as module
    else:
        import tritonclient.grpc as module
    from hps_cli.runtime.table.synthetic import synthetic_vectors

    counts = [0] * threads
    errors: list[str] = []

    def run(index: int) -> None:
        handle = None
        try:
            client = module.InferenceServerClient(url)
            out_bytes = max(k.size for k in keys) * dim * 4
            outputs = None
            if transport.endswith("shm"):
                import tritonclient.utils.shared_memory as shm

                region = f"hps_bench_{os.getpid()}_{index}"
                handle = shm.create_shared_memory_region(region, "/" + region, out_bytes)
                client.register_system_shared_memory(region, "/" + region, out_bytes)
                out = module.InferRequestedOutput("OUTPUT0")
                out.set_shared_memory(region, out_bytes)
                outputs = [out]

            def result(answer, k):
                if handle is None:
                    return answer.as_numpy("OUTPUT0")
                return shm.get_contents_as_numpy(handle, np.float32, [1, k.size * dim])

            requests = []
            for k in keys:
                a = module.InferInput("KEYS", [1, k.size], "INT64")
                a.set_data_from_numpy(k.reshape(1, -1))
                b = module.InferInput("NUMKEYS", [1, 1], "INT32")
                b.set_data_from_numpy(np.array([[k.size]], np.int32))
                requests.append([a, b])
            for r, k in zip(requests[:2], keys):  # warm-up, and a check of the vectors
                got = result(client.infer(MODEL, r, outputs=outputs), k)
                if not np.array_equal(got.reshape(-1), synthetic_vectors(k, dim).reshape(-1)):
                    raise RuntimeError("wrong vectors")
            while time.time() < start_at:
                time.sleep(0.001)
            end, i = start_at + seconds, index
            while time.time() < end:
                k = keys[i % len(keys)]
                got = result(client.infer(MODEL, requests[i % len(requests)], outputs=outputs), k)
                if got.size != k.size * dim:
                    raise RuntimeError("wrong output size")
                if time.time() <= end:
                    counts[index] += 1
                i += 1
            if handle is not None:
                client.unregister_system_shared_memory(region)
        except Exception as exc:  # noqa: BLE001 - reported in the result
            errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            if handle is not None:
                shm.destroy_shared_memory_region(handle)

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    queue.put({"requests": sum(counts), "errors": errors})


def served(
    url: str, transport: str, concurrency: int, keys: list, seconds: float, dim: int
) -> dict:
    """Requests/s and keys/s at ``concurrency`` (threads over up to 4 client processes)."""
    ctx = mp.get_context("fork")
    procs_n = min(concurrency, 4)
    per = [concurrency // procs_n + (1 if i < concurrency % procs_n else 0) for i in range(procs_n)]
    queue = ctx.Queue()
    start_at = time.time() + 3.0 + 0.2 * concurrency  # time for clients to connect, warm up
    procs = [
        ctx.Process(
            target=_client_process, args=(url, transport, n, keys, dim, start_at, seconds, queue)
        )
        for n in per
    ]
    for p in procs:
        p.start()
    results = [queue.get(timeout=seconds + 300) for _ in procs]
    for p in procs:
        p.join()
    errors = [e for r in results for e in r["errors"]]
    requests = sum(r["requests"] for r in results)
    return {
        "protocol": transport,
        "concurrency": concurrency,
        "requests_per_s": round(requests / seconds, 1),
        "keys_per_s": round(requests * keys[0].size / seconds),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
    }


def in_process(config: Path, keys: list, seconds: float, threads: int = 1) -> dict:
    """``HPS.lookup`` of the same key sets in a fresh child process (its own runtime)."""
    code = f"""
import json, sys, threading, time
import numpy as np
from hps_cli.runtime import HPS
keys = [np.array(k, np.int64) for k in json.load(open(sys.argv[1]))]
hps = HPS(sys.argv[2])
for k in keys[:3]:
    hps.lookup(k, "{MODEL}", 0)
counts = [0] * {threads}
end = [0.0]
def run(index):
    i = index
    while time.perf_counter() < end[0]:
        hps.lookup(keys[i % len(keys)], "{MODEL}", 0)
        if time.perf_counter() <= end[0]:
            counts[index] += 1
        i += 1
end[0] = time.perf_counter() + {seconds}
workers = [threading.Thread(target=run, args=(i,)) for i in range({threads})]
[w.start() for w in workers]; [w.join() for w in workers]
hps.close()
print(json.dumps({{"requests": sum(counts)}}))
"""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump([k.tolist() for k in keys], f)
    try:
        out = subprocess.run(
            [sys.executable, "-c", code, f.name, str(config)],
            capture_output=True,
            text=True,
            check=True,
            timeout=900,
        )
    finally:
        os.unlink(f.name)
    requests = json.loads(out.stdout.strip().splitlines()[-1])["requests"]
    return {
        "threads": threads,
        "requests_per_s": round(requests / seconds, 1),
        "keys_per_s": round(requests * keys[0].size / seconds),
    }


# ---------------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keys", type=int, default=500_000, help="rows of the table")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--seconds", type=float, default=4.0, help="measurement window per level")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of the 16 K comparison")
    ap.add_argument("--small-keys", type=int, default=64, help="keys per request of the sweep")
    ap.add_argument("--big-keys", type=int, default=16384, help="keys per request, part 2")
    ap.add_argument("--sweep", default="1,2,4,8,16", help="concurrency levels of the sweep")
    ap.add_argument("--big-concurrency", default="1,2,4", help="concurrency levels, part 2")
    ap.add_argument("--protocols", default="http,grpc", help="of the sweep")
    ap.add_argument(
        "--big-transports",
        default="http,grpc,http-shm,grpc-shm",
        help="of the 16 K comparison (-shm: output in system shared memory)",
    )
    ap.add_argument("--server-args", default="", help="extra hps serve options")
    ap.add_argument("--work", type=Path, help="working folder (default: a temporary one)")
    ap.add_argument("--out", type=Path, help="also write the JSON result here")
    args = ap.parse_args()

    own = args.work is None
    work = Path(tempfile.mkdtemp(prefix="hps-bench-serve-")) if own else args.work
    work.mkdir(parents=True, exist_ok=True)
    protocols = args.protocols.split(",")
    try:
        served_cfg = make_config(work, args.keys, args.dim, "db_served")
        baseline_cfg = make_config(work, args.keys, args.dim, "db_baseline")
        server = ServeProcess(
            served_cfg,
            extra_args=["--access-log", "off", "--allow-shared-memory", *args.server_args.split()],
            log_path=work / "server.log",
            ready_timeout=600,
        ).start()
        try:
            small = key_sets(args.keys, args.small_keys, 64, 1)
            sweep = []
            for protocol in protocols:
                for c in [int(x) for x in args.sweep.split(",")]:
                    level = served(
                        getattr(server, f"{protocol}_url"),
                        protocol,
                        c,
                        small,
                        args.seconds,
                        args.dim,
                    )
                    sweep.append(level)
                    print(json.dumps(level), file=sys.stderr, flush=True)
            big = key_sets(args.keys, args.big_keys, 8, 2)
            rounds = []
            for _ in range(args.rounds):
                base = in_process(baseline_cfg, big, args.seconds)
                levels = []
                for transport in args.big_transports.split(","):
                    url = getattr(server, transport.split("-")[0] + "_url")
                    for c in [int(x) for x in args.big_concurrency.split(",")]:
                        levels.append(served(url, transport, c, big, args.seconds, args.dim))
                best = max(levels, key=lambda x: x["keys_per_s"])
                rounds.append(
                    {
                        "in_process": base,
                        "served": levels,
                        "best_ratio": round(best["keys_per_s"] / base["keys_per_s"], 3),
                        "best": f"{best['protocol']} c={best['concurrency']}",
                    }
                )
                print(json.dumps(rounds[-1]), file=sys.stderr, flush=True)
        finally:
            code = server.stop(timeout=120)
        by = {}
        for level in sweep:
            by.setdefault(level["protocol"], {})[level["concurrency"]] = level["requests_per_s"]
        ratios = [r["best_ratio"] for r in rounds]
        per_level = {}
        for r in rounds:
            for level in r["served"]:
                key = f"{level['protocol']} c={level['concurrency']}"
                per_level.setdefault(key, []).append(
                    level["keys_per_s"] / r["in_process"]["keys_per_s"]
                )
        result = {
            "benchmark": "hps serve",
            "date": date.today().isoformat(),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
            "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
            "table": {
                "keys": args.keys,
                "dim": args.dim,
                "tiers": "parallel_hash_map (all rows) + rocks_db; no cache",
            },
            "sweep_small_requests": {
                "keys_per_request": args.small_keys,
                "levels": sweep,
                "c16_over_c1": {
                    p: round(v[16] / v[1], 2) for p, v in by.items() if 1 in v and 16 in v
                },
            },
            "big_requests": {
                "keys_per_request": args.big_keys,
                "rounds": rounds,
                "median_best_ratio": float(np.median(ratios)),
                "median_ratio_per_level": {
                    k: round(float(np.median(v)), 3) for k, v in per_level.items()
                },
            },
            "server_exit_code": code,
            "errors": sum(level["errors"] for level in sweep)
            + sum(level["errors"] for r in rounds for level in r["served"]),
        }
        text = json.dumps(result, indent=2)
        print(text)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(text)
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
