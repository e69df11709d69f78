"""`hps serve`: serve HPS lookups and inference packages over KServe v2 (HTTP and gRPC)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("serve")
@click.option(
    "--config",
    "config",
    type=click.Path(path_type=Path, dir_okay=False),
    help="HPS ps.json: one lookup model per model (Triton HPS backend contract). Optional "
    "with --model-repository.",
)
@click.option(
    "--model-repository",
    type=click.Path(path_type=Path, file_okay=False),
    help="Folder of packages (manifest.json + ps.json + dense/, from hps dissect or "
    "hps build-graph) and TensorFlow SavedModels (Triton's or TF Serving's layout, e.g. a "
    "package's triton/): one inference model per folder, named by the folder.",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to bind (loopback unless told otherwise; 0.0.0.0 for all).",
)
@click.option(
    "--http-port",
    default=8000,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="KServe v2 HTTP/REST port (0: any free port, see the 'ready' log line).",
)
@click.option(
    "--grpc-port",
    default=8001,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="KServe v2 gRPC port.",
)
@click.option(
    "--metrics-port",
    default=8002,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Prometheus /metrics port.",
)
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Server processes on the same ports (SO_REUSEPORT; the kernel spreads connections). "
    "Above 1 the volatile tier must be shared (multi_process_hash_map or redis_cluster) and "
    "RocksDB is opened read-only; see docs/serve.md, 'Worker processes'.",
)
@click.option(
    "--max-queue-delay-us",
    default=0,
    show_default=True,
    type=click.IntRange(0, 10_000_000),
    help="Dynamic batching: how long the oldest queued request may wait for others "
    "(0: batch only what is already queued).",
)
@click.option(
    "--max-queue-size",
    default=1024,
    show_default=True,
    type=click.IntRange(1),
    help="Requests that may wait per model; more are refused with 503.",
)
@click.option(
    "--instances",
    default=2,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Concurrent executions per model (at most num_of_worker_buffer_in_pool "
    "when the model has embedding caches).",
)
@click.option(
    "--max-request-bytes",
    default=16 << 20,
    show_default=True,
    type=click.IntRange(1024),
    help="Largest request body, after decompression (413 / RESOURCE_EXHAUSTED above).",
)
@click.option(
    "--max-elements",
    default=1 << 18,
    show_default=True,
    type=click.IntRange(1),
    help="Most values a request may carry as JSON or gRPC typed contents (binary tensors: "
    "--max-request-bytes only).",
)
@click.option(
    "--header-timeout",
    default=10.0,
    show_default=True,
    type=click.FloatRange(0.1),
    help="Seconds a request head (HTTP) or a connection handshake (gRPC) may take.",
)
@click.option(
    "--body-timeout",
    default=30.0,
    show_default=True,
    type=click.FloatRange(0.1),
    help="Seconds an HTTP request body may take to arrive (408 after).",
)
@click.option(
    "--admin-token-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="File holding the bearer token of the admin endpoints (else "
    "$HPS_ADMIN_TOKEN; without a token they are disabled).",
)
@click.option(
    "--allow-shared-memory",
    is_flag=True,
    help="Enable Triton's system shared memory extension (inputs and outputs in "
    "/dev/shm regions of the server's user; loopback hosts only).",
)
@click.option(
    "--allow-non-finite",
    is_flag=True,
    help="Serve tables holding NaN or Inf, and accept such vectors in admin inserts "
    "(refused by default).",
)
@click.option(
    "--shutdown-timeout",
    default=30.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Seconds SIGTERM may take in total: in-flight requests get that long less 1 s, "
    "then the rest are cancelled.",
)
@click.option(
    "--access-log",
    default="-",
    show_default=True,
    help="Access log: '-' (stderr), a file path, or 'off'.",
)
@click.option(
    "--custom-objects",
    "custom_objects",
    multiple=True,
    metavar="MODULE[:ATTR]",
    help="Import MODULE before the packages load (e.g. a library registering custom "
    "TensorFlow ops their dense parts use); repeat. What a package records is imported too.",
)
@click.option(
    "--pin-event-loop/--no-pin-event-loop",
    default=True,
    show_default=True,
    help="Keep the event loop and gRPC's poller thread on one CPU (they hand every call to "
    "each other; on one CPU that costs less: docs/serve.md). Worker i takes the i-th CPU "
    "allowed. --no-pin-event-loop leaves their placement to the OS.",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
def serve_command(
    config,
    model_repository,
    host,
    http_port,
    grpc_port,
    metrics_port,
    workers,
    max_queue_delay_us,
    max_queue_size,
    instances,
    max_request_bytes,
    max_elements,
    header_timeout,
    body_timeout,
    admin_token_file,
    allow_shared_memory,
    allow_non_finite,
    shutdown_timeout,
    access_log,
    custom_objects,
    pin_event_loop,
    log_level,
) -> None:
    """Serve the tables of a ps.json, inference packages and SavedModels, over KServe v2.

    Speaks what tritonclient (HTTP and gRPC) and perf_analyzer speak: health, metadata,
    config, statistics, and infer with JSON or binary tensors. Each model of ps.json is a
    lookup model with the Triton HPS backend's tensors (KEYS INT64 [1, total], NUMKEYS INT32
    [1, n_tables] -> OUTPUT0 FP32), so existing HPS clients work unchanged. Concurrent requests
    are batched into one lookup, up to the model's max_batch_size.

    Logs are JSON lines on stderr; readiness (after the tables are loaded and the caches are
    warm) is logged with the bound ports. SIGTERM drains in-flight requests. See docs/serve.md.

    The --config is checked first with the checks hps validate-config runs (one code path).

    With --workers N, N server processes share the ports and the hierarchy (shared-memory or
    Redis volatile tier, read-only RocksDB); a supervisor checks the config once, restarts a
    worker that dies and serves their metrics together.

    Exit codes: 0 after a clean shutdown (SIGTERM/SIGINT, also while loading), 3 invalid
    config/package or a port in use, 4 the RocksDB database is locked by another process, 5 a
    missing dependency, 6 an unreachable Redis Cluster.
    """
    from ..runtime.errors import DependencyMissingError

    if config is None and model_repository is None:
        raise click.UsageError("give --config, --model-repository or both")

    try:
        import aiohttp  # noqa: F401
        import grpc  # noqa: F401
        import orjson  # noqa: F401
        import prometheus_client  # noqa: F401
        import tritonclient.grpc  # noqa: F401
    except ImportError as exc:
        raise DependencyMissingError(exc.name or "aiohttp", "serve", "hps serve") from exc
    from ..common.custom_objects import allow_cwd_imports
    from ..serve.core import ServeOptions, admin_token_from
    from ..serve.logs import configure_logging
    from ..serve.server import serve
    from ..serve.workers import serve_workers

    access_target = None if access_log == "off" else access_log
    configure_logging(log_level, access_target)
    options = ServeOptions(
        config=config,
        model_repository=model_repository,
        host=host,
        http_port=http_port,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        max_queue_delay_us=max_queue_delay_us,
        max_queue_size=max_queue_size,
        instances=instances,
        max_request_bytes=max_request_bytes,
        max_elements=max_elements,
        header_timeout_s=header_timeout,
        body_timeout_s=body_timeout,
        admin_token=admin_token_from(admin_token_file),
        shutdown_timeout_s=shutdown_timeout,
        allow_shared_memory=allow_shared_memory,
        custom_objects=tuple(custom_objects),
        allow_non_finite=allow_non_finite,
        workers=workers,
        pin_event_loop=pin_event_loop,
    )
    if custom_objects:
        allow_cwd_imports()
    if workers > 1:
        serve_workers(options, log_level, access_target)
    else:
        serve(options)
