"""Start-up and shutdown of ``hps serve``.

1. Check the config, if any, with validate-config's checks (runtime/preflight.py: a bad
   ps.json fails here, before any port is bound).
2. Bind HTTP, gRPC and metrics on ``host`` (loopback by default): liveness answers from now
   on, readiness says 503 and inference answers 503 while loading.
3. Load the runtime (tables, caches prefilled), build the lookup models and the repository's
   inference models, run one warm-up request through each; then ready (the ``ready`` log event
   carries the bound ports).
4. SIGTERM / SIGINT: not ready any more, stop accepting connections, let in-flight requests
   finish, run what the batchers hold, close the runtimes; all of it within
   ``shutdown_timeout_s`` (plus at most ``CLOSE_RESERVE_S`` when that is shorter): requests
   still running at the deadline, stalled clients included, are cancelled.

A worker process of ``--workers`` (workers.py) makes step 3 before step 2: it listens once it
can answer, so that a restarted worker takes no connection it would answer 503.

The event loop is uvloop's when it is installed (event_loop.py).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal

from ..runtime.errors import InvalidInputError
from .core import ServeOptions, ServerCore
from .event_loop import pin_event_loop, run
from .host_memory import map_large_blocks
from .logs import event

log = logging.getLogger("hps_cli.serve")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_options(options: ServeOptions):
    """The start-up checks made before any port is bound, with the checks validate-config runs
    (one code path: runtime/preflight.py). Sets ``options.checked``, which the runtimes start
    from instead of checking again, and returns the checked config (None without --config).
    A worker of ``--workers`` checks the config as it serves it: RocksDB read-only
    (worker_sharing.py)."""
    from ..runtime.preflight import preflight

    config = None
    if options.config is not None:
        source = options.config
        if options.persistent_read_only:
            from .worker_sharing import read_only_persistent

            source = read_only_persistent(options.config)
        options.checked = preflight(source, allow_non_finite=options.allow_non_finite)
        config = options.checked.checked_config()
    if options.custom_objects:
        from ..common.custom_objects import resolve

        resolve(list(options.custom_objects))  # a missing module fails before binding too
    if options.allow_shared_memory and not is_loopback(options.host):
        raise InvalidInputError(
            "shared memory is for clients on the same host: it needs a "
            f"loopback --host, not {options.host}",
            location="--allow-shared-memory",
        )
    return config


def serve(options: ServeOptions) -> None:
    """Run the server until SIGTERM/SIGINT (blocking). Start-up errors are raised."""
    check_options(options)  # fail before binding anything
    map_large_blocks()  # request bodies go back to the system when freed (host_memory.py)
    run(_main(options))


CLOSE_RESERVE_S = 1.0  # of the shutdown timeout, kept for cancelling and closing


async def _bind_http(
    app, host: str, port: int, header_timeout_s: float, arrivals=None, reuse_port: bool = False
):
    from aiohttp import web

    from .http_protocol import GuardedRunner

    # Requests still running when SIGTERM's drain ends are cancelled at once (the drain waited).
    runner = GuardedRunner(
        app,
        header_timeout_s=header_timeout_s,
        arrivals=arrivals,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=0.1,
        auto_decompress=False,  # http_body.py inflates within the limits
        lingering_time=1.0,  # a refused body is drained for at most 1 s (the client sees the 413)
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True, reuse_port=reuse_port or None)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise InvalidInputError(
            f"cannot listen on {host}:{port}: {exc.strerror}",
            location="--http-port",
            hint="choose another port or host",
        ) from None
    bound = runner.addresses[0][1] if runner.addresses else port
    return runner, bound


async def _main(options: ServeOptions) -> None:
    from .grpc_server import build_server
    from .http_app import build_app

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if not is_loopback(options.host):
        event(
            log,
            "non_loopback",
            logging.WARNING,
            host=options.host,
            message="serving on a non-loopback address: reachable from other machines",
        )
    core = ServerCore(options)
    runner = grpc_server = None
    try:
        # A worker process (workers.py) listens once it can answer: a restarted one must not
        # take connections from the ready ones only to answer 503 while it loads.
        late = options.workers > 1
        if late and not await _load(core, stop):
            await _shutdown(core, None, None, options.shutdown_timeout_s)
            event(log, "stopped")
            return
        runner, http_port = await _bind_http(
            build_app(core),
            options.host,
            options.http_port,
            options.header_timeout_s,
            core.arrivals,
            options.reuse_port,
        )
        grpc_server = build_server(core)
        try:
            grpc_port = grpc_server.add_insecure_port(
                f"{_grpc_host(options.host)}:{options.grpc_port}"
            )
        except RuntimeError as exc:
            raise InvalidInputError(
                f"cannot listen on {options.host}:{options.grpc_port}: {exc}",
                location="--grpc-port",
                hint="choose another port or host",
            ) from None
        if grpc_port == 0:
            raise InvalidInputError(
                f"cannot listen on {options.host}:{options.grpc_port}",
                location="--grpc-port",
                hint="choose another port or host",
            )
        await grpc_server.start()
        metrics_port = core.metrics.start(options.host, options.metrics_port)
        if options.pin_event_loop:  # after the metrics thread started: it stays free
            cpu = pin_event_loop(options.loop_cpu_slot)
            if cpu is not None:
                event(log, "event_loop_pinned", cpu=cpu)
            else:  # one CPU allowed, no gRPC poller thread found, or the system refused
                event(log, "event_loop_not_pinned")
        event(
            log,
            "listening",
            host=options.host,
            http_port=http_port,
            grpc_port=grpc_port,
            metrics_port=metrics_port,
            admin=options.admin_token is not None,
        )
        if late or await _load(core, stop):
            event(
                log,
                "ready",
                host=options.host,
                http_port=http_port,
                grpc_port=grpc_port,
                metrics_port=metrics_port,
                models=sorted(core.entries),
            )
            await stop.wait()
        event(log, "draining", inflight=core._inflight)
        await _shutdown(core, runner, grpc_server, options.shutdown_timeout_s)
        runner = grpc_server = None
        event(log, "stopped")
    finally:
        if runner is not None or grpc_server is not None:
            await _shutdown(core, runner, grpc_server, 1.0)


async def _load(core: ServerCore, stop: asyncio.Event) -> bool:
    """Load the models; False when SIGTERM came first (the load stops at its next chunk and
    removes its work). A start-up error is raised."""
    loop = asyncio.get_running_loop()
    loading = loop.create_task(core.load())
    waiter = loop.create_task(stop.wait())
    await asyncio.wait({loading, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if loading.done():
        waiter.cancel()
        loading.result()
        return True
    event(log, "stopped_while_loading")
    core.cancel_loading()  # the load stops at its next chunk and removes its work
    loading.cancel()
    return False


async def _shutdown(core: ServerCore, runner, grpc_server, timeout: float) -> None:
    """Stop listening, let in-flight requests finish until the deadline, then cancel what is
    left and close everything."""
    loop = asyncio.get_running_loop()
    drain_s = max(0.0, timeout - CLOSE_RESERVE_S)
    if runner is not None:
        for site in list(runner.sites):
            await site.stop()  # no new connections; open ones finish their requests
    grpc_stop = None
    if grpc_server is not None:
        grpc_stop = asyncio.ensure_future(grpc_server.stop(drain_s))  # then cancels the RPCs
    started = loop.time()
    drained = await core.drain(drain_s)
    if not drained:
        event(log, "drain_timeout", logging.WARNING, inflight=core._inflight)
    if runner is not None:
        await runner.cleanup()  # cancels HTTP requests still running (stalled bodies included)
    if grpc_stop is not None:
        await grpc_stop
    left = max(0.1, drain_s + CLOSE_RESERVE_S - (loop.time() - started))
    try:
        await asyncio.wait_for(core.close(), left)
    except asyncio.TimeoutError:
        event(log, "close_timeout", logging.WARNING)
    core.metrics.stop()


def _grpc_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
