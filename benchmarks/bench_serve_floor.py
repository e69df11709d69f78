"""Benchmark: `hps serve` lookups against a bare server of the same stack, in the same run.

    python benchmarks/bench_serve_floor.py --keys 100000 --dim 16 --per-request 128 --rounds 5
    python benchmarks/bench_serve_floor.py --workers 1,2   # hps serve --workers 1 and 2

hps: one lookup model over a synthetic table (``--keys`` rows of dim ``--dim``, CPU tiers:
``parallel_hash_map`` holding every row + ``rocks_db``, no embedding cache), a real `hps serve`
child process with default options (started by ``hps_cli.devtools.serve_process``, as the
tests and examples start it). With ``--workers`` one hps server per count runs beside the floor
(``hps serve --workers N``), all of them over ``multi_process_hash_map`` (the volatile tier
several workers share; each server its own segment and RocksDB copy) so that the counts compare
like for like; the floor stays one bare process.

Floor: ``_bare_kserve.py``, a minimal aiohttp app and a minimal grpc.aio server on the same
event loop (uvloop when installed, its thread and gRPC's poller pinned to one CPU, as hps serve
runs them by default), answering each infer request with a canned
binary KServe response of the same size (FP32
``[1, per_request * dim]``) without parsing it.

Clients: stock tritonclient (HTTP: ``tritonclient.http``, gRPC: ``tritonclient.grpc``, binary
tensors, the Triton HPS backend's KEYS/NUMKEYS), one synchronous client per thread, threads over
up to 4 client processes; the same client code and key sets against both servers. Keys are drawn
uniformly from the table's keys (every key is in the table: hit rate 100 %, all from the
volatile tier). Every level runs ``--seconds`` after a warm-up; throughput = requests completed
in the window / window; the servers' CPU time (all threads, from /proc) over the requests sent
gives their CPU per request (a supervisor's includes its workers'). A round measures every
server back to back at each (protocol, concurrency), rotating which goes first; ratios are per
round, medians and ranges reported (the machine is shared and noisy; client and servers share
its cores).

Prints one JSON document (also written to ``--out``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

import numpy as np

MODEL = "emb"
HERE = Path(__file__).resolve().parent


def make_config(work: Path, keys: int, dim: int, name: str = "", shared: bool = False) -> Path:
    """The ps.json of one hps server (``name`` keeps the RocksDB folders and shared-memory
    segments of several servers apart)."""
    from hps_cli.runtime.table.synthetic import write_synthetic_table

    table = work / "table"
    if not (table / "key").is_file():
        write_synthetic_table(table, keys, dim, shuffle=True)
    volatile = {"type": "parallel_hash_map", "num_partitions": 16}
    if shared:
        volatile = {
            "type": "multi_process_hash_map",
            "num_partitions": 16,
            "shared_memory_size": max(64 << 20, 4 * keys * (dim * 4 + 32)),
            "shared_memory_name": f"hps_bench_floor_{os.getpid()}{name}",
        }
    doc = {
        "supportlonglong": True,
        "volatile_db": volatile,
        "persistent_db": {"type": "rocks_db", "path": str(work / f"db{name}")},
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
    path = work / f"ps{name}.json"
    path.write_text(json.dumps(doc, indent=1))
    return path


class BareServer:
    """The floor (``_bare_kserve.py``) as a child process, and its ports."""

    def __init__(self, floats: int, log: Path):
        cmd = [sys.executable, str(HERE / "_bare_kserve.py"), "--floats", str(floats)]
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            for line in log.read_text(errors="replace").splitlines():
                if line.startswith('{"http_port"'):
                    doc = json.loads(line)
                    self.http = f"127.0.0.1:{doc['http_port']}"
                    self.grpc = f"127.0.0.1:{doc['grpc_port']}"
                    return
            if self.proc.poll() is not None:
                raise RuntimeError(log.read_text()[-3000:])
            time.sleep(0.1)
        raise RuntimeError(f"{cmd} was not ready in time")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=120)


class HpsServer:
    """`hps serve` of ``config`` (ServeProcess), with the floor's attributes."""

    def __init__(self, config: Path, extra_args: list[str], log: Path):
        from hps_cli.devtools.serve_process import ServeProcess

        self.server = ServeProcess(
            config, extra_args=["--access-log", "off", *extra_args], log_path=log
        ).start()
        self.pid = self.server.process.pid
        self.http, self.grpc = self.server.http_url, self.server.grpc_url

    def stop(self) -> int:
        return self.server.stop(timeout=120)


def _client_process(url, protocol, threads, keys, dim, check, start_at, seconds, queue):
    if protocol == "http":
        import tritonclient.http as module
    else:
        import tritonclient.grpc as module
    from hps_cli.runtime.table.synthetic import synthetic_vectors

    counts = [0] * threads
    extra = [0] * threads  # requests outside the window (warm-up, after the end)
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
                extra[index] += 1
                got = client.infer(MODEL, r).as_numpy("OUTPUT0")
                if got.size != k.size * dim:
                    raise RuntimeError("wrong output size")
                if check and not np.array_equal(got.reshape(-1), synthetic_vectors(k, dim).ravel()):
                    raise RuntimeError("wrong vectors")
            while time.time() < start_at:
                time.sleep(0.001)
            end, i = start_at + seconds, index
            while time.time() < end:
                got = client.infer(MODEL, requests[i % len(requests)]).as_numpy("OUTPUT0")
                if got.size != keys[0].size * dim:
                    raise RuntimeError("wrong output size")
                if time.time() <= end:
                    counts[index] += 1
                else:
                    extra[index] += 1
                i += 1
        except Exception as exc:  # noqa: BLE001 - reported in the result
            errors.append(f"{type(exc).__name__}: {exc}")

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    queue.put({"requests": sum(counts), "warmup": sum(extra), "errors": errors})


def _stat(pid: int) -> list[str]:
    return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of a process (all its threads) and of its children that
    are still running (a supervisor's workers)."""
    pids = [pid]
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if int(_stat(int(entry))[1]) == pid:
                    pids.append(int(entry))
            except (OSError, IndexError):
                pass  # gone meanwhile
    total = 0
    for p in pids:
        try:
            fields = _stat(p)
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def measure(url, protocol, concurrency, keys, dim, seconds, check, pid) -> dict:
    ctx = mp.get_context("fork")
    procs_n = min(concurrency, 4)
    per = [concurrency // procs_n + (1 if i < concurrency % procs_n else 0) for i in range(procs_n)]
    queue = ctx.Queue()
    start_at = time.time() + 2.0 + 0.1 * concurrency
    args = (url, protocol)
    procs = [
        ctx.Process(
            target=_client_process, args=(*args, n, keys, dim, check, start_at, seconds, queue)
        )
        for n in per
    ]
    for p in procs:
        p.start()
    cpu_before = cpu_seconds(pid)  # the window and the warm-up around it: CPU per request
    results = [queue.get(timeout=seconds + 300) for _ in procs]
    cpu = cpu_seconds(pid) - cpu_before
    for p in procs:
        p.join()
    errors = [e for r in results for e in r["errors"]]
    done = sum(r["requests"] + r["warmup"] for r in results)
    return {
        "requests_per_s": round(sum(r["requests"] for r in results) / seconds, 1),
        "server_cpu_us_per_request": round(cpu / max(1, done) * 1e6),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keys", type=int, default=100_000, help="rows of the table")
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--per-request", type=int, default=128, help="keys per request")
    ap.add_argument("--seconds", type=float, default=3.0, help="measurement window per level")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--concurrency", default="1,16")
    ap.add_argument("--protocols", default="http,grpc")
    ap.add_argument("--server-args", default="", help="extra hps serve options")
    ap.add_argument(
        "--workers",
        default="",
        help="comma-separated worker counts: one hps serve --workers N per count, over "
        "multi_process_hash_map (default: one hps server, parallel_hash_map)",
    )
    ap.add_argument("--work", type=Path, help="working folder (default: a temporary one)")
    ap.add_argument("--out", type=Path, help="also write the JSON result here")
    args = ap.parse_args()

    own = args.work is None
    work = Path(tempfile.mkdtemp(prefix="hps-bench-floor-")) if own else args.work
    work.mkdir(parents=True, exist_ok=True)
    load_before = [round(x, 2) for x in os.getloadavg()]
    levels = [(p, int(c)) for p in args.protocols.split(",") for c in args.concurrency.split(",")]
    counts = [int(n) for n in args.workers.split(",")] if args.workers else []
    variants = {f"hps-w{n}": n for n in counts} or {"hps": 0}
    try:
        servers = {}
        try:
            for name, n in variants.items():
                config = make_config(work, args.keys, args.dim, name, shared=bool(counts))
                extra = args.server_args.split() + (["--workers", str(n)] if n else [])
                servers[name] = HpsServer(config, extra, work / f"{name}.log")
            servers["bare"] = BareServer(args.per_request * args.dim, work / "bare.log")
        except BaseException:
            for server in servers.values():
                server.stop()
            raise
        rng = np.random.default_rng(1)
        keys = [rng.integers(0, args.keys, args.per_request, dtype=np.int64) for _ in range(64)]
        rounds = []
        try:
            for r in range(args.rounds):
                names = list(servers)
                shift = r % len(names)  # who goes first changes every round
                order = names[shift:] + names[:shift]
                this = {}
                for protocol, c in levels:
                    got = {}
                    for name in order:
                        url = getattr(servers[name], protocol)
                        got[name] = measure(
                            url,
                            protocol,
                            c,
                            keys,
                            args.dim,
                            args.seconds,
                            name != "bare",
                            servers[name].pid,
                        )
                    for name in variants:
                        got[_ratio(name)] = round(
                            got[name]["requests_per_s"] / got["bare"]["requests_per_s"], 3
                        )
                    this[f"{protocol} c={c}"] = got
                    print(json.dumps({"round": r, f"{protocol} c={c}": got}), file=sys.stderr)
                rounds.append(this)
        finally:
            codes = {name: server.stop() for name, server in servers.items()}
        summary = {}
        for protocol, c in levels:
            name = f"{protocol} c={c}"
            level: dict = {}
            for v in variants:
                ratios = [r[name][_ratio(v)] for r in rounds]
                prefix = "" if v == "hps" else f"{v}_"
                level[f"{prefix}ratio_median"] = round(float(np.median(ratios)), 3)
                level[f"{prefix}ratio_range"] = [min(ratios), max(ratios)]
            for s in servers:
                rates = [r[name][s]["requests_per_s"] for r in rounds]
                level[f"{s}_requests_per_s_median"] = float(np.median(rates))
            level["server_cpu_us_per_request_median"] = {
                s: float(np.median([r[name][s]["server_cpu_us_per_request"] for r in rounds]))
                for s in servers
            }
            summary[name] = level
        result = {
            "benchmark": "hps serve against a bare server of the same stack",
            "date": date.today().isoformat(),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
            "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
            "table": {"keys": args.keys, "dim": args.dim, "per_request": args.per_request},
            "keys": "uniform over the table's keys, hit rate 100 % (volatile tier)",
            "volatile_tier": "multi_process_hash_map" if counts else "parallel_hash_map",
            "hps_servers": {
                name: f"--workers {n}" if n else "one process" for name, n in variants.items()
            },
            "load_average_before": load_before,
            "event_loop": "uvloop" if _uses_uvloop() else "asyncio",
            "summary": summary,
            "rounds": rounds,
            "exit_codes": codes,
            "errors": sum(r[n][s]["errors"] for r in rounds for n in r for s in servers),
        }
        text = json.dumps(result, indent=2)
        print(text)
        if args.out:
            args.out.write_text(text)
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)


def _ratio(variant: str) -> str:
    return "ratio" if variant == "hps" else f"{variant}_ratio"


def _uses_uvloop() -> bool:
    from hps_cli.serve.event_loop import uses_uvloop

    return uses_uvloop()


if __name__ == "__main__":
    main()
