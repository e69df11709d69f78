"""Benchmark: the same small lookup back to back and after the thread has slept, in one run.

    python benchmarks/bench_cold_lookup.py [--calls 3000] [--json out.json]

At concurrency 1 a server idles while its client prepares the next request, so every request
runs on caches that other work (the client, the kernel, other processes) has used meanwhile.
This measures what that costs one piece of a request: ``HashMapTable.get`` of 128 keys (uniform
over a 100,000-row table × dim 16, every key held, the compiled probe when a C compiler is
there), timed back to back and after sleeps of 0.2, 0.5 and 2 ms before each call, rotating
through 64 key sets. Medians per call and their ratio to the back-to-back median.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
from hps_cli.runtime.volatile.hash_map import HashMapTable

ROWS, DIM, KEYS = 100_000, 16, 128
SLEEPS_S = (0.0, 0.0002, 0.0005, 0.002)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=3000, help="timed calls per sleep")
    ap.add_argument("--json", default=None, help="also write the result here")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    table = HashMapTable(DIM, reserve=ROWS)
    keys = rng.choice(2**62, ROWS, replace=False).astype(np.int64)
    table.insert(keys, rng.random((ROWS, DIM), dtype=np.float32))
    batches = [rng.choice(keys, KEYS) for _ in range(64)]
    out = np.empty((KEYS, DIM), np.float32)
    for batch in batches:  # warm-up (and the probe compiled)
        table.get(batch, out)
    result = {"machine": platform.machine(), "rows": ROWS, "dim": DIM, "keys": KEYS, "runs": []}
    base = None
    for sleep in SLEEPS_S:
        times = []
        for i in range(args.calls):
            if sleep:
                time.sleep(sleep)
            started = time.perf_counter()
            table.get(batches[i % len(batches)], out)
            times.append(time.perf_counter() - started)
        p50 = float(np.median(times)) * 1e6
        base = base or p50
        result["runs"].append({"sleep_ms": sleep * 1e3, "p50_us": p50, "ratio": p50 / base})
        ratio = p50 / base
        print(f"sleep {sleep * 1e3:4.1f} ms before each call: p50 {p50:5.1f} us ({ratio:.2f}x)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
