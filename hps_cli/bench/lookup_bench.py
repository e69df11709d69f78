"""`hps bench lookup`: the lookup hierarchy of a ps.json measured in process.

For each batch size: ``warmup`` lookups, then ``iterations`` lookups (or as many as fit in
``duration`` seconds of wall time). One lookup is one call covering every benchmarked table
(``HPS.lookup_tables`` when they are all the model's tables, else one ``HPS.lookup`` per table),
with ``batch_size`` keys per table drawn from the key source before the clock starts. Latency is
the time of that call; throughput is keys (or lookups) divided by the summed call times.

Where each key was answered (``hit_rate``), from the runtime's own counters, per lookup:

- ``gpu_cache``: hits of the table's embedding cache (key occurrences);
- the cache's misses: with a synchronous lookup the cache fetched each distinct missed key once
  from the CPU tiers, whose counters say how many came from the volatile tier, from RocksDB and
  from the default value; the missed occurrences are apportioned to ``volatile`` /
  ``persistent`` / ``default`` in those proportions (largest remainder, so the counts stay
  integers; exact whenever no missed key repeats within a batch). With an asynchronous lookup
  (HPS's ``hit_rate_threshold`` rule) the misses got the default value in the result:
  ``default`` (also counted in ``async_misses``);
- no cache: the tiers' counters directly (every key occurrence is fetched).

So ``gpu_cache + volatile + persistent + default`` = keys looked up, exactly. Between measured
lookups the bench waits for the cache's background insertions (outside the timed region), so
each lookup's counter deltas are its own.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .. import __version__
from ..runtime.errors import InvalidInputError
from .gpu_floor import kernel_vs_gather, unavailable, why_not_measurable
from .keys import DistributionKeys, TraceKeys, load_trace, parse_distribution
from .stats import latency_summary

TIERS = ("gpu_cache", "volatile", "persistent", "default")


@dataclass
class LookupBenchSpec:
    config: Path
    batch_sizes: tuple[int, ...] = (1024,)
    model: str | None = None
    tables: tuple[str, ...] = ()  # empty: every table of the model
    distribution: str = "uniform"
    keys_from: Path | None = None  # a trace instead of the distribution
    warmup: int = 20
    iterations: int | None = 200
    duration_s: float | None = None  # instead of iterations
    seed: int = 0
    device_id: int | None = None
    measure_kernel: bool = True  # the GPU kernel vs gather floor, when on a GPU


@dataclass
class _Tally:
    """Where the keys of one table were answered (key occurrences) and the raw counters."""

    keys: int = 0
    gpu_cache: int = 0
    volatile: int = 0
    persistent: int = 0
    default: int = 0
    cache_misses: int = 0
    fetched_keys: int = 0  # distinct missed keys fetched from the CPU tiers (synchronously)
    async_misses: int = 0
    sync_lookups: int = 0
    async_lookups: int = 0

    def add(self, other: "_Tally") -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def to_dict(self) -> dict:
        counts = {name: getattr(self, name) for name in self.__dataclass_fields__}
        rates = {tier: (getattr(self, tier) / self.keys if self.keys else 0.0) for tier in TIERS}
        return {"counts": counts, "hit_rate": rates}


@dataclass
class _Table:
    name: str
    table_id: int
    rows: int
    dim: int
    source: object
    front: object = None
    tally: _Tally = field(default_factory=_Tally)


def apportion(total: int, weights: list[int]) -> list[int]:
    """Split ``total`` into integers proportional to ``weights`` (largest remainder; ties to
    the earlier weight). All-zero weights give everything to the last one."""
    wsum = sum(weights)
    if total <= 0:
        return [0] * len(weights)
    if wsum <= 0:
        return [0] * (len(weights) - 1) + [total]
    exact = [total * w / wsum for w in weights]
    out = [int(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - out[i]), i))
    for i in order[: total - sum(out)]:
        out[i] += 1
    return out


def _tier_delta(before: dict, after: dict) -> dict:
    return {
        k: after[k] - before[k] for k in ("keys", "volatile_hits", "persistent_hits", "defaults")
    }


def account(
    keys: int,
    cache_before: dict | None,
    cache_after: dict | None,
    tiers_before: dict,
    tiers_after: dict,
) -> _Tally:
    """The tally of one lookup of one table from counter snapshots around it (module doc)."""
    t = _tier_delta(tiers_before, tiers_after)
    tally = _Tally(keys=keys)
    if cache_after is None:
        tally.volatile, tally.persistent, tally.default = (
            t["volatile_hits"],
            t["persistent_hits"],
            t["defaults"],
        )
        tally.fetched_keys = t["keys"]
        return tally
    hits = cache_after["hits"] - cache_before["hits"]
    misses = cache_after["misses"] - cache_before["misses"]
    tally.gpu_cache, tally.cache_misses = hits, misses
    if cache_after.get("type") != "dynamic":
        tally.default = misses  # static / uvm: an absent key gets the default value
        return tally
    went_async = (cache_after["async_batches"] - cache_before["async_batches"]) + (
        cache_after["async_dropped"] - cache_before["async_dropped"]
    )
    if misses and went_async:
        tally.default = tally.async_misses = misses
        tally.async_lookups = 1
        return tally
    tally.sync_lookups = 1 if misses else 0
    tally.fetched_keys = t["keys"]
    tally.volatile, tally.persistent, tally.default = apportion(
        misses, [t["volatile_hits"], t["persistent_hits"], t["defaults"]]
    )
    return tally


@dataclass
class _Plan:
    """What to benchmark, checked before anything is loaded."""

    model_cfg: object
    device: int
    names: list[str]
    trace: object = None
    dist: object = None


def _plan(cfg, spec: LookupBenchSpec) -> _Plan:
    model_name = spec.model or cfg.model_names[0]
    try:
        model_cfg = cfg.model(model_name)
    except KeyError:
        raise InvalidInputError(
            f"no model '{model_name}' in {spec.config}",
            location="--model",
            hint="models: " + ", ".join(cfg.model_names),
        ) from None
    device = spec.device_id if spec.device_id is not None else model_cfg.deployed_device_list[-1]
    if device not in model_cfg.deployed_device_list:
        raise InvalidInputError(
            f"device {device} is not in model '{model_name}''s deployed_device_list "
            f"{list(model_cfg.deployed_device_list)}",
            location="--device",
        )
    names = list(spec.tables) or list(model_cfg.embedding_table_names)
    for name in names:
        if name not in model_cfg.embedding_table_names:
            raise InvalidInputError(
                f"model '{model_name}' has no table '{name}'",
                location="--table",
                hint="tables: " + ", ".join(model_cfg.embedding_table_names),
            )
    plan = _Plan(model_cfg, device, names)
    if spec.keys_from is not None:
        if len(names) != 1:
            raise InvalidInputError(
                f"a key trace feeds one table, but model '{model_name}' has {len(names)} "
                "tables to benchmark",
                location="--keys-from",
                hint="pick the table with --table NAME",
            )
        plan.trace = load_trace(spec.keys_from)
        plan.trace.check_range(uint32=not cfg.supportlonglong)
    else:
        plan.dist = parse_distribution(spec.distribution)
    return plan


def _tables_of(hps, spec: LookupBenchSpec, plan: _Plan) -> list[_Table]:
    from ..runtime.table.reader import TableReader

    model_cfg = plan.model_cfg
    out = []
    for index, name in enumerate(plan.names):
        table_id = model_cfg.embedding_table_names.index(name)
        dim = model_cfg.embedding_vecsize_per_table[table_id]
        with TableReader(model_cfg.table_path(table_id), dim) as reader:
            rows = reader.num_keys
            if plan.trace is not None:
                source = TraceKeys(plan.trace)
            else:
                source = DistributionKeys(np.array(reader.keys()), plan.dist, spec.seed + index)
        out.append(
            _Table(
                name,
                table_id,
                rows,
                dim,
                source,
                hps.front_cache(model_cfg.model, table_id, plan.device),
            )
        )
    return out


def _cache_info(table: _Table, model_cfg) -> dict | None:
    front = table.front
    if front is None:
        return None
    stats = front.stats()
    return {
        "type": model_cfg.cache_type,
        "backend": "gpu" if front.backend.on_gpu else "reference",
        "capacity": stats.get("capacity", table.rows),
        "gpucacheper": model_cfg.gpucacheper,
        "hit_rate_threshold": model_cfg.hit_rate_threshold,
    }


def machine() -> dict:
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }


def run_lookup_bench(spec: LookupBenchSpec, status: Callable[[str], None] | None = None) -> dict:
    """Run the benchmark; returns the report document (schemas/bench_report.schema.json)."""
    from ..runtime import HPS
    from ..runtime.config.validate import load_config

    say = status or (lambda message: None)
    if spec.iterations is None and spec.duration_s is None:
        raise InvalidInputError(
            "give a number of iterations or a duration", location="--iterations"
        )
    started_at = _dt.datetime.now(_dt.timezone.utc)
    cfg = load_config(spec.config, check_files=True)
    plan = _plan(cfg, spec)
    model_cfg = plan.model_cfg
    spec = LookupBenchSpec(**{**spec.__dict__, "model": model_cfg.model, "device_id": plan.device})
    say(f"loading {spec.config}")
    with HPS(cfg) as hps:
        tables = _tables_of(hps, spec, plan)
        all_tables = [t.table_id for t in tables] == list(range(model_cfg.num_tables))
        rows, kernel_samples = [], []
        for batch in spec.batch_sizes:
            say(
                f"batch size {batch}: {spec.warmup} warm-up lookups, then "
                + (
                    f"{spec.iterations} measured"
                    if spec.duration_s is None
                    else f"{spec.duration_s:g} s measured"
                )
            )
            row, sample = _run_batch_size(hps, model_cfg, tables, batch, spec, all_tables)
            rows.append(row)
            kernel_samples.append(sample)
        # The kernel timing runs after every measured lookup: its counted hits change the
        # cache's scores, which must not influence the lookups above.
        for row, sample in zip(rows, kernel_samples):
            row["gpu_kernel"] = _kernel_row(tables, sample, spec.measure_kernel)
        report = {
            "kind": "lookup",
            "tool": "hps",
            "version": __version__,
            "date": started_at.isoformat(timespec="seconds"),
            "machine": machine(),
            "config": str(spec.config),
            "model": model_cfg.model,
            "device_id": plan.device,
            "tables": [
                {"name": t.name, "rows": t.rows, "dim": t.dim, "cache": _cache_info(t, model_cfg)}
                for t in tables
            ],
            "keys": tables[0].source.describe()
            if plan.trace is not None
            else {**plan.dist.to_dict(), "source": "distribution", "seed": spec.seed},
            "warmup": spec.warmup,
            "iterations": spec.iterations,
            "duration_s": spec.duration_s,
            "rows": rows,
        }
    return report


def _run_batch_size(
    hps, model_cfg, tables: list[_Table], batch: int, spec: LookupBenchSpec, all_tables: bool
) -> tuple[dict, list[np.ndarray] | None]:
    model, device = model_cfg.model, spec.device_id
    inserters = {
        id(t.front.inserter): t.front.inserter
        for t in tables
        if t.front is not None and getattr(t.front, "inserter", None) is not None
    }

    def one_lookup(keys: list[np.ndarray]) -> float:
        started = time.perf_counter()
        if all_tables:
            hps.lookup_tables(keys, model, device)
        else:
            for t, k in zip(tables, keys):
                hps.lookup(k, model, t.table_id, device)
        return time.perf_counter() - started

    def settle() -> None:
        for inserter in inserters.values():
            inserter.flush()

    for _ in range(spec.warmup):
        one_lookup([t.source.next_batch(batch) for t in tables])
    settle()
    tallies = [_Tally() for _ in tables]
    latencies: list[float] = []
    sample_for_kernel: list[np.ndarray] = []
    deadline = None if spec.duration_s is None else time.perf_counter() + spec.duration_s
    while True:
        if deadline is None:
            if len(latencies) >= spec.iterations:
                break
        elif time.perf_counter() >= deadline and latencies:
            break
        keys = [t.source.next_batch(batch) for t in tables]
        before = [
            (t.front.stats() if t.front is not None else None, hps.counters(model, t.table_id))
            for t in tables
        ]
        latencies.append(one_lookup(keys))
        settle()
        for i, t in enumerate(tables):
            cache_after = t.front.stats() if t.front is not None else None
            tallies[i].add(
                account(
                    batch, before[i][0], cache_after, before[i][1], hps.counters(model, t.table_id)
                )
            )
        if len(sample_for_kernel) < 4:
            sample_for_kernel.append(keys[0])
    seconds = float(sum(latencies))
    total = _Tally()
    for tally in tallies:
        total.add(tally)
    lookups = len(latencies)
    keys_done = lookups * batch * len(tables)
    row = {
        "batch_size": batch,
        "keys_per_lookup": batch * len(tables),
        "lookups": lookups,
        "keys": keys_done,
        "seconds": seconds,
        "throughput": {
            "lookups_per_s": lookups / seconds if seconds else 0.0,
            "keys_per_s": keys_done / seconds if seconds else 0.0,
        },
        "latency_us": latency_summary(np.asarray(latencies) * 1e6),
        **total.to_dict(),
        "per_table": [{"table": t.name, **tally.to_dict()} for t, tally in zip(tables, tallies)],
    }
    return row, sample_for_kernel


def _kernel_row(tables: list[_Table], sample: list[np.ndarray], enabled: bool) -> dict:
    front = tables[0].front
    reason = why_not_measurable(front)
    if reason is not None:
        return unavailable(reason)
    if not enabled:
        return unavailable("disabled (--no-kernel)")
    return kernel_vs_gather(front, sample)
