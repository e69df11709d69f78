"""`hps bench`: lookup throughput and latency in process, a server from the client side, and the
hit rate of cache sizes. See docs/bench.md."""

from __future__ import annotations

from pathlib import Path

import click

from ..output import current_output, json_option


@click.group("bench")
def bench_group() -> None:
    """Benchmark lookups (in process), a KServe v2 server (client side), and cache sizes.

    Reports: a table on stdout, --json (one document, schemas/bench_report.schema.json),
    --csv FILE (perf_analyzer's columns for `serve`), --plot FILE.png (needs matplotlib).
    """


def _int_list(ctx, param, value) -> tuple[int, ...]:
    out = []
    for item in value:
        for part in str(item).split(","):
            part = part.strip()
            if not part:
                continue
            try:
                number = int(part)
            except ValueError:
                raise click.BadParameter(f"'{part}' is not an integer") from None
            if number < 1:
                raise click.BadParameter(f"{number} is not positive")
            out.append(number)
    return tuple(out)


def _float_list(ctx, param, value) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        return tuple(float(p) for p in value.split(",") if p.strip())
    except ValueError:
        raise click.BadParameter(f"'{value}' is not a comma-separated list of numbers") from None


def _outputs(func):
    func = click.option("--overwrite", is_flag=True, help="Replace existing --csv / --plot files.")(
        func
    )
    func = click.option(
        "--plot",
        "plot_dest",
        type=click.Path(path_type=Path, dir_okay=False),
        help="Write a PNG plot (needs matplotlib).",
    )(func)
    func = click.option(
        "--csv",
        "csv_dest",
        type=click.Path(path_type=Path, dir_okay=False, allow_dash=True),
        help="Write the rows as CSV ('-': on stdout instead of the table).",
    )(func)
    return json_option(func)


def _check_outputs(csv_dest, plot_dest, overwrite) -> None:
    """Fail before a long run, not after: existing destinations, a missing matplotlib."""
    from ..runtime.atomic import check_destination

    for dest in (csv_dest, plot_dest):
        if dest is not None and str(dest) != "-":
            check_destination(dest, overwrite)
    if plot_dest is not None:
        from ..bench.report import require_matplotlib

        require_matplotlib()


def _emit(report: dict, csv_dest, plot_dest, overwrite: bool, verbose_csv: bool = False) -> None:
    from ..bench import report as fmt
    from ..runtime.atomic import atomic_file

    out = current_output()
    if csv_dest is not None and str(csv_dest) != "-":
        with atomic_file(csv_dest, overwrite=overwrite, mode="w") as handle:
            handle.write(fmt.csv_text(report, verbose_csv))
        out.info(f"wrote {csv_dest}")
    if plot_dest is not None:
        fmt.plot(report, plot_dest, overwrite=overwrite)
        out.info(f"wrote {plot_dest}")
    if out.json_mode:
        out.emit_json(report)
    elif csv_dest is not None and str(csv_dest) == "-":
        click.echo(fmt.csv_text(report, verbose_csv), nl=False)
    else:
        out.render(fmt.table_for(report))
        if report["kind"] == "cache-size":
            line = fmt.smallest_line(report)
            if line:
                out.line(line)
        if report["kind"] == "lookup":
            for row in report["rows"]:
                reason = row["gpu_kernel"]["reason"]
                if reason:
                    out.info(f"kernel share of the gather floor: not measured ({reason})")
                    break
        if report["kind"] == "serve":
            for level in report["levels"]:
                if level["errors_total"]:
                    out.warn(
                        f"concurrency {level['concurrency']}: {level['errors_total']} "
                        f"failed request(s), first: {level['first_error']}"
                    )


_distribution = click.option(
    "--distribution",
    default=None,
    metavar="SPEC",
    help="Key distribution over the table's keys: uniform, zipf:ALPHA, hotkey:PCT:COVERAGE.",
)
_keys_from = click.option(
    "--keys-from",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Replay a key trace instead: .npy of integers, or one key per line.",
)
_seed = click.option("--seed", type=int, default=0, show_default=True)


def _source_args(distribution, keys_from, default: str) -> str:
    if distribution is not None and keys_from is not None:
        raise click.UsageError("give --distribution or --keys-from, not both")
    return distribution or default


@bench_group.command("lookup")
@click.option(
    "--config",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="The ps.json whose lookup hierarchy to measure.",
)
@click.option("--model", help="Model of ps.json (default: the first).")
@click.option(
    "--table",
    "tables",
    multiple=True,
    help="Table to benchmark (repeatable; default: every table of the model).",
)
@click.option(
    "--batch-size",
    "batch_sizes",
    multiple=True,
    default=("1024",),
    callback=_int_list,
    show_default=True,
    help="Keys per table per lookup; a comma-separated list or repeated.",
)
@_distribution
@_keys_from
@click.option(
    "--warmup",
    type=click.IntRange(0),
    default=20,
    show_default=True,
    help="Lookups before measuring, per batch size.",
)
@click.option(
    "--iterations",
    type=click.IntRange(1),
    default=200,
    show_default=True,
    help="Measured lookups per batch size.",
)
@click.option(
    "--duration",
    type=click.FloatRange(min=0, min_open=True),
    help="Measure for this many seconds per batch size instead of --iterations.",
)
@click.option(
    "--device",
    "device_id",
    type=click.IntRange(0),
    help="Device whose cache serves the lookups (default: the model's last).",
)
@click.option(
    "--kernel/--no-kernel",
    default=True,
    show_default=True,
    help="On a GPU: time the cache kernel against the plain-gather floor.",
)
@_seed
@_outputs
def lookup_command(
    config,
    model,
    tables,
    batch_sizes,
    distribution,
    keys_from,
    warmup,
    iterations,
    duration,
    device_id,
    kernel,
    seed,
    json_output,
    csv_dest,
    plot_dest,
    overwrite,
) -> None:
    """Throughput, latency and per-tier hit rates of HPS lookups, in process.

    Loads the config's tiers and caches (hash map / Redis, RocksDB, the embedding cache on the
    GPU or its CPU reference) and, per batch size, runs warm-up lookups then measured ones.
    Reports keys/s and lookups/s, latency p50/p90/p95/p99/max in microseconds, where the keys
    were answered (GPU cache, volatile, persistent, default; they sum to 1), and on a GPU the
    cache kernel's share of the plain-gather floor measured in the same run.
    """
    from ..bench.lookup_bench import LookupBenchSpec, run_lookup_bench

    _check_outputs(csv_dest, plot_dest, overwrite)
    spec = LookupBenchSpec(
        config=config,
        batch_sizes=batch_sizes,
        model=model,
        tables=tuple(tables),
        distribution=_source_args(distribution, keys_from, "uniform"),
        keys_from=keys_from,
        warmup=warmup,
        iterations=None if duration else iterations,
        duration_s=duration,
        seed=seed,
        device_id=device_id,
        measure_kernel=kernel,
    )
    report = run_lookup_bench(spec, status=current_output().info)
    _emit(report, csv_dest, plot_dest, overwrite)


@bench_group.command("serve")
@click.option(
    "--url", help="Server as HOST:PORT (default 127.0.0.1:8000 for http, 127.0.0.1:8001 for grpc)."
)
@click.option("--model", required=True, help="The lookup model to load (a model of ps.json).")
@click.option("--protocol", type=click.Choice(["http", "grpc"]), default="http", show_default=True)
@click.option(
    "--config",
    type=click.Path(path_type=Path, dir_okay=False),
    help="The server's ps.json: draw keys from the model's tables (else keys 0..--key-space-1).",
)
@_distribution
@_keys_from
@click.option(
    "--key-space",
    type=click.IntRange(1),
    default=1_000_000,
    show_default=True,
    help="Keys 0..N-1 to draw from without --config.",
)
@click.option(
    "--keys-per-request",
    type=click.IntRange(1),
    default=64,
    show_default=True,
    help="Keys per table in each request (KEYS holds this many times the tables).",
)
@click.option(
    "--concurrency-range",
    default="1",
    show_default=True,
    metavar="START:END[:STEP]",
    help="Concurrency levels; without STEP, powers of two from START to END.",
)
@click.option(
    "--measurement-interval",
    type=click.IntRange(1),
    default=5000,
    show_default=True,
    help="Window length in milliseconds.",
)
@click.option(
    "--stability-percentage",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    help="Stable when the last 3 windows are within this % of their mean.",
)
@click.option(
    "--max-trials",
    type=click.IntRange(1),
    default=10,
    show_default=True,
    help="Most windows per concurrency level.",
)
@click.option(
    "--binary/--json-data",
    default=True,
    show_default=True,
    help="HTTP tensors as binary data or as JSON (gRPC is always binary).",
)
@click.option(
    "--warmup-requests",
    type=click.IntRange(0),
    default=10,
    show_default=True,
    help="Requests per level before the first window.",
)
@click.option(
    "--latency-threshold",
    type=click.FloatRange(min=0, min_open=True),
    help="Stop the sweep after a level whose average latency exceeds this (ms).",
)
@click.option(
    "--request-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=60.0,
    show_default=True,
    help="Seconds before a request counts as failed.",
)
@click.option(
    "--metrics-url",
    metavar="HOST:PORT",
    help="The server's Prometheus port (hps serve --metrics-port): per level, the share of "
    "keys answered by the GPU cache, volatile, persistent tier and the default.",
)
@click.option(
    "--verbose-csv",
    is_flag=True,
    help="Append Keys/Second, Avg and Max latency, Errors, Stable and the hit rates to the CSV.",
)
@_seed
@_outputs
def serve_command(
    url,
    model,
    protocol,
    config,
    distribution,
    keys_from,
    key_space,
    keys_per_request,
    concurrency_range,
    measurement_interval,
    stability_percentage,
    max_trials,
    binary,
    warmup_requests,
    latency_threshold,
    request_timeout,
    metrics_url,
    verbose_csv,
    seed,
    json_output,
    csv_dest,
    plot_dest,
    overwrite,
) -> None:
    """Throughput and client-side latency of a KServe v2 lookup model, like perf_analyzer.

    Sends the Triton HPS backend's tensors (KEYS, NUMKEYS -> OUTPUT0) over HTTP or gRPC from
    CONCURRENCY threads per level; a level is stable when its last 3 windows agree within
    --stability-percentage (throughput and average latency). Errors are counted, not fatal.
    With --metrics-url, where the keys were answered, from the server's counters over the
    same windows. Exit 6 when the server (or --metrics-url) cannot be reached, 3 when the
    model is not a lookup model, every request fails or --metrics-url is not a metrics address.
    """
    from ..bench.serve_bench import ServeBenchSpec, parse_concurrency_range, run_serve_bench

    _check_outputs(csv_dest, plot_dest, overwrite)
    spec = ServeBenchSpec(
        url=url or ("127.0.0.1:8001" if protocol == "grpc" else "127.0.0.1:8000"),
        model=model,
        protocol=protocol,
        config=config,
        distribution=_source_args(distribution, keys_from, "uniform"),
        keys_from=keys_from,
        key_space=key_space,
        keys_per_request=keys_per_request,
        concurrency=parse_concurrency_range(concurrency_range),
        measurement_interval_ms=measurement_interval,
        stability_percentage=stability_percentage,
        max_trials=max_trials,
        binary=binary,
        warmup_requests=warmup_requests,
        latency_threshold_ms=latency_threshold,
        request_timeout_s=request_timeout,
        seed=seed,
        metrics_url=metrics_url,
    )
    out = current_output()
    report = run_serve_bench(spec, status=out.info, warn=out.warn)
    _emit(report, csv_dest, plot_dest, overwrite, verbose_csv)


@bench_group.command("cache-size")
@click.option(
    "--config",
    type=click.Path(path_type=Path, dir_okay=False),
    help="A ps.json: the table's rows, dim, keys and deployed devices.",
)
@click.option("--model", help="Model of ps.json (default: the first).")
@click.option("--table", help="Table of the model (default: the first).")
@click.option(
    "--rows",
    type=click.IntRange(1),
    help="Table rows without --config (keys 0..N-1; with a trace: default its distinct keys).",
)
@click.option("--dim", type=click.IntRange(1), help="Floats per vector without --config.")
@_distribution
@_keys_from
@click.option(
    "--num-keys",
    type=click.IntRange(1),
    default=1_000_000,
    show_default=True,
    help="Keys drawn from the distribution (the replayed stream).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1),
    default=1024,
    show_default=True,
    help="Keys per replayed lookup.",
)
@click.option(
    "--warmup",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.2,
    show_default=True,
    help="Fraction of the batches replayed before counting.",
)
@click.option(
    "--fractions",
    callback=_float_list,
    help="Cache fractions (gpucacheper) of the curve, comma-separated "
    "[default: 0.01,0.02,0.05,0.1,0.2,0.3,0.5,0.75,1].",
)
@click.option(
    "--target-hit-rate",
    type=click.FloatRange(0, 1, min_open=True),
    default=0.9,
    show_default=True,
    help="Find the smallest gpucacheper reaching this hit rate.",
)
@_seed
@_outputs
def cache_size_command(
    config,
    model,
    table,
    rows,
    dim,
    distribution,
    keys_from,
    num_keys,
    batch_size,
    warmup,
    fractions,
    target_hit_rate,
    seed,
    json_output,
    csv_dest,
    plot_dest,
    overwrite,
) -> None:
    """Hit rate over cache sizes (the cache's reference implementation replayed), and the
    smallest gpucacheper that reaches --target-hit-rate, with the memory it costs per GPU.

    Keys: a trace (--keys-from) or a distribution (default zipf:1.05) over the table of
    --config, or over keys 0..--rows-1.
    """
    from ..bench.cache_size import DEFAULT_FRACTIONS, CacheSizeSpec, run_cache_size

    if config is None and keys_from is None and rows is None:
        raise click.UsageError("give --config, --keys-from or --rows")
    if config is None and dim is None:
        raise click.UsageError("give --dim (floats per vector) or --config")
    if config is not None and (rows is not None or dim is not None):
        raise click.UsageError("--rows and --dim come from --config; give one or the other")
    _check_outputs(csv_dest, plot_dest, overwrite)
    spec = CacheSizeSpec(
        config=config,
        model=model,
        table=table,
        rows=rows,
        dim=dim,
        distribution=_source_args(distribution, keys_from, "zipf:1.05"),
        keys_from=keys_from,
        num_keys=num_keys,
        batch_size=batch_size,
        warmup=warmup,
        fractions=fractions or DEFAULT_FRACTIONS,
        target_hit_rate=target_hit_rate,
        seed=seed,
    )
    report = run_cache_size(spec, status=current_output().info)
    _emit(report, csv_dest, plot_dest, overwrite)
