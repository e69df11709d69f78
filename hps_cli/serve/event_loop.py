"""The event loop of ``hps serve``: uvloop when it is installed (the ``serve`` extra brings it),
else asyncio's own. ``HPS_SERVE_UVLOOP=0`` forces asyncio's loop (to compare the two)."""

from __future__ import annotations

import asyncio
import os
import sys
import threading

from ..runtime.cpu_affinity import allowed_cpus, current_cpu, pin_threads


def uses_uvloop() -> bool:
    if os.environ.get("HPS_SERVE_UVLOOP", "1") == "0":
        return False
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def run(main):
    """``asyncio.run(main)`` on the chosen loop."""
    if uses_uvloop():
        import uvloop

        if sys.version_info >= (3, 11):
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                return runner.run(main)
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())  # Python 3.10
    return asyncio.run(main)


def pin_event_loop(slot: int | None = None) -> int | None:
    """Pin the calling thread (the event loop's) and gRPC's poller thread to one CPU; returns
    that CPU, or None where it is not done (fewer than 2 CPUs allowed, no gRPC poller thread
    running, or the system refused).

    grpc.aio's poller thread waits for gRPC's events outside the interpreter lock and hands
    each to the event loop under it, so every call passes between the two threads a few times.
    On two CPUs each hand-over wakes a thread on the other one and the lock moves across; on
    one CPU it does not. docs/benchmarks.md ("hps serve"): with both servers pinned so, the
    floor and hps answer more requests at concurrency 1 and 16, hps more so (it holds the lock
    longer per call). The threads the loop starts later free themselves
    (runtime/cpu_affinity.py).

    ``slot``: which of the allowed CPUs, as an index (worker i takes slot i, so that workers
    spread over the CPUs); None: the CPU the thread runs on now.
    """
    allowed = allowed_cpus()
    # grpc.aio names its poller's target _poll_wrapper (completion_queue.pyx.pxi).
    pollers = [t.native_id for t in threading.enumerate() if "_poll_wrapper" in t.name]
    if len(allowed) < 2 or not pollers or None in pollers:
        return None
    loop_thread = threading.get_native_id()
    try:
        cpu = allowed[slot % len(allowed)] if slot is not None else current_cpu(loop_thread)
    except (OSError, ValueError, IndexError):
        return None
    if cpu not in allowed or not pin_threads(cpu, [loop_thread, *pollers]):
        return None
    return cpu
