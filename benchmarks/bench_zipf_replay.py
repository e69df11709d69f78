"""The dynamic cache's hit rate on a Zipf stream, replayed through its NumPy reference (no GPU).

    python benchmarks/bench_zipf_replay.py [--rows 4194304] [--lookups 40]

A table of ``--rows`` random keys; a cache sized for ``gpucacheper`` 0.25 as the runtime sizes
it and prefilled as start-up does (the first rows of the table: uncorrelated with the Zipf
ranks); lookups of 1 M keys whose Zipf(1.05) ranks map to the rows through a random permutation
(hps bench's key generator), each followed by the insert of its distinct misses as a
deferred insert of the runtime takes them: at most ``--drain-keys`` keys (default: the
runtime's limit for this cache, embedding_cache.drain_limit), the hottest by the miss sketch,
``--drains`` times per lookup (each of the later drains takes what the earlier left).
Baseline: the ideal hit rate, the traffic share of the
ceil(0.25 × rows) most frequent keys. The reference makes the same decisions as the GPU cache
(the GPU tests check it), except the order in which a lookup's misses are inserted (sorted here,
the kernel's order on the GPU).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1 << 22)
    ap.add_argument("--lookups", type=int, default=40)
    ap.add_argument("--gpucacheper", type=float, default=0.25)
    ap.add_argument("--batch", type=int, default=1 << 20)
    ap.add_argument("--drain-keys", type=int, default=None, help="0: no limit")
    ap.add_argument("--drains", type=int, default=1)
    args = ap.parse_args()
    from hps_cli.runtime.gpu.deferred_insert import MissFrequency, hottest
    from hps_cli.runtime.gpu.embedding_cache import drain_limit
    from hps_cli.runtime.gpu.placement import num_sets_for, rows_to_cache
    from hps_cli.runtime.gpu.prefill_plan import plan_prefill
    from hps_cli.runtime.gpu.reference import RefDynamicCache

    from hps_cli.bench.keys import DistributionKeys, parse_distribution

    keys = np.random.default_rng(0).choice(2**62, args.rows, replace=False).astype(np.int64)
    stream = DistributionKeys(keys, parse_distribution("zipf:1.05"), 2)
    wanted = rows_to_cache(args.rows, args.gpucacheper)
    cache = RefDynamicCache(num_sets_for(args.rows, args.gpucacheper), 1)
    plan = plan_prefill(keys[:wanted], cache.num_sets)
    cache.load(plan.slot_keys, plan.slot_rows(np.arange(wanted)), np.zeros((args.rows, 1)))
    ideal = stream.ideal_hit_rate(wanted)
    limit = drain_limit(cache.capacity) if args.drain_keys is None else args.drain_keys
    frequency = MissFrequency(4 * limit) if limit else None
    rates, misses = [], []
    for i in range(args.lookups):
        t0 = time.perf_counter()
        batch = stream.next_batch(args.batch)
        _, missed, _ = cache.query(batch)
        distinct = np.unique(missed)
        left = distinct
        if frequency is not None:
            frequency.note(distinct)
        for _ in range(args.drains):
            keep = hottest(left, limit, frequency) if frequency is not None else None
            taken = left if keep is None else left[keep]
            cache.replace(taken, np.zeros((taken.size, 1), np.float32))
            left = np.setdiff1d(left, taken, assume_unique=True)
            if not left.size:
                break
        rates.append(1.0 - missed.size / batch.size)
        misses.append(int(distinct.size))
        print(
            f"lookup {i}: hit rate {rates[-1]:.4f} ({rates[-1] / ideal:.4f} of ideal), "
            f"{distinct.size} distinct misses, {time.perf_counter() - t0:.1f} s",
            flush=True,
        )
    shares = np.asarray(rates) / ideal
    reached = np.flatnonzero(shares >= 0.97)
    result = {
        "rows": args.rows,
        "gpucacheper": args.gpucacheper,
        "batch": args.batch,
        "lookups": args.lookups,
        "drain_keys": limit or None,
        "drains_per_lookup": args.drains,
        "key_distribution": "Zipf(1.05) over the table's rows, ranks through a random permutation",
        "ideal_hit_rate": ideal,
        "last_10_hit_rate": float(np.mean(rates[-10:])),
        "last_10_share_of_ideal": float(np.mean(shares[-10:])),
        "first_lookup_at_0.97_of_ideal": int(reached[0]) if reached.size else None,
        "distinct_misses_last_10": float(np.mean(misses[-10:])),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
