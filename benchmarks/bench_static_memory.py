"""Benchmark: host memory and disk of static and uvm caches, without and with CPU-tier copies.

    python benchmarks/bench_static_memory.py --rows 1000000 --dim 64

A static or uvm cache holds every row of its table and never asks the CPU tiers, so start-up
loads no volatile or persistent tier with such a table. The baseline, measured in the same run,
is the same config started the way hps did before (a cache factory that does not say it holds the
whole table: the table also goes into the hash map and into RocksDB).

Config: ``parallel_hash_map`` + ``rocks_db``, one model with one table, ``gpucache`` true;
``HPS_CACHE_BACKEND=reference`` (the NumPy reference cache: its rows are in host memory, so a
GPU cache would need correspondingly less). Each start-up runs in its own child process: RSS
before and after ``HPS(config)`` (``/proc/self/status`` VmRSS: anonymous memory plus mapped
table pages still resident), the peak, and the bytes under the RocksDB folder. Every child
checks 10,000 lookups (table keys and unknown keys) against the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

MIB = 1 << 20


def _vm_rss() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def child(args) -> dict:
    """One start-up: HPS(config) with the given cache type and factory; prints its numbers."""
    import numpy as np
    import rocksdict  # noqa: F401 - loaded before the first RSS reading, as the tiers use it
    from hps_cli.runtime import HPS
    from hps_cli.runtime.gpu.cache_factory import EmbeddingCacheFactory
    from hps_cli.runtime.table.synthetic import synthetic_vectors

    class CopyingFactory(EmbeddingCacheFactory):
        """The previous start-up: the table goes into the CPU tiers too."""

        def holds_whole_table(self, model, table):
            return False

    db = Path(args.db)
    doc = {
        "supportlonglong": True,
        "volatile_db": {"type": "parallel_hash_map", "num_partitions": 8},
        "persistent_db": {"type": "rocks_db", "path": str(db), "num_threads": 2},
        "models": [
            {
                "model": "bench",
                "sparse_files": [args.table],
                "embedding_table_names": ["t"],
                "embedding_vecsize_per_table": [args.dim],
                "maxnum_catfeature_query_per_table_per_sample": [1],
                "default_value_for_each_table": [0.0],
                "deployed_device_list": [0],
                "embedding_cache_type": args.cache_type,
                "gpucacheper": 0.5,
            }
        ],
    }
    factory = CopyingFactory() if args.copies else EmbeddingCacheFactory()
    before = _vm_rss()
    started = time.perf_counter()
    hps = HPS(doc, cache_factory=factory)
    seconds = time.perf_counter() - started
    after = _vm_rss()
    tiers = hps.table_backend("bench", "t")
    volatile, persistent = tiers.volatile is not None, tiers.persistent is not None
    rng = np.random.default_rng(0)
    keys = rng.integers(0, int(args.rows * 1.01), 10_000)  # 1 % beyond the table: defaults
    expect = synthetic_vectors(keys, args.dim)
    expect[keys >= args.rows] = 0.0
    exact = bool(np.array_equal(hps.lookup(keys, "bench", "t"), expect))
    hps.close()
    return {
        "cache_type": args.cache_type,
        "cpu_tier_copies": bool(args.copies),
        "volatile_tier": volatile,
        "persistent_tier": persistent,
        "startup_s": round(seconds, 2),
        "rss_before_mib": round(before / MIB, 1),
        "rss_after_mib": round(after / MIB, 1),
        "rss_growth_mib": round((after - before) / MIB, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rocksdb_mib": round(_folder_bytes(db) / MIB, 1),
        "lookups_exact": exact,
    }


def run(args) -> dict:
    from hps_cli.runtime.table.synthetic import write_synthetic_table

    work = Path(args.workdir or tempfile.mkdtemp(prefix="hps-static-mem-"))
    table = work / "table"
    if not table.exists():
        write_synthetic_table(table, args.rows, args.dim)
    table_mib = (8 + 4 * args.dim) * args.rows / MIB
    runs = []
    env = {**os.environ, "HPS_CACHE_BACKEND": "reference"}
    try:
        for cache_type in ("static", "uvm"):
            for copies in (True, False):  # the baseline first, then the same start-up now
                db = work / f"db-{cache_type}-{int(copies)}"
                shutil.rmtree(db, ignore_errors=True)
                argv = [sys.executable, __file__, "--child", "--table", str(table)]
                argv += ["--rows", str(args.rows), "--dim", str(args.dim), "--db", str(db)]
                argv += ["--cache-type", cache_type] + (["--copies"] if copies else [])
                out = subprocess.run(argv, capture_output=True, text=True, env=env)
                if out.returncode:
                    raise RuntimeError(out.stderr[-3000:])
                runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
                shutil.rmtree(db, ignore_errors=True)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return {
        "benchmark": "static_memory",
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "rows": args.rows,
        "dim": args.dim,
        "table_mib": round(table_mib, 1),
        "runs": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--workdir", help="keep the table here (default: a temporary folder)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--table", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--cache-type", default="static", help=argparse.SUPPRESS)
    parser.add_argument("--copies", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    result = child(args) if args.child else run(args)
    print(json.dumps(result, indent=None if args.child else 2))


if __name__ == "__main__":
    main()
