"""`hps bench cache-size`: the hit-rate curve against an independent exact model, the smallest
gpucacheper, the memory formula, and the command's outputs.

What "exact" means here: for a given key stream, batch size and warm-up, ``replay`` must count
exactly (integer equality) the hits that the runtime's dynamic cache policy produces. The
oracle is ``PlainLfuDa`` below, written from the policy's description in plain Python (per key,
dicts and lists, its own 64-bit mixer on Python ints), sharing no code with the NumPy
reference: 8-way sets chosen by the mixed key's high bits; a batch is first queried against
the state before it (a hit adds 4 to its slot's score when the key's sampling hash, seeded by
the query number, is 0 mod 4; in a batch of 65,536 keys or more, which the GPU de-duplicates, a
key's hits add at most 15 × 4); then its distinct missed keys, in ascending order, are inserted
set by set: into the first empty way, else over the first way of lowest score, whose score
becomes the set's aging floor; a new key scores floor + 1.
A second, closed-form check holds when no set ever overflows: a key occurrence hits exactly
when the key appeared in an earlier batch (the trace's own bound, reached by any cache that
never evicts).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hps_cli.runtime.gpu.placement import EMPTY_KEY, WAYS, num_sets_for
from hps_cli.runtime.resources import load_schema
from jsonschema import Draft202012Validator

from hps_cli.bench.cache_size import (
    CacheSizeSpec,
    cache_memory_bytes,
    gpucacheper_for_sets,
    replay,
    run_cache_size,
)

MASK = (1 << 64) - 1


def _rotr(x: int, r: int) -> int:
    return ((x >> r) | (x << (64 - r))) & MASK


def plain_mix64(key: int) -> int:
    """rrxmrrxmsx_0 on Python ints."""
    x = key & MASK
    x ^= _rotr(x, 25) ^ _rotr(x, 50)
    x = (x * 0xA24BAED4963EE407) & MASK
    x ^= _rotr(x, 24) ^ _rotr(x, 49)
    x = (x * 0x9FB21C651E98DF25) & MASK
    return x ^ (x >> 28)


class PlainLfuDa:
    WAYS, SAMPLE = WAYS, 4  # the runtime's ways (placement.WAYS)
    LARGE_BATCH, CAP = 65536, 15  # a large batch counts a key's hits at most CAP times

    def __init__(self, num_sets: int):
        self.num_sets = num_sets
        self.ways = [[None] * self.WAYS for _ in range(num_sets)]  # key or None
        self.score = [[0] * self.WAYS for _ in range(num_sets)]
        self.floor = [0] * num_sets
        self.queries = 0

    def sets_of(self, key: int) -> tuple[int, int]:
        """The key's primary and second set (two-choice hashing, as placement.sets_of)."""
        h = plain_mix64(key)
        primary = ((h >> 32) * self.num_sets) >> 32
        second = ((h & 0xFFFFFFFF) * self.num_sets) >> 32
        if second == primary and self.num_sets > 1:
            second = (primary + 1) % self.num_sets
        return primary, second

    def find(self, key: int):
        for s in self.sets_of(key):
            if key in self.ways[s]:
                return s, self.ways[s].index(key)
        return None

    def batch(self, keys: list[int]) -> int:
        """Query then insert one batch; returns its hits."""
        seed = (self.queries * 0x9E3779B97F4A7C15) & MASK
        self.queries += 1
        hits, missed = 0, set()
        bumps = []
        for key in keys:
            found = self.find(key)
            if found is not None:
                hits += 1
                if plain_mix64((key & MASK) ^ seed) % self.SAMPLE == 0:
                    bumps.append(found)
            else:
                missed.add(key)
        if len(keys) >= self.LARGE_BATCH:
            counts = {}
            for slot in bumps:
                counts[slot] = counts.get(slot, 0) + 1
            bumps = [slot for slot, n in counts.items() for _ in range(min(n, self.CAP))]
        for s, w in bumps:
            self.score[s][w] += self.SAMPLE
        for key in sorted(missed):  # absent keys, each once: no "already present" case
            a, b = self.sets_of(key)
            candidates = [(a, w) for w in range(self.WAYS)] + [(b, w) for w in range(self.WAYS)]
            free = [c for c in candidates if self.ways[c[0]][c[1]] is None]
            if free:
                s, w = free[0]
                start = max(self.floor[a], self.floor[b])
            else:
                s, w = min(candidates, key=lambda c: (self.score[c[0]][c[1]], candidates.index(c)))
                start = self.floor[s] = self.score[s][w]
            self.ways[s][w] = key
            self.score[s][w] = start + 1
        return hits


def plain_replay(stream, num_sets: int, batch_size: int, warmup_batches: int) -> tuple[int, int]:
    cache = PlainLfuDa(num_sets)
    hits = counted = 0
    keys = [int(k) for k in stream]
    for index, start in enumerate(range(0, len(keys), batch_size)):
        batch = keys[start : start + batch_size]
        h = cache.batch(batch)
        if index >= warmup_batches:
            hits, counted = hits + h, counted + len(batch)
    return hits, counted


def _skewed_stream(rng, n: int, universe: int) -> np.ndarray:
    ranks = np.minimum(rng.zipf(1.3, n) - 1, universe - 1)
    perm = rng.permutation(universe).astype(np.int64) * 7919 - 40_000  # negative keys too
    return perm[ranks]


@pytest.mark.parametrize(
    "num_sets, batch_size, warmup",
    [
        (2, 1, 0),
        (2, 64, 3),
        (3, 7, 10),
        (5, 64, 0),
        (8, 200, 2),
        (40, 50, 5),
    ],
)
def test_replay_equals_the_plain_lfu_da_model(rng, num_sets, batch_size, warmup):
    stream = _skewed_stream(rng, 4000, 1500)
    fast = replay(stream, num_sets, batch_size, warmup)
    assert (fast.hits, fast.keys) == plain_replay(stream, num_sets, batch_size, warmup)
    assert 0 < fast.hits < fast.keys


def test_large_batches_cap_counted_hits_in_both_models(rng):
    """Batches large enough to be de-duplicated count a key's hits at most 15 times: the
    reference and the plain model end with the same scores (and the cap mattered)."""
    from hps_cli.runtime.gpu.reference import RefDynamicCache

    stream = _skewed_stream(rng, 3 * 70_000, 3000)
    ref, plain, uncapped = RefDynamicCache(120, 1), PlainLfuDa(120), PlainLfuDa(120)
    uncapped.CAP = 10**9
    for start in range(0, stream.size, 70_000):
        batch = stream[start : start + 70_000]
        _, missed, _ = ref.query(batch)
        if missed.size:
            unique = np.unique(missed)
            ref.replace(unique, np.zeros((unique.size, 1), np.float32))
        plain.batch(batch.tolist())
        uncapped.batch(batch.tolist())
    assert ref.scores.tolist() == plain.score
    assert [
        [None if k == EMPTY_KEY else k for k in ways] for ways in ref.keys.tolist()
    ] == plain.ways
    assert uncapped.score != plain.score  # hot keys repeat thousands of times: the cap mattered
    fast = replay(stream, 120, 70_000, 1)
    assert (fast.hits, fast.keys) == plain_replay(stream, 120, 70_000, 1)
    assert 0 < fast.hits < fast.keys


def test_replay_without_evictions_equals_the_trace_bound(rng):
    stream = _skewed_stream(rng, 3000, 300)
    num_sets = 2048 // WAYS  # 2048 slots for 300 distinct keys
    sets = [((plain_mix64(int(k)) >> 32) * num_sets) >> 32 for k in np.unique(stream)]
    assert max(np.bincount(sets)) <= WAYS, "a primary set overflows: pick another seed"
    batch, warmup = 16, 4
    seen, hits, counted = set(), 0, 0
    for index, start in enumerate(range(0, stream.size, batch)):
        keys = stream[start : start + batch].tolist()
        if index >= warmup:
            hits += sum(k in seen for k in keys)
            counted += len(keys)
        seen.update(keys)
    r = replay(stream, num_sets, batch, warmup)
    assert (r.hits, r.keys) == (hits, counted)


def test_gpucacheper_for_sets_is_the_smallest_giving_those_sets():
    for rows in (100, 3200, 99_991, 1_000_000, 123_456_789):
        fewest = num_sets_for(rows, 0.0)  # the minimum cache: 64 slots
        full = num_sets_for(rows, 1.0)  # the most sets a gpucacheper (at most 1) gives
        for sets in {fewest, fewest + 1, min(17, full), num_sets_for(rows, 0.2), full}:
            p = gpucacheper_for_sets(sets, rows)
            assert num_sets_for(rows, p) == sets
            if sets > fewest:  # the smallest with its decimals: one step less, fewer sets
                digits = next(d for d in (6, 9, 12) if round(p, d) == p)
                assert num_sets_for(rows, round(p - 10.0**-digits, digits)) < sets


def test_memory_formula():
    # sets × WAYS slots of dim 64: keys 8 per slot; scores 4 and hit bytes 1 per slot, both
    # allocated in groups of 16 slots; the rows; one 4-byte aging floor per set.
    for sets in (10, 11, 12_500):
        slots = sets * WAYS
        padded = -(-slots // 16) * 16
        assert cache_memory_bytes(sets, 64) == slots * 8 + padded * 5 + slots * 64 * 4 + sets * 4
    # 8 ways, written out
    assert WAYS == 8
    assert cache_memory_bytes(10, 64) == 80 * 8 + 80 * 4 + 80 + 80 * 64 * 4 + 10 * 4 == 21_560
    # 11 sets = 88 slots: scores and hit bytes for 96
    assert cache_memory_bytes(11, 64) == 88 * 8 + 96 * 5 + 88 * 64 * 4 + 11 * 4 == 23_756
    assert cache_memory_bytes(12_500, 128) == 100_000 * (13 + 512) + 50_000


def test_smallest_gpucacheper_matches_a_full_scan(tmp_path, rng):
    rows = 800  # at most 100 sets: the bisection resolves to one set
    stream = _skewed_stream(rng, 20_000, rows)
    path = tmp_path / "trace.npy"
    np.save(path, stream)
    spec = CacheSizeSpec(
        keys_from=path,
        rows=rows,
        dim=16,
        batch_size=128,
        warmup=0.1,
        fractions=(0.05, 0.25, 1.0),
        target_hit_rate=0.925,
    )
    report = run_cache_size(spec)
    best = report["smallest"]
    assert best is not None and best["hit_rate"] >= 0.925 and best["resolution_sets"] == 1
    warm = report["warmup_batches"]
    scan = {
        s: replay(stream, s, 128, warm).hit_rate
        for s in range(num_sets_for(rows, 0.0), num_sets_for(rows, 1.0) + 1)
    }
    assert scan[best["num_sets"]] == best["hit_rate"]
    assert scan[best["num_sets"] - 1] < 0.925
    lower = max(p["num_sets"] for p in report["curve"] if p["hit_rate"] < 0.925)
    assert best["num_sets"] == min(s for s in scan if s > lower and scan[s] >= 0.925)
    assert best["num_sets"] - lower > 2  # the bisection had work to do
    assert num_sets_for(rows, best["gpucacheper"]) == best["num_sets"]
    assert best["memory_bytes_per_gpu"] == cache_memory_bytes(best["num_sets"], 16)
    for point in report["curve"]:  # the curve's own points equal the scan
        assert point["hit_rate"] == scan[point["num_sets"]]
        assert point["num_sets"] == num_sets_for(rows, point["gpucacheper"])
        assert 0 <= point["hit_rate"] <= 1 and point["hits"] <= point["keys"]


def test_unreachable_target_says_why(tmp_path):
    path = tmp_path / "once.txt"
    path.write_text("\n".join(str(k) for k in range(5000)))  # every key once: no hit ever
    report = run_cache_size(CacheSizeSpec(keys_from=path, dim=4, fractions=(0.5, 1.0)))
    assert report["smallest"] is None and "never hit" in report["smallest_reason"]
    assert all(p["hit_rate"] == 0 for p in report["curve"])


@pytest.fixture(scope="module")
def small_config(tmp_path_factory):
    from helpers.runtime_configs import make_tables, ps_config

    tmp = tmp_path_factory.mktemp("bench-cache-size")
    tables = make_tables(tmp, {"t": (20_000, 32)})
    doc = ps_config(tables, {"t": 32}, devices=(0, 1), gpucache=True)
    path = tmp / "ps.json"
    path.write_text(json.dumps(doc))
    return path


def test_cli_json_csv_and_plot(small_config, tmp_path, hps):
    csv_path, png = tmp_path / "curve.csv", tmp_path / "curve.png"
    res = hps(
        "bench",
        "cache-size",
        "--config",
        str(small_config),
        "--distribution",
        "zipf:1.1",
        "--num-keys",
        "100000",
        "--fractions",
        "0.02,0.1,0.3",
        "--target-hit-rate",
        "0.8",
        "--csv",
        str(csv_path),
        "--plot",
        str(png),
        "--json",
    )
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    Draft202012Validator(load_schema("bench_report.schema.json")).validate(doc)
    assert doc["kind"] == "cache-size" and doc["rows"] == 20_000 and doc["dim"] == 32
    assert doc["devices"] == 2 and doc["keys"]["stream_keys"] == 100_000
    best = doc["smallest"]
    assert best["memory_bytes_total"] == 2 * best["memory_bytes_per_gpu"]
    rates = [p["hit_rate"] for p in doc["curve"]]
    assert rates == sorted(rates)
    assert all(p["hit_rate"] <= p["ideal_hit_rate"] + 0.02 for p in doc["curve"])
    lines = csv_path.read_text().splitlines()
    assert lines[0] == "gpucacheper,Slots,Sets,Hit Rate,Ideal Hit Rate,Memory Bytes per GPU"
    assert len(lines) == 4
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # existing outputs are kept unless --overwrite
    res = hps("bench", "cache-size", "--config", str(small_config), "--csv", str(csv_path))
    assert res.returncode == 4 and "exists" in res.stderr


def test_cli_table_output(small_config, hps):
    res = hps(
        "bench",
        "cache-size",
        "--config",
        str(small_config),
        "--num-keys",
        "50000",
        "--fractions",
        "0.1,0.5",
        "--target-hit-rate",
        "0.5",
    )
    assert res.returncode == 0, res.stderr
    assert (
        "hit rate" in res.stdout
        and "smallest gpucacheper reaching a hit rate of 0.5" in res.stdout
        and "per GPU" in res.stdout
    )


def test_plot_without_matplotlib_is_exit_5(small_config, tmp_path):
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "from hps_cli.cli import main\n"
        f"main(['bench', 'cache-size', '--config', {str(small_config)!r}, "
        f"'--plot', {str(tmp_path / 'x.png')!r}])"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 5
    assert "matplotlib" in res.stderr and "hps-cli[dev]" in res.stderr
    assert not (tmp_path / "x.png").exists()
