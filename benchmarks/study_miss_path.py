"""Study: where a 2,048-key lookup with misses spends its time, and what the drains cost it.

    python benchmarks/study_miss_path.py [--rows 4194304] [--lookups 3000]

The miss row of bench_gpu_lookup.py (``gpucacheper`` 0.92 against 1.0, uniform keys over the
whole table, dim 128, a hash map behind the cache) timed under variants, each against the
all-hit model in the same run:

- as configured, twice (the spread between the two is the noise);
- with each step of the miss path timed on the lookup's thread (waiting for the device and
  patching the result, counted for both models; fetching from the CPU tiers, queueing for a
  drain) and the drains' choosing and inserting timed on theirs: medians and totals per step;
- with no inserts at all (the misses stay misses): what the drains cost the lookups;
- with a 0.2 ms interpreter switch interval: whether the lookups wait for the drains' thread;
- with fewer, larger drains (64 K keys or 50 ms; every 200 ms).

A study, not a benchmark: it wraps the cache's internals to time them, and its figures guide the
next change rather than state a target. On a GPU machine it times the GPU cache; without one,
``HPS_CACHE_BACKEND=reference`` times the NumPy reference (to check the script itself).
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_gpu_lookup as lookup_bench  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=lookup_bench.ROWS)
    ap.add_argument("--lookups", type=int, default=3000, help="timed lookups per model, variant")
    args = ap.parse_args()
    from hps_cli.runtime import HPS
    from hps_cli.runtime.gpu import embedding_cache, pending
    from hps_cli.runtime.table import TableWriter
    from hps_cli.runtime.table.synthetic import synthetic_vectors

    from hps_cli.bench.keys import DistributionKeys, parse_distribution

    dim = lookup_bench.DIM
    table = Path(tempfile.mkdtemp(prefix="hps-study-miss-")) / "t"
    keys = np.random.default_rng(0).choice(2**62, args.rows, replace=False).astype(np.int64)
    with TableWriter(table, dim, with_meta=True) as writer:
        for start in range(0, args.rows, 1 << 18):
            chunk = keys[start : start + (1 << 18)]
            ranks = np.arange(start + 1, start + 1 + chunk.size, dtype=np.float64)
            writer.append(chunk, synthetic_vectors(chunk, dim), (1e9 / ranks).astype(np.int64))
    doc = {
        "supportlonglong": True,
        "volatile_db": {"type": "parallel_hash_map", "num_partitions": 16},
        "models": [
            lookup_bench._model("full", table, 1.0),
            lookup_bench._model("p92", table, 0.92),
        ],
    }
    timings: dict[str, list[float]] = collections.defaultdict(list)
    lookup_thread = threading.get_ident()
    wrapped: list[tuple[object, str, object]] = []  # (owner, name, what it held before)

    def timed(owner, name: str, label: str, background: bool = False) -> None:
        """Time ``owner.name`` into ``timings[label]`` (the lookup thread's calls only, unless
        ``background``)."""
        inner = getattr(owner, name)
        wrapped.append((owner, name, vars(owner).get(name)))

        def wrapper(*a, **k):
            started = time.perf_counter()
            try:
                return inner(*a, **k)
            finally:
                if background or threading.get_ident() == lookup_thread:
                    timings[label].append(time.perf_counter() - started)

        setattr(owner, name, wrapper)

    with HPS(doc) as hps:
        uniform = DistributionKeys(keys, parse_distribution("uniform"), 1)
        fronts = {name: hps.front_cache(name, "t") for name in ("full", "p92")}
        for name in fronts:
            for _ in range(lookup_bench.WARMUP_SMALL):
                hps.lookup(uniform.next_batch(2048), name, "t")

        def run(label: str) -> None:
            result = {}
            for name, front in fronts.items():
                before = lookup_bench._stats(front)
                times = []
                for _ in range(args.lookups):
                    batch = uniform.next_batch(2048)
                    started = time.perf_counter()
                    hps.lookup(batch, name, "t")
                    times.append(time.perf_counter() - started)
                hit_rate = lookup_bench._hit_rate(before, lookup_bench._stats(front))
                result[name] = (np.percentile(times, 50) * 1e6, np.percentile(times, 99) * 1e6)
                result[name + "_hits"] = hit_rate
            print(
                f"{label:24s} all-hit p50 {result['full'][0]:6.1f} p99 {result['full'][1]:6.1f}"
                f" | p92 p50 {result['p92'][0]:6.1f} p99 {result['p92'][1]:6.1f} hit rate "
                f"{result['p92_hits']:.4f} | ratio {result['p92'][0] / result['full'][0]:.2f}",
                flush=True,
            )

        run("as configured")
        run("as configured, again")
        p92 = fronts["p92"]
        timed(pending.Launched, "wait", "wait for the device (both)")
        timed(pending.PendingLookup, "finish", "patch the result (both)")
        timed(embedding_cache, "fetch_in_parts", "fetch from the CPU tiers")
        timed(p92, "_insert", "queue for a drain")
        timed(p92, "_finish", "resolve (all of the above)")
        timed(p92._queue, "_select", "drain: choose", background=True)
        timed(p92._queue, "_insert", "drain: insert", background=True)
        run("steps timed")
        for label, values in timings.items():
            us = np.asarray(values) * 1e6
            print(
                f"  {label:28s} calls {us.size:6d}  p50 {np.percentile(us, 50):8.1f} us"
                f"  mean {us.mean():8.1f} us  total {us.sum() / 1e3:8.1f} ms"
            )
        for owner, name, before in reversed(wrapped):  # put back what each held
            if before is None:
                delattr(owner, name)  # an instance's wrapper: its class's method answers again
            else:
                setattr(owner, name, before)
        p92._insert = lambda *a: None
        run("no inserts")
        del p92._insert
        interval = sys.getswitchinterval()
        sys.setswitchinterval(0.0002)
        run("switch interval 0.2 ms")
        sys.setswitchinterval(interval)
        queue = p92._queue
        queue.batch_keys, queue.delay_s = 1 << 16, 0.05
        run("drains of 64 K / 50 ms")
        queue.batch_keys, queue.delay_s = 1 << 30, 0.2
        run("a drain every 200 ms")


if __name__ == "__main__":
    main()
