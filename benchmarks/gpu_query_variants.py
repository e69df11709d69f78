"""Tuning study of the dynamic cache's query kernel on a GPU (issue #6): compile variants of
the kernels with different -D knobs and time each query against the gather built from the same
flags, over one cache per dim.

    python benchmarks/gpu_query_variants.py --out .bench/gpu_query_variants.json
    python benchmarks/gpu_query_variants.py --profile [--define HPS_KEYS_PER_LANE=2]
    STUDY_WAYS=4 python benchmarks/gpu_query_variants.py  # 4-way sets, GPU and reference

`--profile` runs one query, one gather and one in-place gather per dim (for `ncu`). Each
variant's output is checked against the rows it must return before it is timed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
from bench_gpu_cache import kernel_variants

# name: (defines, count_hits); count_hits 2: hits into the hit bytes (the de-duplicated path
# that a 1 M-key lookup takes), 1: into the scores (small lookups), 0: not counted.
VARIANTS = {
    "k1": ({}, 2),
    "k1_scores": ({}, 1),
    "k1_no_hit_counting": ({}, 0),
    "k1_no_weights": ({}, 2, "no_weights"),  # hit bytes without reading occurrence counts
    "k1_sample8": ({"HPS_HIT_SAMPLE_SHIFT": "3"}, 2),
    "k1_minblocks6": ({"HPS_COPY_MIN_BLOCKS": "6"}, 2),
    "k1_unroll2": ({"HPS_COPY_UNROLL": "2"}, 2),
    "k1_resident_grid": ({}, 2, "resident"),
    "k2": ({"HPS_KEYS_PER_LANE": "2"}, 2),
    "k4": ({"HPS_KEYS_PER_LANE": "4"}, 2),
}


def _study_ways() -> None:
    """STUDY_WAYS=4|16|32: sets of that many ways throughout this process (the cache's layout,
    the reference and the kernels' -DHPS_WAYS). The runtime's width is the constant
    placement.WAYS, which the other GPU modules read when they are imported: it is replaced
    here, before they are."""
    ways = os.environ.get("STUDY_WAYS")
    if not ways:
        return
    readers = ("kernels", "device", "gpu_dynamic", "reference")
    loaded = [name for name in readers if f"hps_cli.runtime.gpu.{name}" in sys.modules]
    if loaded:
        raise SystemExit(f"STUDY_WAYS: hps_cli.runtime.gpu.{loaded[0]} was imported before")
    from hps_cli.runtime.gpu import placement

    placement.WAYS = int(ways)


def _check_rows(name: str) -> bool:
    return "(wrong)" not in name  # study-only variants that skip a correctness step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--only", nargs="*", help="variant names")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--define", action="append", default=[], help="NAME=VALUE (with --profile)")
    ap.add_argument("--dims", default="32,128")
    ap.add_argument("--hits", type=int, default=1, help="count_hits (with --profile)")
    args = ap.parse_args()
    _study_ways()
    from hps_cli.runtime.gpu.device import get_device
    from hps_cli.runtime.gpu.kernels import KernelModule

    device = get_device(0)
    persist_mb = float(os.environ.get("HPS_STUDY_L2_PERSIST_MB", "0"))
    if persist_mb:
        # An L2 set-aside for evict-last (persisting) lines: without one they are treated as
        # normal lines.
        import ctypes

        cuda = ctypes.CDLL("libcuda.so.1")
        max_persist = ctypes.c_int()
        with device.scope():
            cuda.cuDeviceGetAttribute(ctypes.byref(max_persist), 108, 0)  # device ordinal 0
            rc = cuda.cuCtxSetLimit(6, ctypes.c_size_t(int(persist_mb * 2**20)))
            got = ctypes.c_size_t()
            cuda.cuCtxGetLimit(ctypes.byref(got), 6)
        print(
            f"persisting L2 set-aside: asked {persist_mb} MiB, rc {rc}, now "
            f"{got.value / 2**20:.1f} MiB (max {max_persist.value / 2**20:.1f} MiB)",
            file=sys.stderr,
        )
    fetch = int(os.environ.get("HPS_STUDY_L2_FETCH_BYTES", "0"))
    if fetch:
        # CU_LIMIT_MAX_L2_FETCH_GRANULARITY: how many bytes an L2 miss brings from DRAM (a hint)
        import ctypes

        cuda = ctypes.CDLL("libcuda.so.1")
        with device.scope():
            before = ctypes.c_size_t()
            cuda.cuCtxGetLimit(ctypes.byref(before), 5)
            rc = cuda.cuCtxSetLimit(5, ctypes.c_size_t(fetch))
            got = ctypes.c_size_t()
            cuda.cuCtxGetLimit(ctypes.byref(got), 5)
        print(
            f"L2 fetch granularity: was {before.value} B, asked {fetch} B, rc {rc}, now "
            f"{got.value} B",
            file=sys.stderr,
        )
    dims = [int(d) for d in args.dims.split(",")]
    big = 1 << 20
    if args.profile:
        defines = dict(d.split("=", 1) for d in args.define)
        with device.scope():
            module = KernelModule(device.arch, defines)
        for dim in dims:
            kernel_variants(
                device,
                dim,
                big,
                big,
                2 * big,
                {"p": (module, args.hits)},
                repeats=1,
                warmup=0,
                check=False,
            )
        return
    # a name matches with or without its " (wrong)" suffix
    chosen = {
        k: v
        for k, v in VARIANTS.items()
        if not args.only or k in args.only or k.split(" ")[0] in args.only
    }
    modules = {}
    for name, (defines, hits, *options) in chosen.items():
        with device.scope():
            modules[name] = (KernelModule(device.arch, defines), hits, *options)
    result = {"device": device.name, "variants": {}}
    for dim in dims:
        rows = kernel_variants(device, dim, big, big, 2 * big, modules, check=_check_rows)
        for name, row in rows.items():
            result["variants"].setdefault(name, []).append(row)
    for name, (module, *_) in modules.items():
        result["variants"][name].append(
            {
                "regs_query": module.function("dc_query", "P").num_regs,
                "regs_gather": module.function("gather_rows", "P").num_regs,
            }
        )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w") as handle:
            json.dump(result, handle, indent=2)
    print(f"card: {device.name}", file=sys.stderr)
    print(
        f"{'variant':28s} {'regs q/g':>9s} "
        + " ".join(f"{'d' + str(d) + ' q/g ms':>16s} {'ratio':>6s} {'inplace':>7s}" for d in dims),
        file=sys.stderr,
    )
    for name, rows in result["variants"].items():
        regs = rows[-1]
        cells = " ".join(
            f"{r['query_ms']:.3f}/{r['gather_ms']:.3f}".rjust(16)
            + f" {r['throughput_ratio']:6.3f} {r['throughput_ratio_in_place']:7.3f}"
            for r in rows[:-1]
        )
        print(
            f"{name:28s} {regs['regs_query']:4d}/{regs['regs_gather']:<4d} {cells}", file=sys.stderr
        )


if __name__ == "__main__":
    np.set_printoptions(linewidth=120)
    main()
