"""``HPS(config).lookup`` on a GPU, with its CPU tiers behind it, against baselines in the same run.

    python benchmarks/bench_gpu_lookup.py --out .bench/gpu_lookup.json

One table of 4 M rows × dim 128 (random 64-bit keys, ``meta`` counts), one in-process hash map
behind each model, three models over it that differ only in ``gpucacheper``: ``full`` (1.0),
``p92`` (0.92: once its 3 % of spare slots have filled, uniform keys miss about 5 %) and
``quarter`` (0.25). Keys always come from the table's key space (hps bench's key generator):
uniform over all rows, or Zipf(1.05) ranks mapped to the rows by a random permutation (so the
start-up prefill, by ``meta``, holds no more of the hot keys than any rows). Every figure states
its hit rate, from the cache's own counters.

1. Fill: the share of each model's ceil(p × rows) hottest rows (by ``meta``) held after start-up.
2. 2,048 keys, uniform: ``full`` (100 % hits) and ``p92`` (misses fetched from the hash map,
   inserted later in batches) in alternating rounds: p50 / p99 and their ratio.
3. 1 M keys, uniform, ``full``: ``HPS.lookup`` against the floor of the same transfer, timed the
   same way in alternating rounds: the keys copied in from pinned memory, a gather of 1 M rows
   of a dense 4 M-row table on the device, the rows copied out into pinned memory.
4. 1 M keys, Zipf(1.05), ``quarter``: after WARMUP_ZIPF lookups, the time of a lookup against
   the all-hit 1 M-key lookup of (3) in alternating rounds, and the hit rate against the ideal
   (the traffic share of the ceil(0.25 × rows) most frequent keys).
5. ``HPS.lookup_tables`` over 8 tables of 100,000 rows (``gpucacheper`` 1.0, uniform keys)
   against one table after another.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

ROWS, DIM = 1 << 22, 128
MODELS = {"full": 1.0, "p92": 0.92, "quarter": 0.25}
WARMUP_SMALL = 2000  # 2,048-key lookups before timing (p92's spare slots fill meanwhile)
SMALL_ROUNDS, SMALL_PER_ROUND = 5, 2000
BIG_ROUNDS, BIG_PER_ROUND = 5, 3
WARMUP_ZIPF = 60  # 1 M-key Zipf lookups before timing (replay: 0.97 of ideal after ~20 with
# one insert per lookup; an H100 run inserted once per 8-10 lookups)


def profile_small(hps, uniform, path: Path, lookups: int = 2000) -> None:
    """Where a 2,048-key lookup with misses (p92) spends its time: cProfile of ``lookups``
    lookups, the functions by own time and by cumulative time, written to ``path``."""
    import cProfile
    import io
    import pstats

    batches = [uniform.next_batch(2048) for _ in range(lookups)]
    profiler = cProfile.Profile()
    profiler.enable()
    for keys in batches:
        hps.lookup(keys, "p92", "t")
    profiler.disable()
    text = io.StringIO()
    for order in ("tottime", "cumulative"):
        pstats.Stats(profiler, stream=text).sort_stats(order).print_stats(35)
    path.write_text(text.getvalue())


def _model(name: str, table: Path, gpucacheper: float) -> dict:
    return {
        "model": name,
        "sparse_files": [str(table)],
        "embedding_table_names": ["t"],
        "embedding_vecsize_per_table": [DIM],
        "maxnum_catfeature_query_per_table_per_sample": [1],
        "default_value_for_each_table": [0.0],
        "deployed_device_list": [0],
        "max_batch_size": 1 << 20,
        "gpucache": True,
        "gpucacheper": gpucacheper,
        "hit_rate_threshold": 1.0,
        "num_of_worker_buffer_in_pool": 2,
    }


def _stats(front) -> tuple[int, int]:
    s = front.stats()
    return s["keys"], s["hits"]


def _hit_rate(before: tuple[int, int], after: tuple[int, int]) -> float:
    keys = after[0] - before[0]
    return (after[1] - before[1]) / keys if keys else float("nan")


def _summary(times_s: list[float]) -> dict:
    t = np.asarray(times_s) * 1e6
    return {
        "lookups": int(t.size),
        "p50_us": float(np.percentile(t, 50)),
        "p90_us": float(np.percentile(t, 90)),
        "p99_us": float(np.percentile(t, 99)),
        "max_us": float(t.max()),
    }


def fill(hps, reader) -> dict:
    from hps_cli.runtime.gpu.placement import rows_to_cache

    meta, keys = np.asarray(reader.meta()), np.asarray(reader.keys())
    order = np.argsort(-meta, kind="stable")
    out = {}
    for name, p in MODELS.items():
        front = hps.front_cache(name, "t")
        wanted = rows_to_cache(ROWS, p)
        held = np.isin(keys[order[:wanted]], front.backend.dump())
        out[name] = {
            "gpucacheper": p,
            "rows_wanted": wanted,
            "held": int(held.sum()),
            "share": float(held.mean()),
            "slots": front.backend.capacity,
        }
    return out


def small_lookups(hps, uniform) -> dict:
    """(2) 2,048 uniform keys: full vs p92, alternating rounds. Every lookup draws new keys:
    a fixed set of batches would all sit in p92's cache after the warm-up (no misses)."""
    fronts = {name: hps.front_cache(name, "t") for name in ("full", "p92")}
    for name in fronts:
        for _ in range(WARMUP_SMALL):
            hps.lookup(uniform.next_batch(2048), name, "t")
    times = {name: [] for name in fronts}
    before = {name: _stats(f) for name, f in fronts.items()}
    for r in range(2 * SMALL_ROUNDS):
        name = ("full", "p92")[r % 2]
        for _ in range(SMALL_PER_ROUND):
            keys = uniform.next_batch(2048)
            t0 = time.perf_counter()
            out = hps.lookup(keys, name, "t")
            times[name].append(time.perf_counter() - t0)
            del out
    result = {}
    for name, front in fronts.items():
        result[name] = {**_summary(times[name]), "hit_rate": _hit_rate(before[name], _stats(front))}
    result["p50_ratio"] = result["p92"]["p50_us"] / result["full"]["p50_us"]
    return result


class _Floor:
    """The floor of a 1 M-key lookup: the keys (row indices) copied in from pinned memory, a
    gather of those rows from a dense device table of ROWS rows, the rows copied out into
    pinned memory; timed with the host clock, as a lookup is."""

    def __init__(self, device, n: int, rng):
        from hps_cli.runtime.gpu.pinned import mapped_empty

        drv = self.drv = device.drv
        self.device, self.n = device, n
        with device.scope():
            self.stream = drv.Stream()
            self.table = device.alloc(ROWS * DIM * 4)
            drv.memset_d32(self.table, 0x3F800000, ROWS * DIM)  # 1.0f
            self.h_idx, _ = mapped_empty(drv, n * 8)
            self.h_out, _ = mapped_empty(drv, n * DIM * 4)
            self.idx = self.h_idx.view(np.int64)
            self.idx[:] = rng.integers(0, ROWS, n)
            self.d_idx, self.d_out = device.alloc(n * 8), device.alloc(n * DIM * 4)
            self.grid = (device.launch_grid(n, 1), 1)

    def __call__(self) -> float:
        drv = self.drv
        with self.device.scope():
            t0 = time.perf_counter()
            drv.memcpy_htod_async(self.d_idx, self.h_idx, self.stream)
            self.device.launch(
                "gather_rows",
                "PPqiP",
                self.grid,
                (256, 1, 1),
                self.stream,
                self.table,
                self.d_idx,
                self.n,
                DIM,
                self.d_out,
            )
            drv.memcpy_dtoh_async(self.h_out, self.d_out, self.stream)
            self.stream.synchronize()
            return time.perf_counter() - t0

    def check(self) -> bool:
        return bool((self.h_out[:4096].view(np.float32) == 1.0).all())

    def close(self) -> None:
        with self.device.scope():
            for buf in (self.table, self.d_idx, self.d_out):
                buf.free()
            self.h_idx.base.free()
            self.h_out.base.free()


def big_lookups(hps, uniform, zipf, device) -> dict:
    """(3) and (4): 1 M uniform keys on full vs the floor; 1 M Zipf keys on quarter vs 1 M
    uniform keys on full."""
    from hps_cli.runtime.gpu.placement import rows_to_cache

    n = 1 << 20
    rng = np.random.default_rng(3)
    full, quarter = hps.front_cache("full", "t"), hps.front_cache("quarter", "t")
    uniform_batches = [uniform.next_batch(n) for _ in range(4)]
    zipf_batches = [zipf.next_batch(n) for _ in range(WARMUP_ZIPF + BIG_ROUNDS * BIG_PER_ROUND)]
    floor = _Floor(device, n, rng)
    # (3)
    for i in range(2):  # warm-up: allocations, the pinned pool, the fetch threads
        del_out = hps.lookup(uniform_batches[i], "full", "t")
        del del_out
        floor()
    before = _stats(full)
    times = {"lookup": [], "floor": []}
    for r in range(2 * BIG_ROUNDS):
        for i in range(BIG_PER_ROUND):
            if r % 2 == 0:
                t0 = time.perf_counter()
                out = hps.lookup(uniform_batches[(r + i) % 4], "full", "t")
                times["lookup"].append(time.perf_counter() - t0)
                del out
            else:
                times["floor"].append(floor())
    assert floor.check(), "the floor's gather returned wrong rows"
    uniform_1m = {
        "lookup": _summary(times["lookup"]),
        "floor": _summary(times["floor"]),
        "hit_rate": _hit_rate(before, _stats(full)),
    }
    uniform_1m["throughput_ratio_to_floor"] = (
        uniform_1m["floor"]["p50_us"] / uniform_1m["lookup"]["p50_us"]
    )
    floor.close()
    # (4)
    warm = []
    for i in range(WARMUP_ZIPF):
        b = _stats(quarter)
        t0 = time.perf_counter()
        out = hps.lookup(zipf_batches[i], "quarter", "t")
        warm.append(
            (time.perf_counter() - t0, _hit_rate(b, _stats(quarter)), quarter.stats()["inserted"])
        )
        st = quarter.stats()
        print(
            f"zipf warm-up {i}: {warm[-1][0] * 1e3:.1f} ms, hit rate {warm[-1][1]:.4f}, "
            f"inserted {warm[-1][2]}, insert calls {st['insert_calls']}, "
            f"{st['insert_seconds']:.2f} s, selecting {st['insert_select_seconds']:.2f} s, "
            f"skipped {st['insert_skipped']}",
            file=sys.stderr,
            flush=True,
        )
        del out
    before = _stats(quarter)
    times = {"zipf": [], "uniform": []}
    z = WARMUP_ZIPF
    for r in range(2 * BIG_ROUNDS):
        for i in range(BIG_PER_ROUND):
            if r % 2 == 0:
                t0 = time.perf_counter()
                out = hps.lookup(zipf_batches[z], "quarter", "t")
                times["zipf"].append(time.perf_counter() - t0)
                z += 1
            else:
                t0 = time.perf_counter()
                out = hps.lookup(uniform_batches[(r + i) % 4], "full", "t")
                times["uniform"].append(time.perf_counter() - t0)
            del out
    hit_rate = _hit_rate(before, _stats(quarter))
    ideal = zipf.ideal_hit_rate(rows_to_cache(ROWS, MODELS["quarter"]))
    zipf_1m = {
        "zipf_lookup": _summary(times["zipf"]),
        "all_hit_lookup": _summary(times["uniform"]),
        "time_ratio": float(np.median(times["zipf"]) / np.median(times["uniform"])),
        "hit_rate": hit_rate,
        "ideal_hit_rate": ideal,
        "share_of_ideal": hit_rate / ideal,
        "warmup": [{"ms": t * 1e3, "hit_rate": h, "inserted": n} for t, h, n in warm],
        "stale_inserts": quarter.stats()["stale_inserts"],
        "insert_calls": quarter.stats()["insert_calls"],
        "insert_seconds": quarter.stats()["insert_seconds"],
        "dropped_insert_batches": quarter.stats()["async_dropped"],
        "insert_skipped_keys": quarter.stats()["insert_skipped"],
    }
    return {"uniform_1m": uniform_1m, "zipf_1m": zipf_1m}


def multi_table(work: Path, tables: int = 8, rows: int = 100_000, rounds: int = 10) -> dict:
    """(5) ``HPS.lookup_tables`` over several GPU-cached tables against one table after
    another, alternating round by round: p50 / p99 of a whole call."""
    from hps_cli.runtime import HPS
    from hps_cli.runtime.table.synthetic import synthetic_vectors, write_synthetic_table

    from hps_cli.bench.keys import DistributionKeys, parse_distribution

    names = [f"t{i}" for i in range(tables)]
    for i, name in enumerate(names):
        write_synthetic_table(work / name, rows, DIM, first_key=i * rows, shuffle=True, seed=i)
    model = _model("m", work / names[0], 1.0)
    model.update(
        sparse_files=[str(work / n) for n in names],
        embedding_table_names=names,
        embedding_vecsize_per_table=[DIM] * tables,
        maxnum_catfeature_query_per_table_per_sample=[1] * tables,
        default_value_for_each_table=[0.0] * tables,
        max_batch_size=2048,
    )
    with HPS({"supportlonglong": True, "models": [model]}) as hps:
        sources = [
            DistributionKeys(np.arange(i * rows, (i + 1) * rows), parse_distribution("uniform"), i)
            for i in range(tables)
        ]
        batches = [[s.next_batch(2000) for s in sources] for _ in range(16)]
        calls = {
            "overlapped": lambda b: hps.lookup_tables(b, "m"),
            "one_by_one": lambda b: [hps.lookup(k, "m", n) for k, n in zip(b, names)],
        }
        for call in calls.values():  # warm-up, and both must give the same exact rows
            got = call(batches[0])
            for seed, (k, r) in enumerate(zip(batches[0], got)):  # table i: seed i
                assert np.array_equal(r, synthetic_vectors(k, DIM, seed)), "wrong rows"
            for i in range(300):
                call(batches[i % 16])
        times = {name: [] for name in calls}
        for r in range(2 * rounds):
            name = ("overlapped", "one_by_one")[r % 2]
            for i in range(100):
                t0 = time.perf_counter()
                out = calls[name](batches[i % 16])
                times[name].append(time.perf_counter() - t0)
                del out
        stats = [hps.front_cache("m", n).stats() for n in names]
    result = {
        "tables": tables,
        "rows": rows,
        "keys_per_table": 2000,
        "hit_rate": sum(s["hits"] for s in stats) / sum(s["keys"] for s in stats),
    }
    for name, values in times.items():
        summary = _summary(values)
        result[f"{name}_p50_us"], result[f"{name}_p99_us"] = summary["p50_us"], summary["p99_us"]
    result["p50_ratio"] = result["overlapped_p50_us"] / result["one_by_one_p50_us"]
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--work", default=None, help="folder for the tables (default: a temp dir)")
    ap.add_argument("--profile", default=None, help="write a cProfile of p92 lookups here")
    args = ap.parse_args()
    from hps_cli.runtime import HPS
    from hps_cli.runtime.gpu.device import get_device
    from hps_cli.runtime.table import TableReader
    from hps_cli.runtime.table.synthetic import synthetic_vectors

    from hps_cli.bench.keys import DistributionKeys, parse_distribution

    device = get_device(0)
    work = Path(args.work or tempfile.mkdtemp(prefix="hps-bench-lookup-"))
    table = work / "t"
    t0 = time.perf_counter()
    if not table.exists():
        keys = np.random.default_rng(0).choice(2**62, ROWS, replace=False).astype(np.int64)
        from hps_cli.runtime.table import TableWriter

        with TableWriter(table, DIM, with_meta=True) as writer:
            for start in range(0, ROWS, 1 << 18):
                chunk = keys[start : start + (1 << 18)]
                ranks = np.arange(start + 1, start + 1 + chunk.size, dtype=np.float64)
                writer.append(chunk, synthetic_vectors(chunk, DIM), (1e9 / ranks).astype(np.int64))
    written = time.perf_counter() - t0
    doc = {
        "supportlonglong": True,
        "volatile_db": {"type": "parallel_hash_map", "num_partitions": 16},
        "models": [_model(name, table, p) for name, p in MODELS.items()],
    }
    result = {"date": date.today().isoformat(), "device": device.name, "table_rows": ROWS}
    t0 = time.perf_counter()
    with HPS(doc) as hps, TableReader(table) as reader:
        result["start_up_s"] = time.perf_counter() - t0
        result["table_write_s"] = written
        result["fill"] = fill(hps, reader)
        table_keys = np.asarray(reader.keys())
        uniform = DistributionKeys(table_keys, parse_distribution("uniform"), 1)
        zipf = DistributionKeys(table_keys, parse_distribution("zipf:1.05"), 2)
        check = uniform.next_batch(4096)
        assert np.array_equal(hps.lookup(check, "p92", "t"), synthetic_vectors(check, DIM))
        result["small_2048"] = small_lookups(hps, uniform)
        if args.profile:
            profile_small(hps, uniform, Path(args.profile))
        result.update(big_lookups(hps, uniform, zipf, device))
        check = zipf.next_batch(1 << 17)
        got = hps.lookup(check, "quarter", "t")
        assert np.array_equal(got, synthetic_vectors(check, DIM)), "wrong rows (Zipf)"
    result["multi_table"] = multi_table(work)
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    print(text)
    say = lambda line: print(line, file=sys.stderr)  # noqa: E731
    say(f"\nsummary (card: {device.name}; table {ROWS} x {DIM}, hash map behind each model)")
    say(f"start-up {result['start_up_s']:.1f} s (3 models)")
    for name, f in result["fill"].items():
        say(
            f"fill {name} (p {f['gpucacheper']}): {f['held']} of {f['rows_wanted']} hottest rows "
            f"({f['share']:.5f}) in {f['slots']} slots"
        )
    s = result["small_2048"]
    for name in ("full", "p92"):
        say(
            f"HPS.lookup 2048 uniform keys, {name}: hit rate {s[name]['hit_rate']:.4f}, "
            f"p50 {s[name]['p50_us']:.1f} us, p99 {s[name]['p99_us']:.1f} us"
        )
    say(f"  misses / all-hit p50: {s['p50_ratio']:.2f} (target <= 2)")
    u = result["uniform_1m"]
    say(
        f"HPS.lookup 1M uniform keys, full, hit rate {u['hit_rate']:.4f}: p50 "
        f"{u['lookup']['p50_us'] / 1e3:.2f} ms vs floor {u['floor']['p50_us'] / 1e3:.2f} ms: "
        f"{u['throughput_ratio_to_floor']:.3f}x the floor (target >= 0.8)"
    )
    z = result["zipf_1m"]
    say(
        f"HPS.lookup 1M Zipf(1.05) keys, quarter: p50 {z['zipf_lookup']['p50_us'] / 1e3:.2f} ms "
        f"vs all-hit {z['all_hit_lookup']['p50_us'] / 1e3:.2f} ms: {z['time_ratio']:.2f}x "
        f"(target <= 3); hit rate {z['hit_rate']:.4f} vs ideal {z['ideal_hit_rate']:.4f}: "
        f"{z['share_of_ideal']:.3f} (target >= 0.97)"
    )
    m = result["multi_table"]
    say(
        f"HPS.lookup_tables 8 x 2000 uniform keys (hit rate {m['hit_rate']:.4f}): p50 "
        f"{m['overlapped_p50_us']:.0f} us vs one by one {m['one_by_one_p50_us']:.0f} us "
        f"({m['p50_ratio']:.2f})"
    )


if __name__ == "__main__":
    main()
