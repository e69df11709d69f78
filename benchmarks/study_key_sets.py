"""Study (issue #6): would small sets probed by their 64-bit keys alone, without digests, bring
the 1 M-key query to >= 0.9x the gather at dim 32 on a half-full cache?

Builds the cache state on the host (keys placed into sets of STUDY_WAYS ways in batch order; a
key whose set is full is dropped, as an eviction would), times `study_query`
(benchmarks/study_key_sets.cu) against `gather_rows` over the same rows in the same process,
and, for reference, the production `dc_query` on its own cache (bench_gpu_cache; 32-way sets
with digests when this study ran, placement.WAYS ways since).

    python benchmarks/study_key_sets.py --out .bench/study_key_sets.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
from bench_gpu_cache import _events_median, kernel_vs_gather

HERE = Path(__file__).resolve().parent
# name: (ways, count, sequential)
VARIANTS = {
    "w4": (4, 1, 0),
    "w4_no_count": (4, 0, 0),
    "w8": (8, 1, 0),
    "w8_no_count": (8, 0, 0),
    "w8_scores": (8, 2, 0),
    "w8_clock_store": (8, 3, 0),
    "w8_sequential": (8, 1, 1),
    "w16": (16, 1, 0),
    "w16_no_count": (16, 0, 0),
    "w16_sequential": (16, 1, 1),
}


def build_state(ways: int, num_sets: int, cached: int, dim: int, rng):
    from hps_cli.runtime.gpu.placement import EMPTY_KEY
    from hps_cli.runtime.hashing import mix64
    from hps_cli.runtime.table.synthetic import synthetic_vectors

    keys = rng.choice(2**62, cached, replace=False).astype(np.int64)
    h = mix64(keys)
    sets = (((h >> np.uint64(32)) * np.uint64(num_sets)) >> np.uint64(32)).astype(np.int64)
    order = np.argsort(sets, kind="stable")
    sorted_sets = sets[order]
    starts = np.flatnonzero(np.r_[True, sorted_sets[1:] != sorted_sets[:-1]])
    group_start = np.repeat(starts, np.diff(np.r_[starts, sets.size]))
    rank = np.arange(sets.size) - group_start
    keep = rank < ways
    present = keys[order][keep]
    slots = sorted_sets[keep] * ways + rank[keep]
    cache_keys = np.full(num_sets * ways, EMPTY_KEY, np.int64)
    cache_keys[slots] = present
    values = np.zeros((num_sets * ways, dim), np.float32)
    values[slots] = synthetic_vectors(present, dim)
    return present, cache_keys, values


def compile_variant(device, ways: int, count: int, sequential: int):
    from hps_cli.runtime.gpu.kernels import cache_dir, nvcc_flags
    from hps_cli.runtime.resources import cuda_dir
    from pycuda.compiler import SourceModule

    defines = {
        "STUDY_WAYS": str(ways),
        "HPS_WAYS": str(ways),
        "STUDY_COUNT": str(count),
        "STUDY_SEQUENTIAL": str(sequential),
    }
    module = SourceModule(
        (HERE / "study_key_sets.cu").read_text(),
        no_extern_c=True,
        include_dirs=[str(cuda_dir().resolve())],
        options=nvcc_flags(defines),
        arch=device.arch,
        cache_dir=cache_dir(),
    )
    fn = module.get_function("study_query")
    fn.prepare("PqPPPPIifPPPPq")
    return fn


def time_variant(device, fn, ways, num_sets, state, dim, batch, rng, repeats=50):
    from hps_cli.runtime.gpu.placement import query_seed
    from hps_cli.runtime.table.synthetic import synthetic_vectors

    drv = device.drv
    present, cache_keys, values = state
    d_keys, d_values = device.to_device(cache_keys), device.to_device(values)
    slots = cache_keys.size
    d_scores, d_hits = device.alloc(slots * 4), device.alloc(slots + 16)
    drv.memset_d32(d_scores, 0, slots)
    drv.memset_d8(d_hits, 0, slots + 16)
    table = device.to_device(synthetic_vectors(present, dim))
    batches, indices = [], []
    for r in range(4):
        idx = rng.integers(0, present.size, batch).astype(np.int64)
        if r == 0:
            expected = synthetic_vectors(present[idx], dim)
        batches.append(device.to_device(present[idx]))
        indices.append(device.to_device(idx))
    out = device.alloc(batch * dim * 4)
    mkeys, mpos, count = device.alloc(batch * 8), device.alloc(batch * 8), device.alloc(16)
    grid = (device.launch_grid(batch, 1), 1)
    g = device.kernels.function("gather_rows", "PPqiP")

    def query(i):
        fn.prepared_async_call(
            grid,
            (256, 1, 1),
            None,
            int(batches[i % 4]),
            batch,
            int(d_keys),
            int(d_scores),
            int(d_hits),
            int(d_values),
            num_sets,
            dim,
            np.float32(0),
            int(out),
            int(mkeys),
            int(mpos),
            int(count),
            query_seed(i),
        )

    def gather(i):
        g.prepared_async_call(
            grid, (256, 1, 1), None, int(table), int(indices[i % 4]), batch, dim, int(out)
        )

    got = np.empty((batch, dim), np.float32)
    for launch in (query, gather):
        drv.memset_d32(out, 0x7FC00000, batch * dim)
        drv.memset_d32(count, 0, 1)
        launch(0)
        drv.Context.synchronize()
        drv.memcpy_dtoh(got, out)
        if not np.array_equal(got, expected):
            raise AssertionError(f"{launch.__name__} returned wrong rows (ways {ways}, dim {dim})")
    misses = np.empty(1, np.uint32)
    drv.memcpy_dtoh(misses, count)
    assert misses[0] == 0, misses
    rounds = []
    for _ in range(2):
        drv.memset_d8(d_hits, 0, slots + 16)  # no hit byte may wrap within a round
        rounds.append(
            (_events_median(device, query, repeats), _events_median(device, gather, repeats))
        )
    q = statistics.mean(r[0] for r in rounds)
    gt = statistics.mean(r[1] for r in rounds)
    for buf in (
        d_keys,
        d_values,
        d_scores,
        d_hits,
        table,
        out,
        mkeys,
        mpos,
        count,
        *batches,
        *indices,
    ):
        buf.free()
    return {
        "query_ms": [r[0] for r in rounds],
        "gather_ms": [r[1] for r in rounds],
        "throughput_ratio": gt / q,
        "cached_keys": int(present.size),
        "slots": slots,
        "regs": fn.num_regs,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--dims", default="32,128")
    args = ap.parse_args()
    from hps_cli.runtime.gpu.device import get_device

    device = get_device(0)
    big = 1 << 20
    chosen = {k: v for k, v in VARIANTS.items() if not args.only or k in args.only}
    result = {"device": device.name, "rows": []}
    with device.scope():
        fns = {name: compile_variant(device, *spec) for name, spec in chosen.items()}
        for dim in (int(d) for d in args.dims.split(",")):
            for fill, slots in (("full", big), ("half", 2 * big)):
                prod = kernel_vs_gather(device, dim, big, big, slots)
                row = {"dim": dim, "fill": fill, "production": prod["throughput_ratio"]}
                states = {}
                for name, (ways, _count, _sequential) in chosen.items():
                    rng = np.random.default_rng(dim * 7 + ways)
                    if ways not in states:
                        states.clear()
                        states[ways] = build_state(ways, slots // ways, big, dim, rng)
                    r = time_variant(
                        device, fns[name], ways, slots // ways, states[ways], dim, big, rng
                    )
                    row[name] = r
                    print(
                        f"dim {dim} {fill:4s} {name:16s} ratio {r['throughput_ratio']:.3f} "
                        f"(cached {r['cached_keys']}, regs {r['regs']}; production "
                        f"{prod['throughput_ratio']:.3f})",
                        file=sys.stderr,
                    )
                result["rows"].append(row)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"card: {device.name}", file=sys.stderr)


if __name__ == "__main__":
    main()
