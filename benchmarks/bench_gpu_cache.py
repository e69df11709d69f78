"""GPU cache kernels and the small-lookup path, each against its own baseline in the same run.

    python benchmarks/bench_gpu_cache.py --out .bench/gpu_cache.json

Keys always come from a table's key space, never from what the cache holds: a table of random
64-bit keys, a cache sized and prefilled as the runtime does it for ``gpucacheper`` 1.0 (room
for every row, start-up placement planned on the host: every row is placed), and batches drawn
uniformly over all rows of the table. Every figure states its hit rate (here 100 %, checked:
the kernels count their misses). benchmarks/bench_gpu_lookup.py measures ``HPS.lookup`` with
misses (uniform and Zipf keys over a table larger than the cache).

1. Cache query of 1 M keys (a shuffled pass over the table's rows, as a de-duplicated lookup
   passes its distinct keys), dim 32 and 128, table of 1 M rows, and dim 128 at 4 M rows
   (beyond L2), vs a plain gather kernel that copies the same rows by known index (the
   physical floor): throughput ratio. Hits counted into the hit bytes as a 1 M-key lookup
   does; the fold of the hit bytes into the scores, due every HIT_FOLD_EVERY such queries, is
   timed too and its share added in ``throughput_ratio_with_fold``. Device memory per held row.
2. 16 K keys, dim 128: query time vs gather time.
3. The raw CUDA sequence of a 2,000-key lookup on both transfer routes, the routes by result
   size, and ``DynamicEmbeddingCache.query`` of 2,000 keys (dim 128): p50 / p99 latency.
Kernel times come from CUDA events (median of many launches, inputs rotated among several
batches so that repeated runs do not just measure the L2 cache), in ROUNDS rounds that alternate
the kernel and its baseline; a ratio is the median of the rounds' ratios (min and max kept).
Latencies are ROUNDS rounds of 3,000 lookups; the lookups slower than SLOW_US are listed by
when they happened, so a burst of host noise shows as such.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

WARMUP_LOOKUPS = 1000  # before the latency of 2,000-key lookups is measured
ROUNDS = 5  # of each kernel timing (median of CUDA-event medians) and of each latency run
SLOW_US = 200.0  # a lookup slower than this is listed by when it happened (latency runs)


def _events_median(device, launch, repeats: int, warmup: int = 5) -> float:
    drv = device.drv
    times = []
    for i in range(repeats + warmup):
        start, end = drv.Event(), drv.Event()
        start.record()
        launch(i)
        end.record()
        end.synchronize()
        if i >= warmup:
            times.append(end.time_since(start))
    return statistics.median(times)


def table_keys(rows: int, seed: int) -> np.ndarray:
    """A table's keys: distinct random 64-bit keys (spread like hashed ids)."""
    rng = np.random.default_rng(seed)
    return rng.choice(2**62, rows, replace=False).astype(np.int64) - 2**61


def prefilled_cache(device, keys: np.ndarray, vectors: np.ndarray, num_sets: int):
    """A GpuDynamicCache of ``num_sets`` sets prefilled as start-up does it (the first rows of
    the table, as many as the slots are sized for, placed by prefill_plan); returns (cache,
    plan)."""
    from hps_cli.runtime.gpu.gpu_dynamic import GpuDynamicCache
    from hps_cli.runtime.gpu.placement import SLOT_HEADROOM, WAYS
    from hps_cli.runtime.gpu.prefill_plan import plan_prefill

    cache = GpuDynamicCache(device, num_sets, vectors.shape[1])
    planned = min(keys.size, int(num_sets * WAYS / SLOT_HEADROOM))
    plan = plan_prefill(keys[:planned], num_sets)
    cache.load(plan.slot_keys, plan.slot_rows(np.arange(planned)), vectors)
    return cache, plan


def uniform_batch(rng, rows: int, batch: int) -> np.ndarray:
    """Row indices of a batch uniform over the table: a shuffled pass over its rows (each row
    at most ceil(batch / rows) times, as a de-duplicated lookup passes distinct keys)."""
    return rng.permutation(np.resize(rng.permutation(rows), batch)).astype(np.int64)


def kernel_vs_gather(
    device,
    dim: int,
    batch: int,
    table_rows: int,
    capacity_slots: int | None = None,
    kernels=None,
    rotations: int = 4,
    repeats: int = 50,
    count_hits: int = 2,
) -> dict:
    """Time dc_query and gather_rows over the same rows, same launch shape (see
    kernel_variants)."""
    return kernel_variants(
        device,
        dim,
        batch,
        table_rows,
        capacity_slots,
        {"default": (kernels or device.kernels, count_hits)},
        rotations,
        repeats,
    )["default"]


def kernel_variants(
    device,
    dim: int,
    batch: int,
    table_rows: int,
    capacity_slots: int | None,
    variants: dict,
    rotations: int = 4,
    repeats: int = 50,
    warmup: int = 5,
    check: bool = True,
) -> dict:
    """kernel_vs_gather for several compiled variants over one cache: {name: (module,
    count_hits)} -> {name: result}. The cache has ``capacity_slots`` slots (None: as the
    runtime sizes it for the whole table, gpucacheper 1.0) and is prefilled with the table's
    first rows; batches are uniform over the table (uniform_batch), so a smaller cache misses.
    Each variant's query runs against its own gather (the same -D flags build both).
    count_hits: 2 into the hit bytes with occurrence counts (here all 1, the keys of a batch
    being distinct, as a de-duplicated lookup passes them), 1 into the scores, 0 none."""
    from hps_cli.runtime.gpu.gpu_dynamic import QUERY_ARGS
    from hps_cli.runtime.gpu.placement import WAYS, num_sets_for, query_seed
    from hps_cli.runtime.table.synthetic import synthetic_vectors

    rng = np.random.default_rng(dim)
    keys = table_keys(table_rows, dim)
    vectors = synthetic_vectors(keys, dim)
    num_sets = num_sets_for(table_rows, 1.0) if capacity_slots is None else capacity_slots // WAYS
    cache, plan = prefilled_cache(device, keys, vectors, num_sets)
    placed = np.zeros(table_rows, bool)
    placed[: plan.slots.size] = plan.slots >= 0
    slot_of_row = np.zeros(table_rows, np.int64)  # the in-place gather reads any slot of a miss
    slot_of_row[: plan.slots.size] = np.maximum(plan.slots, 0)
    batches, indices, slot_indices = [], [], []
    expected = None
    with device.scope():
        table = device.to_device(vectors)  # the same rows, dense, in table order
        # No hit byte may pass 255 between folds (one per timing round): a launch adds at most
        # a key's occurrences in its batch (weights are 1, hits counted into the hit bytes).
        assert (repeats + warmup) * -(-batch // table_rows) <= 255, "hit bytes would overflow"
        for r in range(rotations):
            idx = uniform_batch(rng, table_rows, batch)
            if r == 0 and check:
                expected = np.where(placed[idx][:, None], vectors[idx], np.float32(0))
            batches.append(device.to_device(keys[idx]))
            indices.append(device.to_device(idx))
            slot_indices.append(device.to_device(slot_of_row[idx]))
        weights = device.to_device(np.ones(batch, np.uint32))
        out = device.alloc(batch * dim * 4 + 16)
        mkeys, mpos, count = device.alloc(batch * 8), device.alloc(batch * 8), device.alloc(16)
        results = {}
        for name, (kernels, count_hits, *options) in variants.items():
            if options and options[0] == "resident":
                # one wave: as many blocks as fit on the device at once, by register count
                regs = -(-kernels.function("dc_query", QUERY_ARGS).num_regs // 8) * 8
                grid = (device.sm_count * max(1, min(8, 65536 // (regs * 256))), 1)
            else:
                grid = (device.launch_grid(batch, 1), 1)
            results[name] = _time_query_and_gathers(
                device,
                kernels,
                count_hits,
                cache,
                batches,
                indices,
                slot_indices,
                table,
                out,
                mkeys,
                mpos,
                count,
                grid,
                batch,
                dim,
                repeats,
                warmup,
                expected if not callable(check) or check(name) else None,
                query_seed,
                QUERY_ARGS,
                weights if "no_weights" not in options else None,
            )
            results[name].update(
                {
                    "dim": dim,
                    "batch": batch,
                    "table_rows": table_rows,
                    "cached_rows": plan.placed,
                    "capacity_slots": cache.capacity,
                    "keys": "uniform over the table's rows (a shuffled pass)",
                    "hit_rate": 1.0 - results[name]["misses"] / batch,
                    "bytes_per_cached_row": cache_bytes(cache.num_sets, dim) / max(plan.placed, 1),
                }
            )
        for buf in (table, weights, out, mkeys, mpos, count, *batches, *indices, *slot_indices):
            buf.free()
    cache.close()
    return results


def cache_bytes(num_sets: int, dim: int) -> int:
    from hps_cli.bench.cache_size import cache_memory_bytes

    return cache_memory_bytes(num_sets, dim)


def _time_query_and_gathers(
    device,
    kernels,
    count_hits,
    cache,
    batches,
    indices,
    slot_indices,
    table,
    out,
    mkeys,
    mpos,
    count,
    grid,
    batch,
    dim,
    repeats,
    warmup,
    expected,
    query_seed,
    query_args,
    weights,
) -> dict:
    from hps_cli.runtime.gpu.placement import FOLD_GROUP_SLOTS, HIT_FOLD_EVERY, padded_slots

    drv = device.drv
    rotations = len(batches)
    q = kernels.function("dc_query", query_args)
    g = kernels.function("gather_rows", "PPqiP")
    fold = kernels.function("dc_fold_hits", "PPq")
    with_weights = int(weights) if count_hits == 2 and weights is not None else 0

    def query(i):
        q.prepared_async_call(
            grid,
            (256, 1, 1),
            None,
            int(batches[i % rotations]),
            with_weights,
            batch,
            int(cache.d_keys),
            int(cache.d_scores),
            int(cache.d_hits),
            int(cache.d_values),
            cache.num_sets,
            dim,
            np.float32(0),
            int(out),
            int(mkeys),
            int(mpos),
            int(count),
            count_hits,
            query_seed(i),
        )

    def fold_hits(i):
        groups = padded_slots(cache.capacity) // FOLD_GROUP_SLOTS
        fold.prepared_async_call(
            (device.launch_grid(groups, 1), 1),
            (256, 1, 1),
            None,
            int(cache.d_hits),
            int(cache.d_scores),
            groups,
        )

    def gather(i):
        g.prepared_async_call(
            grid, (256, 1, 1), None, int(table), int(indices[i % rotations]), batch, dim, int(out)
        )

    def gather_in_place(i):
        g.prepared_async_call(
            grid,
            (256, 1, 1),
            None,
            int(cache.d_values),
            int(slot_indices[i % rotations]),
            batch,
            dim,
            int(out),
        )

    if expected is not None:  # every variant must return the right rows before it is timed
        got = np.full((batch, dim), np.nan, np.float32)
        for launch in (query, gather, gather_in_place):
            drv.memset_d32(out, 0x7FC00000, batch * dim)  # poison with NaN
            launch(0)
            drv.Context.synchronize()
            drv.memcpy_dtoh(got, out)
            if not np.array_equal(got, expected):
                raise AssertionError(f"{launch.__name__} returned wrong rows (dim {dim})")
    drv.memset_d32(count, 0, 1)
    fold_hits(0)  # a fold after every query round: see kernel_variants for the bound
    # Rounds alternate query, gather and in-place gather; the ratio is the median of the rounds'
    # ratios, so one round slowed by the host or the card moves it less than a mean would.
    rounds = {"query": [], "gather": [], "gather_in_place": []}
    misses = np.empty(1, np.uint32)
    for r in range(ROUNDS):
        rounds["query"].append(_events_median(device, query, repeats, warmup))
        if r == 0:
            drv.memcpy_dtoh(misses, count)
        fold_hits(0)
        rounds["gather"].append(_events_median(device, gather, repeats, warmup))
        rounds["gather_in_place"].append(_events_median(device, gather_in_place, repeats, warmup))
    # The fold after HIT_FOLD_EVERY queries' hits (the driver's schedule), each timed alone.
    fold_times = []
    for r in range(8 if count_hits == 2 else 0):
        for j in range(HIT_FOLD_EVERY):
            query(r * HIT_FOLD_EVERY + j)
        start, end = drv.Event(), drv.Event()
        start.record()
        fold_hits(r)
        end.record()
        end.synchronize()
        fold_times.append(end.time_since(start))
    fold_hits(0)
    fold_ms = statistics.median(fold_times) if fold_times else 0.0
    ratios = [g / q for g, q in zip(rounds["gather"], rounds["query"])]
    ratios_in_place = [g / q for g, q in zip(rounds["gather_in_place"], rounds["query"])]
    q_ms, gd = statistics.median(rounds["query"]), statistics.median(rounds["gather"])
    ratio = statistics.median(ratios)
    return {
        "count_hits": count_hits,
        "misses": int(misses[0]),
        "rounds": ROUNDS,
        "query_ms": q_ms,
        "gather_ms": gd,
        "gather_in_place_ms": statistics.median(rounds["gather_in_place"]),
        "round_ms": rounds,
        "round_ratios": ratios,
        "query_gkeys_per_s": batch / q_ms / 1e6,
        "gather_gkeys_per_s": batch / gd / 1e6,
        "gather_tb_per_s": batch * (8 + 8 * dim) / gd / 1e9,
        "throughput_ratio": ratio,
        "time_ratio": 1 / ratio,
        "throughput_ratio_min": min(ratios),
        "throughput_ratio_max": max(ratios),
        "throughput_ratio_in_place": statistics.median(ratios_in_place),
        "fold_ms": fold_ms,
        "fold_every": HIT_FOLD_EVERY if count_hits == 2 else None,
        "throughput_ratio_with_fold": 1 / (1 / ratio + fold_ms / HIT_FOLD_EVERY / gd),
    }


def transfer_breakdown(
    device, dim: int = 128, keys_per_lookup: int = 2000, iterations: int = 2000
) -> dict:
    """Where the time of a small lookup goes (keys uniform over a 100,000-row table, all
    cached: 100 % hits): the raw CUDA sequence of each route, step by step, with the runtime's
    lean launcher and no other Python. ``copied``: keys copied in, rows copied out (the route
    of large results); ``mapped``: the kernel reads the keys from and writes the rows into
    mapped pinned memory (the route of small results). The two run in
    alternating iterations, so host drift hits both alike."""
    from hps_cli.runtime.gpu.gpu_dynamic import PUBLISHED_QUERY_ARGS, QUERY_ARGS
    from hps_cli.runtime.gpu.pinned import mapped_empty
    from hps_cli.runtime.gpu.placement import num_sets_for
    from hps_cli.runtime.table.synthetic import synthetic_vectors

    drv = device.drv
    rng = np.random.default_rng(4)
    keys = table_keys(100_000, 4)
    vectors = synthetic_vectors(keys, dim)
    cache, _ = prefilled_cache(device, keys, vectors, num_sets_for(keys.size, 1.0))
    batch = keys[rng.integers(0, keys.size, keys_per_lookup)]  # uniform over the table
    expected = synthetic_vectors(batch, dim)
    n = batch.size
    with device.scope():
        stream = drv.Stream()
        h_keys, m_keys = mapped_empty(drv, n * 8)
        h_out, m_out = mapped_empty(drv, 16 + n * dim * 4)
        h_keys, h_rows = h_keys.view(np.int64), h_out[16:].view(np.float32).reshape(n, dim)
        d_keys, d_out = device.alloc(n * 8), device.alloc(16 + n * dim * 4)
        d_mk, d_mp, d_count = device.alloc(n * 8), device.alloc(n * 8), device.alloc(16)
        drv.memset_d32(d_count, 0, 4)
        kernels = {
            "copied": device.launcher("dc_query", QUERY_ARGS),
            "mapped": device.launcher("dc_query_published", PUBLISHED_QUERY_ARGS),
        }
        grid = (device.launch_grid(n, 1), 1)
        cache_args = (
            int(cache.d_keys),
            int(cache.d_scores),
            int(cache.d_hits),
            int(cache.d_values),
            cache.num_sets,
            dim,
        )
        names = {
            "copied": ("copyto_pinned", "htod", "memset", "launch", "dtoh", "sync"),
            "mapped": ("copyto_pinned", "launch", "sync"),
        }
        steps = {route: {name: [] for name in (*names[route], "total")} for route in names}
        for it in range(2 * iterations + 200):
            route = "copied" if it % 2 else "mapped"
            keys_ptr, out_ptr = (int(d_keys), int(d_out)) if route == "copied" else (m_keys, m_out)
            t = [time.perf_counter()]
            np.copyto(h_keys, batch)
            t.append(time.perf_counter())
            if route == "copied":  # as transfers.start_rows runs each route
                drv.memcpy_htod_async(d_keys, h_keys, stream)
                t.append(time.perf_counter())
                drv.memset_d32_async(d_out, 0, 1, stream)
                t.append(time.perf_counter())
                count = (int(d_out),)  # counted in the head, not published
            else:
                count = (int(d_count), int(d_count) + 4, out_ptr)  # counter, ticket, publish
            kernels[route](
                grid,
                (256, 1, 1),
                stream,
                keys_ptr,
                0,
                n,
                *cache_args,
                0.0,
                out_ptr + 16,
                int(d_mk),
                int(d_mp),
                count[0],
                1,
                it,
                *count[1:],
            )
            t.append(time.perf_counter())
            if route == "copied":
                drv.memcpy_dtoh_async(h_out, d_out, stream)
                t.append(time.perf_counter())
            stream.synchronize()
            t.append(time.perf_counter())
            if it < 4:  # each route must return the right rows before it is timed
                if not np.array_equal(h_rows, expected):
                    raise AssertionError(f"the {route} route returned wrong rows")
                h_rows.fill(np.nan)
            if it >= 200:
                for name, a, b in zip(names[route], t[:-1], t[1:]):
                    steps[route][name].append((b - a) * 1e6)
                steps[route]["total"].append((t[-1] - t[0]) * 1e6)
    return {
        route: {name: float(np.median(v)) for name, v in by_step.items()}
        | {"total_p99": float(np.percentile(by_step["total"], 99))}
        for route, by_step in steps.items()
    }


def route_by_size(
    device,
    dim: int = 128,
    sizes=(2000, 16384, 65535),
    rounds: int = 4,
    per_round: int = 100,
) -> list[dict]:
    """The latency of ``GpuDynamicCache.query`` by batch size on each route, to place
    MAPPED_RESULT_MAX_BYTES: keys uniform over a 200,000-row table, all cached (100 % hits);
    the routes alternate round by round in one process."""
    from hps_cli.runtime.gpu import transfers
    from hps_cli.runtime.gpu.placement import num_sets_for
    from hps_cli.runtime.table.synthetic import synthetic_vectors

    rng = np.random.default_rng(5)
    keys = table_keys(200_000, 5)
    cache, _ = prefilled_cache(
        device, keys, synthetic_vectors(keys, dim), num_sets_for(keys.size, 1.0)
    )
    saved = transfers.MAPPED_RESULT_MAX_BYTES
    results = []
    try:
        for n in sizes:
            batches = [keys[rng.integers(0, keys.size, n)] for _ in range(8)]
            times = {"mapped": [], "copied": []}
            misses = 0
            for r in range(2 * rounds + 2):
                route = "mapped" if r % 2 else "copied"
                transfers.MAPPED_RESULT_MAX_BYTES = 1 << 62 if route == "mapped" else -1
                for i in range(per_round):
                    t0 = time.perf_counter()
                    pending = cache.query(batches[i % 8])
                    out = pending.finish(None)
                    elapsed = (time.perf_counter() - t0) * 1e6
                    misses += pending.miss_keys.size
                    del out
                    if r >= 2:
                        times[route].append(elapsed)
            m, c = float(np.median(times["mapped"])), float(np.median(times["copied"]))
            results.append(
                {
                    "keys": n,
                    "dim": dim,
                    "result_bytes": n * dim * 4,
                    "hit_rate": 1.0 - misses / ((2 * rounds + 2) * per_round * n),
                    "mapped_p50_us": m,
                    "copied_p50_us": c,
                    "mapped_over_copied": m / c,
                }
            )
    finally:
        transfers.MAPPED_RESULT_MAX_BYTES = saved
    cache.close()
    return results


def end_to_end(device, dim: int = 128, keys_per_lookup: int = 2000, iterations: int = 3000) -> dict:
    """``DynamicEmbeddingCache.query`` of 2,000 keys uniform over a 200,000-row table, all
    cached (gpucacheper 1.0, prefilled): p50 / p99 latency."""
    from hps_cli.runtime.gpu.embedding_cache import DynamicEmbeddingCache
    from hps_cli.runtime.gpu.placement import num_sets_for
    from hps_cli.runtime.table.synthetic import synthetic_vectors

    rng = np.random.default_rng(0)
    keys = table_keys(200_000, 0)
    backend, _ = prefilled_cache(
        device, keys, synthetic_vectors(keys, dim), num_sets_for(keys.size, 1.0)
    )
    cache = DynamicEmbeddingCache(
        backend,
        fetch=lambda k: synthetic_vectors(k, dim),
        hit_rate_threshold=1.0,
        default_value=0.0,
    )
    batches = [keys[rng.integers(0, keys.size, keys_per_lookup)] for _ in range(64)]
    # warm-up: compile, allocate, fill the pinned pool, and let the host and the card settle
    # into a steady state (the first thousand lookups of a fresh process vary by ±30 µs)
    timing = _latency_rounds(cache.query, batches, iterations)
    check = cache.query(batches[0])
    assert np.array_equal(check, synthetic_vectors(batches[0], dim)), "wrong vectors"
    stats = cache.stats()
    backend.close()
    return {
        "dim": dim,
        "keys": keys_per_lookup,
        "key_distribution": "uniform over a 200,000-row table, all cached",
        "hit_rate": stats["hit_rate"],
        "iterations": iterations,
        **timing,
    }


def _latency_rounds(call, batches, iterations: int, rounds: int = ROUNDS) -> dict:
    """Latency of ``call(batch)`` after WARMUP_LOOKUPS: ``rounds`` rounds of ``iterations``
    calls, percentiles per round and over all, and when the lookups over SLOW_US happened (ms
    from the start), so a burst (the host busy for a while) can be told from a steady tail."""
    import gc

    for i in range(WARMUP_LOOKUPS):
        call(batches[i % len(batches)])
    gen2_before = gc.get_stats()[2]["collections"]
    start = time.perf_counter()
    per_round, runs, slow = [], [], []
    for _ in range(rounds):
        lat = np.empty(iterations)
        for i in range(iterations):
            t0 = time.perf_counter()
            out = call(batches[i % len(batches)])
            lat[i] = (time.perf_counter() - t0) * 1e6
            del out
            if lat[i] > SLOW_US:
                slow.append(round((t0 - start) * 1e3, 1))
        runs.append(lat)
        per_round.append(
            {
                q: float(np.percentile(lat, v))
                for q, v in (("p50_us", 50), ("p90_us", 90), ("p99_us", 99))
            }
            | {"max_us": float(lat.max())}
        )
    lat = np.concatenate(runs)
    return {
        "rounds": rounds,
        "lookups": int(lat.size),
        "p50_us": float(np.percentile(lat, 50)),
        "p90_us": float(np.percentile(lat, 90)),
        "p99_us": float(np.percentile(lat, 99)),
        "max_us": float(lat.max()),
        "per_round": per_round,
        "round_p99_us": [r["p99_us"] for r in per_round],
        "slow_lookups": len(slow),
        "slow_at_ms": slow if len(slow) <= 300 else slow[:150] + slow[-150:],
        "wall_ms": (time.perf_counter() - start) * 1e3,
        "gen2_collections": gc.get_stats()[2]["collections"] - gen2_before,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--quick", action="store_true", help="smaller sizes (smoke run)")
    ap.add_argument(
        "--half-full",
        action="store_true",
        help="also time 1 M keys of a 1 M-row table in twice the slots",
    )
    ap.add_argument(
        "--variants",
        action="store_true",
        help="also time kernel variants (copy unroll, no hit counting)",
    )
    args = ap.parse_args()
    from hps_cli.runtime.gpu.device import get_device

    device = get_device(0)
    result = {"date": date.today().isoformat(), "device": device.name, "arch": device.arch}
    # Latency first, so that nothing before it in this process can be blamed for it (measured:
    # the order makes no difference; the host does).
    result["transfer_breakdown_2000"] = transfer_breakdown(device)
    result["route_by_size"] = route_by_size(device) if not args.quick else None
    result["end_to_end_2000"] = end_to_end(device, iterations=3000 if not args.quick else 300)
    big = 1 << 20
    rows = 1 << 20 if not args.quick else 1 << 16
    result["query_1M"] = [kernel_vs_gather(device, d, big, rows) for d in (32, 128)]
    result["query_1M_4M_rows"] = (
        [kernel_vs_gather(device, 128, big, 4 * rows)] if not args.quick else []
    )
    result["query_1M_half_full"] = (
        [kernel_vs_gather(device, d, big, rows, 2 * rows) for d in (32, 128)]
        if args.half_full
        else []
    )
    if args.variants:
        from hps_cli.runtime.gpu.kernels import KernelModule

        result["variants"] = {}
        # Variants that were measured and lost; kept to re-check them on other cards.
        for name, defines in (
            ("unroll8", {"HPS_COPY_UNROLL": "8"}),
            ("no_evict_last", {"HPS_META_EVICT_LAST": "0"}),
            ("no_streaming_hints", {"HPS_COPY_STREAMING": "0"}),
            ("every_hit_counted", {"HPS_HIT_SAMPLE_SHIFT": "0"}),
        ):
            with device.scope():
                module = KernelModule(device.arch, defines)
            result["variants"][name] = [
                kernel_vs_gather(device, d, big, rows, kernels=module) for d in (32, 128)
            ]
        result["variants"]["no_hit_counting"] = [
            kernel_vs_gather(device, d, big, rows, count_hits=0) for d in (32, 128)
        ]
    # 16 K keys: a lookup of that size queries directly, counting hits into the scores
    result["query_16K"] = kernel_vs_gather(device, 128, 16384, rows, repeats=200, count_hits=1)
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w") as handle:
            handle.write(text)
    print(text)
    print("\nsummary (card: %s)" % device.name, file=sys.stderr)
    for label, rows_ in (
        ("", result["query_1M"]),
        (" 4M rows", result["query_1M_4M_rows"]),
        (" half full", result["query_1M_half_full"]),
    ):
        for r in rows_:
            print(
                f"query 1M{label} dim{r['dim']}: {r['throughput_ratio']:.3f}x gather "
                f"(rounds {r['throughput_ratio_min']:.3f}-{r['throughput_ratio_max']:.3f}; "
                f"{r['query_ms']:.4f} vs {r['gather_ms']:.4f} ms; in place "
                f"{r['throughput_ratio_in_place']:.3f}x; with the fold "
                f"{r['throughput_ratio_with_fold']:.3f}x; hit rate {r['hit_rate']:.4f}; "
                f"{r['cached_rows']} of {r['table_rows']} rows in {r['capacity_slots']} slots, "
                f"{r['bytes_per_cached_row']:.0f} B per row)",
                file=sys.stderr,
            )
    for name, rows_ in (result.get("variants") or {}).items():
        print(
            f"  variant {name}: "
            + ", ".join(
                f"dim{r['dim']} {r['throughput_ratio']:.2f}x "
                f"({r['query_ms']:.3f}/{r['gather_ms']:.3f})"
                for r in rows_
            ),
            file=sys.stderr,
        )
    for route, steps in result["transfer_breakdown_2000"].items():
        print(
            f"small lookup, {route} route (us): "
            + ", ".join(f"{k} {v:.1f}" for k, v in steps.items()),
            file=sys.stderr,
        )
    for r in result["route_by_size"] or []:
        print(
            f"query {r['keys']} keys dim{r['dim']}: mapped {r['mapped_p50_us']:.0f} us, "
            f"copied {r['copied_p50_us']:.0f} us ({r['mapped_over_copied']:.2f})",
            file=sys.stderr,
        )
    q16 = result["query_16K"]
    print(
        f"query 16K dim128: {q16['time_ratio']:.2f}x gather time ({q16['query_ms'] * 1e3:.1f} vs "
        f"{q16['gather_ms'] * 1e3:.1f} us; hit rate {q16['hit_rate']:.4f})",
        file=sys.stderr,
    )
    e2e = result["end_to_end_2000"]
    print(
        f"DynamicEmbeddingCache.query 2000 keys dim128, uniform, hit rate {e2e['hit_rate']:.4f}: "
        f"p50 {e2e['p50_us']:.0f} us, p99 {e2e['p99_us']:.0f} us "
        f"({e2e['slow_lookups']} over {SLOW_US:.0f} us)",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
