"""Benchmark: the shared-memory hash map (``multi_process_hash_map``) against the in-process hash
map (``parallel_hash_map``), measured in the same run.

    python benchmarks/bench_shm_map.py --keys 2000000 --dim 128 --batch 65536

One process loads the same table (synthetic, shuffled keys 0 .. keys-1) into both maps, 16
partitions each, then looks up the same batches of keys *uniform over the table* in both,
alternately (each pair back to back, so that both see the same machine load): keys/s of each,
the ratio of the rates (shared / in-process) and the median of the per-pair ratios, at
``--batch`` keys per lookup and at ``--small-batch``. Also:

- load seconds of each map, and the bytes of each against the raw keys + vectors;
- ``attach_s``: a second process opening the segment and its table (no reload) and answering
  its first lookup;
- ``with_writer``: lookups of the shared map while another process rewrites random batches of
  ``--writer-batch`` keys without pause, alternating with lookups of the in-process map (the
  readers re-read keys whose partition a write changed; on a 2-core machine the writer also
  takes CPU from the reader).

``--latency``: microseconds per ``get`` of small batches instead (the median of many rounds),
as ``hps serve`` makes them: batches of ``--latency-batches`` keys uniform over tables of
``--latency-tables`` (keys × dim, keys 0 .. keys-1 with synthetic vectors, 16 partitions),
through the shared map with its compiled read and with ``HPS_NATIVE=0``, and through the
in-process map (compiled and NumPy), one after the other in each round, in an order that
rotates from round to round (all four see the same machine load):

    python benchmarks/bench_shm_map.py --latency --rounds 3000
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _measure import ensure_table  # noqa: E402

TAG = "hps_et.bench.t"
PARTITIONS = 16


def _segment_size(keys: int, dim: int) -> int:
    from hps_cli.runtime.volatile import shm_layout as L

    room = L.partition_room(keys, PARTITIONS, None)
    return L.first_region() + L.table_layout(dim, PARTITIONS, room).nbytes


def _open_shared(args, name: str):
    from hps_cli.runtime.volatile.shm_segment import SharedSegment
    from hps_cli.runtime.volatile.shm_table import SharedHashMapTable

    segment = SharedSegment(name, _segment_size(args.keys, args.dim))
    table = SharedHashMapTable(
        segment, TAG, args.dim, num_partitions=PARTITIONS, expected_keys=args.keys
    )
    return segment, table


def _alternate(batches, warmup: int, first, second) -> dict:
    """Seconds of ``first`` and ``second`` over the batches after ``warmup``, run alternately."""
    t_first = t_second = 0.0
    ratios = []
    for i, keys in enumerate(batches):
        a = time.perf_counter()
        first(keys)
        b = time.perf_counter()
        second(keys)
        c = time.perf_counter()
        if i >= warmup:
            t_first += b - a
            t_second += c - b
            ratios.append((b - a) / (c - b))
    timed = sum(k.size for k in batches[warmup:])
    return {
        "shared_keys_per_s": round(timed / t_second),
        "in_process_keys_per_s": round(timed / t_first),
        "ratio": round(t_first / t_second, 3),
        "median_pair_ratio": round(float(np.median(ratios)), 3),
    }


def _batches(args, size: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    count = args.warmup + max(args.batches, args.batches * args.batch // size // 4)
    return [rng.integers(0, args.keys, size, dtype=np.int64) for _ in range(count)]


def measure(args) -> dict:
    from hps_cli.runtime.startup_load import load_volatile
    from hps_cli.runtime.table import TableReader
    from hps_cli.runtime.volatile.hash_map import HashMapTable

    raw = args.keys * (8 + 4 * args.dim)
    name = f"hps_bench_shm_{int(time.time())}"
    result: dict = {}
    with TableReader(args.work / "table") as reader:
        started = time.perf_counter()
        local = HashMapTable(args.dim, num_partitions=PARTITIONS, reserve=reader.num_keys)
        load_volatile(local, reader, None)
        in_process_s = time.perf_counter() - started
        started = time.perf_counter()
        segment, shared = _open_shared(args, name)
        load_volatile(shared, reader, None)
        shared_s = time.perf_counter() - started
        positions = np.empty(args.keys, dtype=np.int64)
        positions[np.array(reader.keys())] = np.arange(args.keys)
        vectors = reader.vectors()
        check = np.arange(0, args.keys, 1009)
        out, hit, _ = shared.get(check)
        assert hit.all() and np.array_equal(out, vectors[positions[check]])
    result["load_s"] = {"in_process": round(in_process_s, 2), "shared": round(shared_s, 2)}
    result["bytes_vs_raw"] = {
        "in_process": round(local.nbytes / raw, 3),
        "shared_region": round(shared.nbytes / raw, 3),
    }
    try:
        for label, size in (("batch", args.batch), ("small_batch", args.small_batch)):
            out_local = np.empty((size, args.dim), np.float32)
            out_shared = np.empty((size, args.dim), np.float32)
            result[f"lookup_{label}_{size}"] = _alternate(
                _batches(args, size, 1),
                args.warmup,
                lambda k, o=out_local: local.get(k, o),
                lambda k, o=out_shared: shared.get(k, o),
            )
        started = time.perf_counter()
        attach = subprocess.run(
            [sys.executable, __file__, "--attach", name, *_passthrough(args)],
            capture_output=True,
            text=True,
            check=True,
        )
        result["attach_s"] = json.loads(attach.stdout)["attach_s"]
        result["attach_process_s"] = round(time.perf_counter() - started, 2)
        writer = subprocess.Popen(
            [sys.executable, __file__, "--writer", name, *_passthrough(args)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert writer.stdout.readline().strip() == "writing"
            out_local = np.empty((args.batch, args.dim), np.float32)
            out_shared = np.empty((args.batch, args.dim), np.float32)
            result["with_writer"] = _alternate(
                _batches(args, args.batch, 2),
                args.warmup,
                lambda k: local.get(k, out_local),
                lambda k: shared.get(k, out_shared),
            )
            result["with_writer"]["writer_batch"] = args.writer_batch
        finally:
            writer.kill()
            writer.wait()
    finally:
        segment.close()
    return result


def latency(args) -> dict:
    """Median µs per ``get`` of each map, native and ``HPS_NATIVE=0``, rounds interleaved."""
    import os

    from hps_cli.runtime.table.synthetic import synthetic_vectors
    from hps_cli.runtime.volatile.hash_map import HashMapTable
    from hps_cli.runtime.volatile.shm_segment import SharedSegment
    from hps_cli.runtime.volatile.shm_table import SharedHashMapTable

    result: dict = {}
    for table_spec in args.latency_tables.split(","):
        keys, dim = (int(x) for x in table_spec.split("x"))
        name = f"hps_bench_shm_lat_{os.getpid()}_{keys}"
        segment = SharedSegment(name, _segment_size(keys, dim))
        try:
            shared = SharedHashMapTable(
                segment, TAG, dim, num_partitions=PARTITIONS, expected_keys=keys
            )
            local = HashMapTable(dim, num_partitions=PARTITIONS, reserve=keys)
            for start in range(0, keys, 1 << 18):
                chunk = np.arange(start, min(keys, start + (1 << 18)), dtype=np.int64)
                vectors = synthetic_vectors(chunk, dim)
                shared.insert(chunk, vectors)
                local.insert(chunk, vectors)
            for size in (int(x) for x in args.latency_batches.split(",")):
                rng = np.random.default_rng(size)
                batches = [rng.integers(0, keys, size, dtype=np.int64) for _ in range(64)]
                out = np.empty((size, dim), np.float32)
                check = [
                    table.get(batches[0], np.empty((size, dim), np.float32))[0]
                    for table in (shared, local)
                ]
                assert np.array_equal(check[0], check[1])
                assert np.array_equal(check[0], synthetic_vectors(batches[0], dim))
                variants = {
                    "shared_native": (shared, "1"),
                    "shared_numpy": (shared, "0"),
                    "in_process_native": (local, "1"),
                    "in_process_numpy": (local, "0"),
                }
                names = list(variants)
                times: dict[str, list[float]] = {n: [] for n in names}
                rounds = args.rounds if size <= 256 else max(50, args.rounds // 4)
                for r in range(args.warmup * 10 + rounds):
                    batch = batches[r % len(batches)]
                    for i in range(len(names)):
                        label = names[(r + i) % len(names)]
                        table, flag = variants[label]
                        os.environ["HPS_NATIVE"] = flag
                        started = time.perf_counter()
                        table.get(batch, out)
                        seconds = time.perf_counter() - started
                        if r >= args.warmup * 10:
                            times[label].append(seconds)
                os.environ.pop("HPS_NATIVE", None)
                med = {n: float(np.median(t)) * 1e6 for n, t in times.items()}
                result[f"{keys}x{dim}_batch_{size}"] = {
                    "rounds": rounds,
                    **{f"{n}_us": round(v, 1) for n, v in med.items()},
                    "shared_native_vs_numpy": round(med["shared_numpy"] / med["shared_native"], 2),
                    "shared_native_minus_in_process_native_us": round(
                        med["shared_native"] - med["in_process_native"], 1
                    ),
                }
        finally:
            segment.close()
    return result


def attach(args, name: str) -> None:
    from hps_cli.runtime.volatile.shm_segment import SharedSegment
    from hps_cli.runtime.volatile.shm_table import SharedHashMapTable

    started = time.perf_counter()
    segment = SharedSegment(name, _segment_size(args.keys, args.dim))
    table = SharedHashMapTable(
        segment, TAG, args.dim, num_partitions=PARTITIONS, expected_keys=args.keys
    )
    _, hit, _ = table.get(np.arange(1024))
    seconds = time.perf_counter() - started
    assert hit.all()
    segment.close()
    print(json.dumps({"attach_s": round(seconds, 4)}))


def write_forever(args, name: str) -> None:
    segment, table = _open_shared(args, name)
    rng = np.random.default_rng(9)
    rows = np.ones((args.writer_batch, args.dim), np.float32)
    keys = rng.integers(0, args.keys, args.writer_batch)
    out, _, _ = table.get(keys)
    print("writing", flush=True)
    while True:  # rewrite the same keys with their own vectors: readers' answers stay exact
        table.insert(keys, out)
        keys = rng.integers(0, args.keys, args.writer_batch)
        out, _, _ = table.get(keys, rows)


def _passthrough(args) -> list[str]:
    return [
        f"--keys={args.keys}",
        f"--dim={args.dim}",
        f"--writer-batch={args.writer_batch}",
        f"--work={args.work}",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keys", type=int, default=2_000_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--batch", type=int, default=65536)
    ap.add_argument("--small-batch", type=int, default=1024)
    ap.add_argument("--batches", type=int, default=30, help="timed batches at --batch")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--writer-batch", type=int, default=4096)
    ap.add_argument("--work", type=Path, default=Path("/tmp/hps-bench-shm"))
    ap.add_argument("--latency", action="store_true", help="µs per get of small batches")
    ap.add_argument("--latency-tables", default="100000x16,1000000x32", help="KEYSxDIM,...")
    ap.add_argument("--latency-batches", default="128,2048")
    ap.add_argument("--rounds", type=int, default=3000, help="--latency rounds (small batches)")
    ap.add_argument("--attach", help=argparse.SUPPRESS)
    ap.add_argument("--writer", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.attach:
        attach(args, args.attach)
        return
    if args.writer:
        write_forever(args, args.writer)
        return
    if args.latency:
        result = {
            "date": date.today().isoformat(),
            "machine": platform.processor() or platform.machine(),
            "partitions": PARTITIONS,
            "key_distribution": "uniform over the table",
            "statistic": "median µs per get",
            "command": " ".join(sys.argv),
            **latency(args),
        }
        print(json.dumps(result, indent=2))
        return

    ensure_table(args.work, args.keys, args.dim)
    result = {
        "date": date.today().isoformat(),
        "machine": platform.processor() or platform.machine(),
        "keys": args.keys,
        "dim": args.dim,
        "partitions": PARTITIONS,
        "key_distribution": "uniform over the table",
        "command": " ".join(sys.argv),
        **measure(args),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
