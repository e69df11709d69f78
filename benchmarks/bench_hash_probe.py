"""Benchmark: ``HashMapTable.get`` of small batches with the compiled probe (runtime/native)
against the NumPy path (``HPS_NATIVE=0``), in the same process and alternating rounds.

    python benchmarks/bench_hash_probe.py [--rounds 15] [--json out.json]

Small batches are where the NumPy path's fixed cost (a dozen NumPy calls to hash and probe,
a few more to gather) dominates: ``hps serve`` requests of 128 keys, and the ~100 keys of a
2,048-key GPU lookup that miss the cache and are fetched from the hash map. Two tables:

- 1 M keys × dim 32, 1 partition;
- 2 M keys × dim 128, 16 partitions (HPS's default).

Keys are 0 .. N-1 (the table's key space); batches are uniform over [0, 1.1 N), so about 91 %
of the keys hit (the exact rate is reported). Each round times the same batches with the probe
and without, in alternating order; times are per ``get`` call (into a preallocated ``out``, as
the CPU tiers call it), medians over rounds, and the ratio is the median of the per-round
ratios (the machine may be noisy).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
from hps_cli.runtime.native.hash_probe import hash_probe
from hps_cli.runtime.volatile.hash_map import HashMapTable

TABLES = (
    ("1M x 32, 1 partition", 1_000_000, 32, 1),
    ("2M x 128, 16 partitions", 2_000_000, 128, 16),
)
BATCHES = (128, 2048)
CALLS = {128: 400, 2048: 60}  # get calls per timed run (a run lasts some milliseconds)


def build(keys: int, dim: int, partitions: int) -> HashMapTable:
    table = HashMapTable(dim, num_partitions=partitions, reserve=keys)
    chunk = 1 << 18
    for start in range(0, keys, chunk):
        ids = np.arange(start, min(keys, start + chunk), dtype=np.int64)
        vectors = np.broadcast_to((ids % 1000).astype(np.float32)[:, None], (ids.size, dim))
        table.insert(ids, vectors)
    return table


def run(table: HashMapTable, batches: list[np.ndarray], native: bool) -> float:
    """Seconds per ``get`` over ``batches``, with the compiled probe on or off."""
    os.environ["HPS_NATIVE"] = "1" if native else "0"
    out = np.empty((batches[0].size, table.dim), dtype=np.float32)
    started = time.perf_counter()
    for keys in batches:
        table.get(keys, out)
    return (time.perf_counter() - started) / len(batches)


def measure(table: HashMapTable, keys: int, size: int, rounds: int, rng) -> dict:
    batches = [rng.integers(0, int(keys * 1.1), size, dtype=np.int64) for _ in range(CALLS[size])]
    hits = sum(int(table.contains(b).sum()) for b in batches)
    for native in (True, False):  # warm-up: caches, page faults, the probe's compile
        run(table, batches[:10], native)
    native_s, numpy_s, ratios = [], [], []
    for r in range(rounds):
        order = (True, False) if r % 2 == 0 else (False, True)
        seconds = {native: run(table, batches, native) for native in order}
        native_s.append(seconds[True])
        numpy_s.append(seconds[False])
        ratios.append(seconds[False] / seconds[True])
    return {
        "batch": size,
        "hit_rate": round(hits / (size * len(batches)), 3),
        "native_us": round(float(np.median(native_s)) * 1e6, 1),
        "numpy_us": round(float(np.median(numpy_s)) * 1e6, 1),
        "speedup": round(float(np.median(ratios)), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    os.environ.pop("HPS_NATIVE", None)
    if hash_probe() is None:
        raise SystemExit("the compiled probe is unavailable (no C compiler?): nothing to compare")
    rng = np.random.default_rng(0)
    results = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "tables": []}
    for name, keys, dim, partitions in TABLES:
        started = time.perf_counter()
        table = build(keys, dim, partitions)
        load_s = time.perf_counter() - started
        rows = [measure(table, keys, size, args.rounds, rng) for size in BATCHES]
        results["tables"].append({"table": name, "load_s": round(load_s, 1), "gets": rows})
        print(f"{name} (loaded in {load_s:.1f} s)")
        for row in rows:
            print(
                f"  get of {row['batch']:>5} keys (hit rate {row['hit_rate']:.0%}): "
                f"native {row['native_us']:8.1f} µs   numpy {row['numpy_us']:8.1f} µs   "
                f"numpy/native {row['speedup']:.2f}x"
            )
        del table
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
