"""A CPU-only machine: ``gpucache: true`` against ``gpucache: false``, in-process, in one run.

    python benchmarks/bench_no_gpu.py [--rows 1000000] [--dim 32] [--keys 128]

Without a usable GPU, a table with ``gpucache: true`` is served straight from its CPU tiers
(one start-up warning), so a lookup should cost what it costs with ``gpucache: false``. One
table, an in-process hash map holding every row behind two models that differ only in
``gpucache``; lookups of ``--keys`` keys uniform over the table's rows (every key in the hash
map: the volatile tier's hit rate is 1), in rounds alternating the two models. For context, the
NumPy reference of the cache (``HPS_CACHE_BACKEND=reference``, ``gpucacheper`` 1.0: all hits
after prefill), in its own rounds of the same run. Ratios are of the p50 latencies (the
throughput of one lookup at a time).

Run it where no GPU is visible (or with ``CUDA_VISIBLE_DEVICES=``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np


def _model(name: str, table: Path, dim: int, gpucache: bool) -> dict:
    return {
        "model": name,
        "sparse_files": [str(table)],
        "embedding_table_names": ["t"],
        "embedding_vecsize_per_table": [dim],
        "maxnum_catfeature_query_per_table_per_sample": [1],
        "default_value_for_each_table": [0.0],
        "deployed_device_list": [0],
        "max_batch_size": 4096,
        "gpucache": gpucache,
        "gpucacheper": 1.0,
        "hit_rate_threshold": 1.0,
    }


def _run(call, batches, count: int) -> list[float]:
    return [call(batches[i % len(batches)]) for i in range(count)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--keys", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--per-round", type=int, default=2000)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from hps_cli.runtime import HPS
    from hps_cli.runtime.gpu.device import gpu_count
    from hps_cli.runtime.table.synthetic import synthetic_vectors, write_synthetic_table

    if gpu_count():
        raise SystemExit("a GPU is visible: run with CUDA_VISIBLE_DEVICES= (no GPU)")
    work = Path(tempfile.mkdtemp(prefix="hps-bench-no-gpu-"))
    write_synthetic_table(work / "t", args.rows, args.dim, shuffle=True)
    doc = {
        "supportlonglong": True,
        "volatile_db": {"type": "parallel_hash_map", "num_partitions": 16},
        "models": [
            _model("cached", work / "t", args.dim, True),
            _model("plain", work / "t", args.dim, False),
        ],
    }
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, args.rows, args.keys).astype(np.int64) for _ in range(64)]
    times: dict[str, list[float]] = {"cached": [], "plain": [], "reference_cache": []}

    def timed(hps, model: str):
        def call(keys):
            t0 = time.perf_counter()
            out = hps.lookup(keys, model, "t")
            elapsed = time.perf_counter() - t0
            del out
            return elapsed

        return call

    with HPS(doc) as hps:
        fronts = {m: hps.front_cache(m, "t") for m in ("cached", "plain")}
        expected = synthetic_vectors(batches[0], args.dim)
        assert np.array_equal(hps.lookup(batches[0], "cached", "t"), expected)
        calls = {m: timed(hps, m) for m in ("cached", "plain")}
        for call in calls.values():
            _run(call, batches, 500)  # warm-up
        for r in range(2 * args.rounds):
            model = ("cached", "plain")[r % 2]
            times[model] += _run(calls[model], batches, args.per_round)
    os.environ["HPS_CACHE_BACKEND"] = "reference"
    try:
        with HPS({**doc, "models": doc["models"][:1]}) as hps:
            call = timed(hps, "cached")
            _run(call, batches, 500)
            for _ in range(args.rounds):
                times["reference_cache"] += _run(call, batches, args.per_round)
            reference_stats = hps.front_cache("cached", "t").stats()
    finally:
        del os.environ["HPS_CACHE_BACKEND"]
    p50 = {m: float(np.percentile(np.asarray(t) * 1e6, 50)) for m, t in times.items()}
    p99 = {m: float(np.percentile(np.asarray(t) * 1e6, 99)) for m, t in times.items()}
    result = {
        "date": date.today().isoformat(),
        "rows": args.rows,
        "dim": args.dim,
        "keys_per_lookup": args.keys,
        "key_distribution": "uniform over the table's rows (volatile tier hit rate 1)",
        "front_cache_built": {m: f is not None for m, f in fronts.items()},
        "reference_cache_hit_rate": reference_stats["hit_rate"],
        "p50_us": p50,
        "p99_us": p99,
        "cached_over_plain_throughput": p50["plain"] / p50["cached"],
        "reference_cache_over_plain_throughput": p50["plain"] / p50["reference_cache"],
    }
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    print(
        f"\n{args.keys} uniform keys of {args.rows} x {args.dim}, no GPU: gpucache true "
        f"p50 {p50['cached']:.1f} us, false {p50['plain']:.1f} us: "
        f"{result['cached_over_plain_throughput']:.2f}x (target >= 0.8); the cache's NumPy "
        f"reference (HPS_CACHE_BACKEND=reference, hit rate "
        f"{result['reference_cache_hit_rate']:.3f}): {p50['reference_cache']:.1f} us"
    )


if __name__ == "__main__":
    main()
