"""GPU cache benchmarks, each against its own baseline measured in the same run.

    python benchmarks/bench_gpu_cache.py --out results.json

1. Cache query of 1M keys, 100 % hits, uniform keys, dim 32 and 128, vs a plain gather kernel
   that copies the same rows by known index (the physical floor): throughput ratio.
2. 16K keys, dim 128: query time vs gather time.
3. End to end from Python: 2,000 host keys -> host vectors, dim 128, all hits (the cache API a
   lookup uses): p50 / p99 latency.
4. Zipf(1.05) key stream with gpucacheper 0.2: steady hit rate vs the ideal (the share of the
   traffic that the top 20 % keys carry).
Kernel times come from CUDA events (median of many launches, inputs rotated among several
batches so that repeated runs do not just measure the L2 cache).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import date

import numpy as np


def _events_median(device, launch, repeats: int) -> float:
    drv = device.drv
    times = []
    for i in range(repeats + 5):
        start, end = drv.Event(), drv.Event()
        start.record()
        launch(i)
        end.record()
        end.synchronize()
        if i >= 5:  # warm-up
            times.append(end.time_since(start))
    return statistics.median(times)


def kernel_vs_gather(device, dim: int, batch: int, cached_keys: int, capacity_slots: int,
                     tile: int | None = None, rotations: int = 4, repeats: int = 50) -> dict:
    from hps_cli.runtime.gpu.gpu_dynamic import GpuDynamicCache
    from hps_cli.runtime.gpu.placement import WAYS, tile_width
    from hps_cli.runtime.table.synthetic import synthetic_vectors

    rng = np.random.default_rng(dim)
    drv = device.drv
    t = tile or tile_width(dim)
    cache = GpuDynamicCache(device, capacity_slots // WAYS, dim, tile=t)
    keys = rng.choice(2**62, cached_keys, replace=False).astype(np.int64)
    for start in range(0, cached_keys, 1 << 20):
        part = keys[start:start + (1 << 20)]
        cache.replace(part, synthetic_vectors(part, dim))
    present = np.sort(cache.dump())
    batches, indices = [], []
    with device.scope():
        table = device.to_device(synthetic_vectors(present, dim))  # the same rows, dense
        for _ in range(rotations):
            idx = rng.integers(0, present.size, batch).astype(np.int64)
            batches.append(device.to_device(present[idx]))
            indices.append(device.to_device(idx))
        out = device.alloc(batch * dim * 4 + 16)
        mkeys, mpos, count = device.alloc(batch * 8), device.alloc(batch * 8), device.alloc(16)
        q = device.kernels.function(f"dc_query_t{t}", "PPqPPPPIifPPPP")
        g = device.kernels.function(f"gather_rows_t{t}", "PPqiP")
        grid = (device.launch_grid(batch, t), 1)

        def query(i):
            q.prepared_async_call(grid, (256, 1, 1), None, batches[i % rotations], 0, batch,
                                  cache.d_keys, cache.d_digests, cache.d_scores, cache.d_values,
                                  cache.num_sets, dim, np.float32(0), out, mkeys, mpos, count)

        def gather(i):
            g.prepared_async_call(grid, (256, 1, 1), None, table, indices[i % rotations], batch,
                                  dim, out)

        drv.memset_d32(count, 0, 1)
        ms_q = _events_median(device, query, repeats)
        misses = np.empty(1, np.uint32)
        drv.memcpy_dtoh(misses, count)
        ms_g = _events_median(device, gather, repeats)
        ms_q2 = _events_median(device, query, repeats)  # again: the spread of repeated runs
    return {"dim": dim, "batch": batch, "cached_keys": int(present.size),
            "capacity_slots": cache.capacity, "tile": t, "misses": int(misses[0]),
            "query_ms": ms_q, "query_ms_again": ms_q2, "gather_ms": ms_g,
            "query_gkeys_per_s": batch / ms_q / 1e6, "gather_gkeys_per_s": batch / ms_g / 1e6,
            "throughput_ratio": ms_g / ms_q, "time_ratio": ms_q / ms_g}


def end_to_end(device, dim: int = 128, keys_per_lookup: int = 2000, iterations: int = 3000) -> dict:
    from hps_cli.runtime.gpu.embedding_cache import EmbeddingCache
    from hps_cli.runtime.gpu.gpu_dynamic import GpuDynamicCache
    from hps_cli.runtime.table.synthetic import synthetic_vectors

    rng = np.random.default_rng(0)
    table_keys = rng.choice(10**12, 200_000, replace=False).astype(np.int64)
    cache = EmbeddingCache(GpuDynamicCache(device, 200_000 * 2 // 32, dim),
                           fetch=lambda k: synthetic_vectors(k, dim), hit_rate_threshold=1.0,
                           default_value=0.0)
    cache.backend.replace(table_keys, synthetic_vectors(table_keys, dim))
    cached = cache.backend.dump()
    batches = [cached[rng.integers(0, cached.size, keys_per_lookup)] for _ in range(64)]
    for i in range(200):  # warm-up: compile, allocate, fill the pinned pool
        cache.lookup(batches[i % 64])
    lat = []
    for i in range(iterations):
        keys = batches[i % 64]
        t0 = time.perf_counter()
        out = cache.lookup(keys)
        lat.append((time.perf_counter() - t0) * 1e6)
        del out
    check = cache.lookup(batches[0])
    assert np.array_equal(check, synthetic_vectors(batches[0], dim)), "wrong vectors"
    lat = np.array(lat)
    return {"dim": dim, "keys": keys_per_lookup, "iterations": iterations,
            "p50_us": float(np.percentile(lat, 50)), "p90_us": float(np.percentile(lat, 90)),
            "p99_us": float(np.percentile(lat, 99)), "max_us": float(lat.max()),
            "misses": cache.stats()["misses"]}


def zipf_hit_rate(device, table_keys: int = 1_000_000, per: float = 0.2, alpha: float = 1.05,
                  batch: int = 16384, batches: int = 400) -> dict:
    from hps_cli.runtime.gpu.embedding_cache import EmbeddingCache
    from hps_cli.runtime.gpu.gpu_dynamic import GpuDynamicCache
    from hps_cli.runtime.gpu.placement import num_sets_for

    rng = np.random.default_rng(1)
    p = np.arange(1, table_keys + 1, dtype=np.float64) ** -alpha
    p /= p.sum()
    ideal = float(p[: int(per * table_keys)].sum())
    cdf = np.cumsum(p)
    key_of_rank = rng.permutation(table_keys).astype(np.int64) * 7919 + 13
    dim = 16
    cache = EmbeddingCache(GpuDynamicCache(device, num_sets_for(table_keys, per), dim),
                           fetch=lambda k: np.zeros((k.size, dim), np.float32),
                           hit_rate_threshold=1.0, default_value=0.0)
    for i in range(batches):
        if i == batches // 2:
            cache.counters = type(cache.counters)()
        ranks = np.minimum(np.searchsorted(cdf, rng.random(batch)), table_keys - 1)
        cache.lookup(key_of_rank[ranks])
    steady = cache.stats()["hit_rate"]
    return {"table_keys": table_keys, "gpucacheper": per, "alpha": alpha, "batch": batch,
            "batches": batches, "ideal_hit_rate": ideal, "steady_hit_rate": steady,
            "ratio_to_ideal": steady / ideal, "capacity": cache.backend.capacity}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--quick", action="store_true", help="smaller sizes (smoke run)")
    args = ap.parse_args()
    from hps_cli.runtime.gpu.device import get_device

    device = get_device(0)
    result = {"date": date.today().isoformat(), "device": device.name, "arch": device.arch}
    big = 1 << 20
    cached = 1 << 20 if not args.quick else 1 << 16
    result["query_1M"] = [kernel_vs_gather(device, d, big, cached, 2 * cached) for d in (32, 128)]
    result["query_1M_tile32_dim128"] = kernel_vs_gather(device, 128, big, cached, 2 * cached, tile=32)
    result["query_1M_large_cache_dim32"] = kernel_vs_gather(
        device, 32, big, 8 * cached, 16 * cached) if not args.quick else None
    result["query_16K"] = kernel_vs_gather(device, 128, 16384, cached, 2 * cached, repeats=200)
    result["end_to_end_2000"] = end_to_end(device, iterations=3000 if not args.quick else 300)
    result["zipf"] = zipf_hit_rate(device, batches=400 if not args.quick else 60)
    text = json.dumps(result, indent=2)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text)
    print(text)
    q32, q128 = result["query_1M"]
    print("\nsummary (card: %s)" % device.name, file=sys.stderr)
    print(f"query 1M dim32:  {q32['throughput_ratio']:.2f}x gather ({q32['query_ms']:.3f} vs "
          f"{q32['gather_ms']:.3f} ms)", file=sys.stderr)
    print(f"query 1M dim128: {q128['throughput_ratio']:.2f}x gather ({q128['query_ms']:.3f} vs "
          f"{q128['gather_ms']:.3f} ms); tile 32: "
          f"{result['query_1M_tile32_dim128']['throughput_ratio']:.2f}x", file=sys.stderr)
    q16 = result["query_16K"]
    print(f"query 16K dim128: {q16['time_ratio']:.2f}x gather time ({q16['query_ms']*1e3:.1f} vs "
          f"{q16['gather_ms']*1e3:.1f} us)", file=sys.stderr)
    e2e = result["end_to_end_2000"]
    print(f"end to end 2000 keys dim128: p50 {e2e['p50_us']:.0f} us, p99 {e2e['p99_us']:.0f} us",
          file=sys.stderr)
    z = result["zipf"]
    print(f"zipf hit rate {z['steady_hit_rate']:.4f} vs ideal {z['ideal_hit_rate']:.4f} "
          f"({z['ratio_to_ideal']:.3f})", file=sys.stderr)


if __name__ == "__main__":
    main()
