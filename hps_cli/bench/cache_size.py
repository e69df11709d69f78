"""`hps bench cache-size`: the hit rate of the dynamic cache over cache sizes, from a key trace
or a distribution, and the smallest ``gpucacheper`` that reaches a target hit rate.

Method: the key stream is replayed, in batches of ``batch_size`` keys, through
``RefDynamicCache`` — the runtime's reference of the GPU cache, bit-exact with the kernels
(8-way sets, two candidate sets per key, LFU with dynamic aging over both, hits counted on a
1-in-4 sample, at most 15 per key in batches of 64 K keys or more) — sized as the runtime
sizes it for each ``gpucacheper`` (``num_sets_for``). Each batch is handled as a synchronous
lookup (``hit_rate_threshold`` >= 1): query; the distinct missed keys are inserted in sorted
order, as ``EmbeddingCache`` does. The cache starts empty (no start-up prefill); the first
``warmup`` fraction of the batches is replayed but not counted. The hit rate is hits / keys
over the counted batches, key occurrences. Values play no part in hits, so the replay keeps
one float per slot. ``ideal_hit_rate`` is the share of the counted keys that belong to the
``slots`` most frequent keys of the counted part (what a cache holding exactly those keys all
along would hit); keys seen for the first time can never hit, so short streams fall below it.

The smallest ``gpucacheper``: the first size of the curve that reaches the target, refined by
bisection on the number of sets between it and the size below it (assuming the hit rate grows
with the size in that interval), to within 1 % of the sets (at least one set). It is reported
as the smallest ``gpucacheper`` that gives that many sets, rounded up to 6 decimals.

Memory per GPU (what the runtime allocates for one table's dynamic cache on each device of
``deployed_device_list``): ``slots × 8 (keys) + padded × (4 score + 1 hit byte) + slots × dim ×
4 (rows) + num_sets × 4 (aging floors)``, with ``slots = num_sets × 8`` and ``padded`` the slots
rounded up to a multiple of 16. Not included: per-lookup workspaces (proportional to the batch),
the pinned host pool, the CUDA context.
"""

from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .. import __version__
from ..runtime.errors import InvalidInputError
from ..runtime.gpu.placement import SLOT_HEADROOM, WAYS, num_sets_for, padded_slots
from ..runtime.gpu.reference import RefDynamicCache
from .keys import DistributionKeys, load_trace, parse_distribution
from .lookup_bench import machine

DEFAULT_FRACTIONS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)
KEY_BYTES, SCORE_BYTES, HIT_BYTES, FLOOR_BYTES = 8, 4, 1, 4


def cache_memory_bytes(num_sets: int, dim: int) -> int:
    """Device bytes of one dynamic cache of ``num_sets`` sets of ``dim`` floats per row."""
    slots = num_sets * WAYS
    return (
        slots * KEY_BYTES
        + padded_slots(slots) * (SCORE_BYTES + HIT_BYTES)
        + slots * dim * 4
        + num_sets * FLOOR_BYTES
    )


def gpucacheper_for_sets(num_sets: int, rows: int) -> float:
    """A ``gpucacheper`` whose cache has ``num_sets`` sets for a table of ``rows``: the smallest
    with 6 decimals (more when 6 cannot tell the sets apart). The minimum cache (64 rows) takes
    any value up to 64 / rows: that."""
    if num_sets <= num_sets_for(rows, 0.0):
        return min(1.0, 64 / rows)
    # The fewest rows to cache that need num_sets sets (placement.num_sets_for), found near
    # the boundary of the headroom formula and checked with the function itself.
    wanted = max(65, math.floor(WAYS * (num_sets - 1) / SLOT_HEADROOM))
    while wanted > 65 and num_sets_for(rows, (wanted - 1) / rows) >= num_sets:
        wanted -= 1
    while num_sets_for(rows, wanted / rows) < num_sets:
        if wanted >= rows:  # more sets than the whole table needs
            return 1.0
        wanted += 1
    for digits in (6, 9, 12):  # the first short decimal above (wanted - 1) / rows that works
        scale = 10**digits
        value = math.floor((wanted - 1) / rows * scale) / scale
        for _ in range(4):
            if num_sets_for(rows, value) == num_sets:
                return value
            value = (round(value * scale) + 1) / scale
    return wanted / rows


@dataclass
class Replay:
    hits: int
    keys: int

    @property
    def hit_rate(self) -> float:
        return self.hits / self.keys if self.keys else 0.0


def replay(stream: np.ndarray, num_sets: int, batch_size: int, warmup_batches: int) -> Replay:
    """Hits and keys of ``stream`` through a fresh reference cache (module doc)."""
    cache = RefDynamicCache(num_sets, 1)
    hits = counted = 0
    for index, start in enumerate(range(0, stream.size, batch_size)):
        batch = stream[start : start + batch_size]
        _, missed, _ = cache.query(batch)
        if index >= warmup_batches:
            hits += batch.size - missed.size
            counted += batch.size
        if missed.size:
            unique = np.unique(missed)
            cache.replace(unique, np.zeros((unique.size, 1), np.float32))
    return Replay(hits, counted)


def trace_ideal(measured: np.ndarray, slots: int) -> float:
    """The share of the measured keys that the ``slots`` most frequent keys carry."""
    _, counts = np.unique(measured, return_counts=True)
    counts = np.sort(counts)[::-1]
    return float(counts[:slots].sum() / measured.size) if measured.size else 0.0


@dataclass
class CacheSizeSpec:
    config: Path | None = None
    model: str | None = None
    table: str | None = None
    rows: int | None = None  # table rows without a config (keys 0..rows-1)
    dim: int | None = None
    distribution: str = "zipf:1.05"
    keys_from: Path | None = None
    num_keys: int = 1_000_000  # stream length for a distribution
    batch_size: int = 1024
    warmup: float = 0.2
    fractions: tuple[float, ...] = DEFAULT_FRACTIONS
    target_hit_rate: float | None = 0.9
    seed: int = 0


def _source(spec: CacheSizeSpec) -> tuple[np.ndarray, dict, int, int, int]:
    """(key stream, keys description, table rows, dim, devices)."""
    devices = 1
    table_keys = None
    rows, dim = spec.rows, spec.dim
    table_doc: dict = {}
    if spec.config is not None:
        from ..runtime.config.validate import load_config
        from ..runtime.table.reader import TableReader

        cfg = load_config(spec.config, check_files=True)
        name = spec.model or cfg.model_names[0]
        try:
            model = cfg.model(name)
        except KeyError:
            raise InvalidInputError(
                f"no model '{name}' in {spec.config}",
                location="--model",
                hint="models: " + ", ".join(cfg.model_names),
            ) from None
        table = spec.table or model.embedding_table_names[0]
        if table not in model.embedding_table_names:
            raise InvalidInputError(
                f"model '{name}' has no table '{table}'",
                location="--table",
                hint="tables: " + ", ".join(model.embedding_table_names),
            )
        table_id = model.embedding_table_names.index(table)
        dim = model.embedding_vecsize_per_table[table_id]
        devices = len(model.deployed_device_list)
        with TableReader(model.table_path(table_id), dim) as reader:
            rows = reader.num_keys
            if spec.keys_from is None:
                table_keys = np.array(reader.keys())
        table_doc = {
            "config": str(spec.config),
            "model": name,
            "table": table,
            "deployed_devices": devices,
            "gpucacheper": model.gpucacheper,
        }
    if spec.keys_from is not None:
        trace = load_trace(spec.keys_from)
        stream = trace.keys
        if rows is None:
            rows = int(np.unique(stream).size)
            table_doc["rows_from"] = "distinct keys of the trace"
        keys_doc = {
            "source": "trace",
            "path": str(spec.keys_from),
            "trace_keys": int(stream.size),
            "distinct_keys": int(np.unique(stream).size),
        }
    else:
        if table_keys is None:
            if rows is None:
                raise InvalidInputError(
                    "give --rows N (the table size) or --config", location="--rows"
                )
            table_keys = np.arange(rows, dtype=np.int64)
        gen = DistributionKeys(table_keys, parse_distribution(spec.distribution), spec.seed)
        stream = gen.next_batch(spec.num_keys)
        keys_doc = {
            "source": "distribution",
            **gen.dist.to_dict(),
            "seed": spec.seed,
            "stream_keys": int(stream.size),
        }
    if dim is None:
        raise InvalidInputError("give --dim D (floats per vector) or --config", location="--dim")
    return stream, {**keys_doc, **table_doc}, int(rows), int(dim), devices


def run_cache_size(spec: CacheSizeSpec, status: Callable[[str], None] | None = None) -> dict:
    """The hit-rate curve and the smallest gpucacheper; the report document."""
    say = status or (lambda message: None)
    if not 0.0 <= spec.warmup < 1.0:
        raise InvalidInputError(
            f"--warmup must be in [0, 1), got {spec.warmup}", location="--warmup"
        )
    bad = [f for f in spec.fractions if not 0.0 < f <= 1.0]
    if bad or not spec.fractions:
        raise InvalidInputError(
            f"cache fractions must be in (0, 1], got {bad or 'none'}", location="--fractions"
        )
    if spec.target_hit_rate is not None and not 0.0 < spec.target_hit_rate <= 1.0:
        raise InvalidInputError("--target-hit-rate must be in (0, 1]", location="--target-hit-rate")
    started_at = _dt.datetime.now(_dt.timezone.utc)
    stream, keys_doc, rows, dim, devices = _source(spec)
    n_batches = -(-stream.size // spec.batch_size)
    warmup_batches = int(round(spec.warmup * n_batches))
    if warmup_batches >= n_batches:
        raise InvalidInputError(
            f"the warm-up takes every one of the {n_batches} batches",
            location="--warmup",
            hint="a longer trace, or a smaller --warmup",
        )
    measured = stream[warmup_batches * spec.batch_size :]
    results: dict[int, Replay] = {}

    def hit_rate_at(num_sets: int) -> Replay:
        if num_sets not in results:
            results[num_sets] = replay(stream, num_sets, spec.batch_size, warmup_batches)
        return results[num_sets]

    def point(num_sets: int, fraction: float | None) -> dict:
        r = hit_rate_at(num_sets)
        slots = num_sets * WAYS
        ideal = trace_ideal(measured, slots)
        return {
            "gpucacheper": fraction
            if fraction is not None
            else gpucacheper_for_sets(num_sets, rows),
            "num_sets": num_sets,
            "slots": slots,
            "hit_rate": r.hit_rate,
            "hits": r.hits,
            "keys": r.keys,
            "ideal_hit_rate": ideal,
            "memory_bytes_per_gpu": cache_memory_bytes(num_sets, dim),
        }

    curve = []
    for fraction in sorted(set(spec.fractions)):
        num_sets = num_sets_for(rows, fraction)
        say(f"gpucacheper {fraction:g}: {num_sets * WAYS:,} slots")
        curve.append(point(num_sets, fraction))
    choice = None
    if spec.target_hit_rate is not None:
        choice = _smallest(spec.target_hit_rate, curve, rows, hit_rate_at, point, say)
        if choice is not None:
            choice["memory_bytes_total"] = choice["memory_bytes_per_gpu"] * devices
    return {
        "kind": "cache-size",
        "tool": "hps",
        "version": __version__,
        "date": started_at.isoformat(timespec="seconds"),
        "machine": machine(),
        "keys": keys_doc,
        "rows": rows,
        "dim": dim,
        "devices": devices,
        "batch_size": spec.batch_size,
        "warmup": spec.warmup,
        "warmup_batches": warmup_batches,
        "batches": n_batches,
        "target_hit_rate": spec.target_hit_rate,
        "curve": curve,
        "smallest": choice,
        "smallest_reason": None
        if choice is not None or spec.target_hit_rate is None
        else _unreachable(spec.target_hit_rate, rows, hit_rate_at),
    }


def _unreachable(target: float, rows: int, hit_rate_at) -> str:
    full = hit_rate_at(num_sets_for(rows, 1.0)).hit_rate
    return (
        f"no cache size reaches a hit rate of {target:g}: gpucacheper 1.0 gives "
        f"{full:.4f} (keys seen once can never hit)"
    )


def _smallest(target: float, curve: list[dict], rows: int, hit_rate_at, point, say) -> dict | None:
    passing = [p for p in curve if p["hit_rate"] >= target]
    if not passing:
        full_sets = num_sets_for(rows, 1.0)
        if curve and curve[-1]["num_sets"] >= full_sets:
            return None
        if hit_rate_at(full_sets).hit_rate < target:
            return None
        hi = full_sets
        lower = [p["num_sets"] for p in curve]
    else:
        hi = passing[0]["num_sets"]
        lower = [p["num_sets"] for p in curve if p["num_sets"] < hi]
    lo = max(lower) if lower else num_sets_for(rows, 0.0) - 1
    if lo >= hi:
        lo = hi - 1
    while hi - lo > max(1, hi // 100):
        mid = (lo + hi) // 2
        say(f"bisecting: {mid * WAYS:,} slots")
        if hit_rate_at(mid).hit_rate >= target:
            hi = mid
        else:
            lo = mid
    found = point(hi, None)
    found["resolution_sets"] = hi - lo
    return found
