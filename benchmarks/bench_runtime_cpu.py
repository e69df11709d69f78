"""Benchmark: the CPU lookup tiers against their baselines, measured in the same run.

    python benchmarks/bench_runtime_cpu.py --keys 2000000 --dim 128 --batch 65536

Targets (issue "CPU lookup runtime"), 2 M keys × dim 128, batches of 64 K uniform keys:
- hash-map tier: ≥ 0.6× the rate of plain NumPy fancy indexing of the same rows (an in-memory
  (keys, dim) array indexed with the rows of the batch's keys), resident memory ≤ 1.5× the raw
  keys + vectors (RSS growth around the load, and peak);
- RocksDB tier: ≥ 2× a plain ``cf[list_of_keys]`` on default options. Two baselines: the same
  database files opened with default options, and a database written the naive way (default
  options, WriteBatch puts). Measured cold (right after opening) and warm (after every key was
  looked up once, as on a long-running server), with HPS's default caches (``rocksdb_default``:
  the row cache has room for the table's rows) and with a 64 MiB row cache
  (``rocksdb_small_cache``);
- Redis Cluster (3 local masters): the rate, reported.

Each tier runs in its own child process (clean RSS). Baseline and tier batches alternate, so
both see the same machine load; rates are total keys / total seconds over the timed batches,
after warm-up batches that are not timed. The files are in the page cache (hot), as on a
serving machine that has read them at start-up.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import resource
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _measure import ensure_table  # noqa: E402

HERE = Path(__file__).resolve().parent
TAG = "hps_et.bench.t"


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _batches(args, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [
        rng.integers(0, args.keys, args.batch, dtype=np.int64)
        for _ in range(args.warmup + args.batches)
    ]


def _positions(table: Path, keys: int) -> np.ndarray:
    """Row of each key in the (shuffled) table file: keys are 0 .. keys-1."""
    from hps_cli.runtime.table import TableReader

    with TableReader(table) as reader:
        pos = np.empty(keys, dtype=np.int64)
        pos[np.array(reader.keys())] = np.arange(keys)
    return pos


def _alternate(args, batches, first, second) -> tuple[float, float]:
    """Seconds of ``first`` and ``second`` over the timed batches, run alternately (each pair
    back to back, so both see the same machine load). Also records the median of the per-pair
    ratios in ``_alternate.median`` (robust to load changing between pairs)."""
    t_first = t_second = 0.0
    ratios = []
    for i, keys in enumerate(batches):
        a = time.perf_counter()
        first(keys)
        b = time.perf_counter()
        second(keys)
        c = time.perf_counter()
        if i >= args.warmup:
            t_first += b - a
            t_second += c - b
            ratios.append((b - a) / (c - b))
    _alternate.median = round(float(np.median(ratios)), 3)
    return t_first, t_second


# ---------------------------------------------------------------------------------------------
# steps (each runs in a child process)


def step_hash_map(args) -> dict:
    from hps_cli.runtime.startup_load import load_volatile
    from hps_cli.runtime.table import TableReader
    from hps_cli.runtime.volatile.hash_map import HashMapTable

    table_dir = args.work / "table"
    raw = args.keys * (8 + 4 * args.dim)
    gc.collect()
    rss0 = _rss()
    started = time.perf_counter()
    with TableReader(table_dir) as reader:
        tier = HashMapTable(args.dim, num_partitions=16, reserve=reader.num_keys)
        load_volatile(tier, reader, None)
    load_s = time.perf_counter() - started
    gc.collect()
    rss1, peak1 = _rss(), _peak()
    # The baseline: the same vectors as one in-memory array, indexed by row.
    with TableReader(table_dir) as reader:
        vectors = np.array(reader.vectors())
    pos = _positions(table_dir, args.keys)
    batches = _batches(args, 1)
    t_fancy, t_tier = _alternate(args, batches, lambda k: vectors[pos[k]], lambda k: tier.get(k))
    out, hit, _ = tier.get(batches[-1])
    assert hit.all() and np.array_equal(out, vectors[pos[batches[-1]]])
    timed = args.batches * args.batch
    return {
        "load_s": round(load_s, 2),
        "raw_mib": round(raw / 2**20, 1),
        "rss_growth_mib": round((rss1 - rss0) / 2**20, 1),
        "rss_growth_vs_raw": round((rss1 - rss0) / raw, 3),
        "peak_growth_vs_raw": round((max(peak1, rss1) - rss0) / raw, 3),
        "table_nbytes_vs_raw": round(tier.nbytes / raw, 3),
        "fancy_rows_per_s": round(timed / t_fancy),
        "tier_keys_per_s": round(timed / t_tier),
        "ratio": round(t_fancy / t_tier, 3),
        "median_pair_ratio": _alternate.median,
        "note": "fancy = vectors[rows] on an in-memory (keys, dim) array; tier = "
        "HashMapTable.get (hash, probe, gather)",
    }


def _default_family(path: Path):
    import rocksdict as rd

    families = {
        name: rd.Options(raw_mode=True)
        for name in rd.Rdict.list_cf(str(path), rd.Options(raw_mode=True))
    }
    db = rd.Rdict(str(path), rd.Options(raw_mode=True), column_families=families)
    return db, db.get_column_family(TAG)


def _naive_db(args) -> Path:
    """A database written the naive way: default options, WriteBatch puts, then a flush."""
    import rocksdict as rd
    from hps_cli.runtime.raw_keys import key_bytes
    from hps_cli.runtime.table import TableReader

    path = args.work / "naive_db"
    if (path / "CURRENT").exists():
        return path
    opt = rd.Options(raw_mode=True)
    opt.create_if_missing(True)
    db = rd.Rdict(str(path), opt)
    cf = db.create_column_family(TAG, rd.Options(raw_mode=True))
    handle = db.get_column_family_handle(TAG)
    with TableReader(args.work / "table") as reader:
        for chunk in reader.chunks(65536):
            batch = rd.WriteBatch(raw_mode=True)
            batch.set_default_column_family(handle)
            raw = np.ascontiguousarray(chunk.vectors).tobytes()
            size = 4 * args.dim
            for i, key in enumerate(key_bytes(chunk.keys, 64)):
                batch.put(key, raw[i * size : (i + 1) * size])
            db.write(batch)
    db.flush()
    del cf, handle
    db.close()
    return path


def _warm_all(args, fn) -> float:
    """Look every key up once (shuffled, in batches), as a long-running server would have."""
    order = np.random.default_rng(4).permutation(args.keys)
    started = time.perf_counter()
    for first in range(0, args.keys, args.batch):
        fn(order[first : first + args.batch])
    return time.perf_counter() - started


def _rocksdb(args, row_cache_mib: int, block_cache_mib: int) -> dict:
    from hps_cli.runtime.persistent.rocksdb_tier import RocksDbStore
    from hps_cli.runtime.raw_keys import key_bytes
    from hps_cli.runtime.startup_load import table_checksum
    from hps_cli.runtime.table import TableReader

    db_path = args.work / "db"
    started = time.perf_counter()
    if not (db_path / "CURRENT").exists():
        store = RocksDbStore(db_path, num_threads=2)
        with TableReader(args.work / "table") as reader:
            store.load_table(TAG, reader, table_checksum(reader))
        store.close()
    load_s = time.perf_counter() - started
    started = time.perf_counter()
    naive_path = _naive_db(args)
    naive_write_s = time.perf_counter() - started

    store = RocksDbStore(
        db_path,
        read_only=True,
        row_cache_bytes=row_cache_mib << 20,
        block_cache_bytes=block_cache_mib << 20,
    )
    tier = store.table(TAG, args.dim)
    results = {
        "load_s": round(load_s, 2),
        "naive_write_s": round(naive_write_s, 2),
        "row_cache_mib": row_cache_mib,
        "block_cache_mib": block_cache_mib,
    }
    timed = args.batches * args.batch
    for name, path in (("same_files_default_options", db_path), ("naive_db", naive_path)):
        base_db, base_cf = _default_family(path)
        batches = _batches(args, 2)
        cold_base, cold_tier = _alternate(
            args,
            batches,
            lambda k, cf=base_cf: cf[list(key_bytes(k, 64))],
            lambda k: tier.get(k),
        )
        entry = {
            "cold": {
                "baseline_keys_per_s": round(timed / cold_base),
                "tier_keys_per_s": round(timed / cold_tier),
                "ratio": round(cold_base / cold_tier, 3),
                "median_pair_ratio": _alternate.median,
            }
        }
        if args.warm_all:
            _warm_all(args, lambda k, cf=base_cf: cf[list(key_bytes(k, 64))])
            _warm_all(args, tier.get)
            batches = _batches(args, 5)
            t_base, t_tier = _alternate(
                args,
                batches,
                lambda k, cf=base_cf: cf[list(key_bytes(k, 64))],
                lambda k: tier.get(k),
            )
            entry["warm"] = {
                "baseline_keys_per_s": round(timed / t_base),
                "tier_keys_per_s": round(timed / t_tier),
                "ratio": round(t_base / t_tier, 3),
                "median_pair_ratio": _alternate.median,
            }
        results[name] = entry
        del base_cf
        base_db.close()
    out, hit = tier.get(batches[-1])
    assert hit.all()
    phase = "warm" if args.warm_all else "cold"
    results["ratio_vs_faster_baseline"] = min(
        results["same_files_default_options"][phase]["ratio"], results["naive_db"][phase]["ratio"]
    )
    store.close()
    return results


def step_rocksdb_default(args) -> dict:
    """The tier as HPS opens it by default: the row cache has room for the table's rows."""
    from hps_cli.runtime.persistent.rocksdb_tier import auto_row_cache_bytes

    raw = args.keys * (8 + 4 * args.dim)
    return _rocksdb(args, auto_row_cache_bytes(raw) >> 20, 256)


def step_rocksdb_small_cache(args) -> dict:
    """The tier with a 64 MiB row cache (3 % of the rows here): the options without the cache."""
    return _rocksdb(args, 64, 256)


def step_redis(args) -> dict:
    from hps_cli.runtime.startup_load import load_volatile
    from hps_cli.runtime.table import TableReader
    from hps_cli.runtime.volatile.redis_cluster import RedisClusterStore

    from hps_cli.devtools.redis_cluster import LocalRedisCluster

    with LocalRedisCluster(3, workdir=args.work / "redis") as cluster:
        store = RedisClusterStore(cluster.address, num_node_connections=4)
        tier = store.table(TAG, args.dim, num_partitions=12)
        started = time.perf_counter()
        with TableReader(args.work / "table") as reader:
            load_volatile(tier, reader, None)
        load_s = time.perf_counter() - started
        batches = _batches(args, 3)
        elapsed = 0.0
        for i, keys in enumerate(batches):
            a = time.perf_counter()
            out, hit, failed = tier.get(keys)
            if i >= args.warmup:
                elapsed += time.perf_counter() - a
        assert hit.all() and not failed.any()
        store.close()
    return {
        "masters": 3,
        "partitions": 12,
        "load_s": round(load_s, 1),
        "load_keys_per_s": round(args.keys / load_s),
        "tier_keys_per_s": round(args.batches * args.batch / elapsed),
    }


STEPS = {
    "hash_map": step_hash_map,
    "rocksdb_default": step_rocksdb_default,
    "rocksdb_small_cache": step_rocksdb_small_cache,
    "redis": step_redis,
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", type=int, default=2_000_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--batch", type=int, default=65536)
    ap.add_argument("--batches", type=int, default=20, help="timed batches per measurement")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument(
        "--warm-all",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="before the warm RocksDB measurement, look every key up once",
    )
    ap.add_argument("--work", type=Path, default=Path("/tmp/hps-bench-runtime"))
    ap.add_argument("--steps", default="hash_map,rocksdb_default,rocksdb_small_cache,redis")
    ap.add_argument("--step", choices=sorted(STEPS), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.step:
        print(json.dumps(STEPS[args.step](args)))
        return

    ensure_table(args.work, args.keys, args.dim)
    result = {
        "date": date.today().isoformat(),
        "machine": platform.processor() or platform.machine(),
        "keys": args.keys,
        "dim": args.dim,
        "batch": args.batch,
        "batches": args.batches,
        "command": " ".join(sys.argv),
    }
    passthrough = [
        f"--keys={args.keys}",
        f"--dim={args.dim}",
        f"--batch={args.batch}",
        f"--batches={args.batches}",
        f"--warmup={args.warmup}",
        "--warm-all" if args.warm_all else "--no-warm-all",
        f"--work={args.work}",
    ]
    for name in args.steps.split(","):
        out = subprocess.run(
            [sys.executable, __file__, "--step", name, *passthrough], capture_output=True, text=True
        )
        if out.returncode != 0:
            result[name] = {"error": out.stderr[-2000:]}
        else:
            result[name] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{name}: {json.dumps(result[name])}", file=sys.stderr, flush=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
