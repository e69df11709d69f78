"""Benchmark: many small tables with table fusion (fuse_embedding_table) against without, in one
run, in process and through `hps serve`.

    python benchmarks/bench_fusion.py --tables 26 --rows 2048 --dim 16 --keys 32,512

``--tables`` small tables of ``--rows`` rows and one dim, keys apart (table t holds keys
``t × rows ...``), as a DLRM's categorical features; a lookup asks ``--keys`` keys of every
table (uniform over that table: one key per sample and table, so ``--keys`` is the batch size),
the Triton HPS backend's request: KEYS = all tables' keys concatenated, NUMKEYS = keys per
table. Two configs differ only in the top-level
``fuse_embedding_table``; fused, the tables are one table (``fused_embedding0``), one cache
and one query per lookup. Two setups: the CPU tiers alone (``parallel_hash_map``,
``gpucache`` false) and the dynamic cache holding every row (``gpucacheper`` 1.0,
``hit_rate_threshold`` 1.0; the NumPy reference cache unless ``HPS_CACHE_BACKEND`` says
otherwise).

- In process: one child process holds both runtimes of a setup and alternates timed blocks of
  ``HPS.lookup_concatenated`` (unfused, fused; ``--block-seconds`` each) for ``2 × --rounds``
  rounds; the ratio is per round, the median reported.
- Served: two `hps serve` processes (unfused and fused config) run side by side; one stock
  tritonclient HTTP client (binary tensors) sends requests for ``--seconds`` to one, then the
  other, alternating for ``--rounds`` rounds; the fused/unfused ratio of requests/s per round,
  the median reported.

Both check that fused answers equal unfused ones before timing. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

MODEL = "dlrm"
SETUPS = {
    "cpu_tiers": {"gpucache": False},
    "dynamic_cache": {"gpucache": True, "gpucacheper": 1.0, "hit_rate_threshold": 1.0},
}


def make_tables(work: Path, tables: int, rows: int, dim: int) -> list[str]:
    from hps_cli.runtime.table.synthetic import write_synthetic_table

    paths = []
    for t in range(tables):
        path = work / f"table{t}"
        if not path.exists():
            write_synthetic_table(path, rows, dim, first_key=t * rows, shuffle=True, seed=t)
        paths.append(str(path))
    return paths


def make_config(work: Path, paths: list[str], dim: int, keys: int, fused: bool, setup: str):
    tables = len(paths)
    doc = {
        "supportlonglong": True,
        "fuse_embedding_table": fused,
        "volatile_db": {"type": "parallel_hash_map", "num_partitions": 8},
        "models": [
            {
                "model": MODEL,
                "sparse_files": paths,
                "embedding_table_names": [f"C{t + 1}" for t in range(tables)],
                "embedding_vecsize_per_table": [dim] * tables,
                "maxnum_catfeature_query_per_table_per_sample": [1] * tables,
                "default_value_for_each_table": [0.0] * tables,
                "deployed_device_list": [0],
                "max_batch_size": keys,
                "num_of_worker_buffer_in_pool": 4,
                **SETUPS[setup],
            }
        ],
    }
    path = work / f"{setup}-{'fused' if fused else 'unfused'}.json"
    path.write_text(json.dumps(doc, indent=2))
    return path


def requests(tables: int, rows: int, keys: int, count: int, seed: int) -> list[np.ndarray]:
    """``count`` requests: ``keys`` keys of every table, concatenated in table order."""
    rng = np.random.default_rng(seed)
    return [
        np.concatenate([rng.integers(t * rows, (t + 1) * rows, keys) for t in range(tables)])
        for _ in range(count)
    ]


# ---------------------------------------------------------------------------------- in process

_IN_PROCESS = """
import json, statistics, sys, time
import numpy as np
from hps_cli.runtime import HPS
unfused_cfg, fused_cfg, tables, rows, keys, rounds, block = sys.argv[1:8]
tables, rows, keys, rounds = map(int, (tables, rows, keys, rounds))
block = float(block)
rng = np.random.default_rng(1)
reqs = [np.concatenate([rng.integers(t * rows, (t + 1) * rows, keys) for t in range(tables)])
        for _ in range(16)]
counts = [keys] * tables
runtimes = {"unfused": HPS(unfused_cfg), "fused": HPS(fused_cfg)}
for r in reqs[:4]:  # warm-up and the check
    a = runtimes["unfused"].lookup_concatenated(r, counts, "dlrm")
    b = runtimes["fused"].lookup_concatenated(r, counts, "dlrm")
    assert np.array_equal(a, b), "fused answers differ"
rates = {"unfused": [], "fused": []}
for i in range(rounds):
    for name in (("unfused", "fused") if i % 2 == 0 else ("fused", "unfused")):
        hps = runtimes[name]
        t = time.perf_counter()
        end, done = t + block, 0
        while time.perf_counter() < end:
            hps.lookup_concatenated(reqs[done % len(reqs)], counts, "dlrm")
            done += 1
        rates[name].append(done / (time.perf_counter() - t))
for hps in runtimes.values():
    hps.close()
ratios = [f / u for f, u in zip(rates["fused"], rates["unfused"])]
print(json.dumps({
    "unfused_lookups_per_s": round(statistics.median(rates["unfused"]), 1),
    "fused_lookups_per_s": round(statistics.median(rates["fused"]), 1),
    "fused_over_unfused": round(statistics.median(ratios), 2),
    "ratios": [round(r, 2) for r in ratios],
}))
"""


def in_process(configs: dict, keys: int, args) -> dict:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            _IN_PROCESS,
            str(configs[False]),
            str(configs[True]),
            str(args.tables),
            str(args.rows),
            str(keys),
            str(args.rounds * 2),
            str(args.block_seconds),
        ],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------- served


def _served_rate(url: str, reqs: list[np.ndarray], tables: int, keys: int, seconds: float):
    import tritonclient.http as http

    client = http.InferenceServerClient(url)
    prepared = []
    for r in reqs:
        a = http.InferInput("KEYS", [1, r.size], "INT64")
        a.set_data_from_numpy(r.reshape(1, -1))
        b = http.InferInput("NUMKEYS", [1, tables], "INT32")
        b.set_data_from_numpy(np.full((1, tables), keys, np.int32))
        prepared.append([a, b])
    client.infer(MODEL, prepared[0])  # warm-up
    done, end, i = 0, time.perf_counter() + seconds, 0
    started = time.perf_counter()
    while time.perf_counter() < end:
        client.infer(MODEL, prepared[i % len(prepared)])
        done += 1
        i += 1
    rate = done / (time.perf_counter() - started)
    client.close()
    return rate


def _served_answer(url: str, req: np.ndarray, tables: int, keys: int) -> np.ndarray:
    import tritonclient.http as http

    client = http.InferenceServerClient(url)
    a = http.InferInput("KEYS", [1, req.size], "INT64")
    a.set_data_from_numpy(req.reshape(1, -1))
    b = http.InferInput("NUMKEYS", [1, tables], "INT32")
    b.set_data_from_numpy(np.full((1, tables), keys, np.int32))
    answer = client.infer(MODEL, [a, b]).as_numpy("OUTPUT0")
    client.close()
    return answer


def served(configs: dict, key_counts: list[int], args) -> dict:
    """Per ``--keys`` level: requests/s of both servers, alternating, and their ratio."""
    from hps_cli.devtools.serve_process import ServeProcess

    servers = {fused: ServeProcess(configs[fused]) for fused in (False, True)}
    out = {}
    try:
        for server in servers.values():
            server.start()
        urls = {fused: s.http_url for fused, s in servers.items()}
        for keys in key_counts:
            reqs = requests(args.tables, args.rows, keys, 16, seed=2)
            plain = _served_answer(urls[False], reqs[0], args.tables, keys)
            fused = _served_answer(urls[True], reqs[0], args.tables, keys)
            if not np.array_equal(plain, fused):
                raise RuntimeError("served fused answers differ from unfused ones")
            rates: dict[bool, list[float]] = {False: [], True: []}
            for i in range(args.rounds):
                for which in (False, True) if i % 2 == 0 else (True, False):
                    rates[which].append(
                        _served_rate(urls[which], reqs, args.tables, keys, args.seconds)
                    )
            ratios = [f / u for f, u in zip(rates[True], rates[False])]
            out[str(keys)] = {
                "protocol": "http",
                "concurrency": 1,
                "unfused_requests_per_s": round(statistics.median(rates[False]), 1),
                "fused_requests_per_s": round(statistics.median(rates[True]), 1),
                "fused_over_unfused": round(statistics.median(ratios), 2),
                "ratios": [round(r, 2) for r in ratios],
            }
    finally:
        for server in servers.values():
            server.stop()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tables", type=int, default=26)
    ap.add_argument("--rows", type=int, default=2048, help="rows of each table")
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--keys", default="32,512", help="keys of each table per lookup (levels)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--block-seconds", type=float, default=1.0, help="in-process timed block")
    ap.add_argument("--seconds", type=float, default=4.0, help="served window per round")
    ap.add_argument("--setups", default=",".join(SETUPS))
    ap.add_argument("--no-serve", action="store_true", help="in-process only")
    ap.add_argument("--workdir", help="keep tables and configs here")
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="hps-fusion-"))
    work.mkdir(parents=True, exist_ok=True)
    report: dict = {
        "benchmark": "fusion",
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "cache_backend": os.environ.get("HPS_CACHE_BACKEND", "auto"),
        "tables": args.tables,
        "rows_per_table": args.rows,
        "dim": args.dim,
        "results": {},
    }
    key_counts = [int(k) for k in args.keys.split(",")]
    try:
        paths = make_tables(work, args.tables, args.rows, args.dim)
        for setup in args.setups.split(","):
            configs = {
                fused: make_config(work, paths, args.dim, max(key_counts), fused, setup)
                for fused in (False, True)
            }
            entry = report["results"][setup] = {
                "in_process": {str(k): in_process(configs, k, args) for k in key_counts}
            }
            if not args.no_serve:
                entry["served"] = served(configs, key_counts, args)
            print(json.dumps({setup: entry}), file=sys.stderr, flush=True)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
