"""The event loop of ``hps serve``: uvloop when it is installed (the ``serve`` extra brings it),
else asyncio's own. ``HPS_SERVE_UVLOOP=0`` forces asyncio's loop (to compare the two)."""

from __future__ import annotations

import asyncio
import os
import sys


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
    that CPU, or None where it is not done (no ``sched_setaffinity``, fewer than 2 CPUs
    allowed, no gRPC poller thread running, or the system refused).

    grpc.aio's poller thread waits for gRPC's events outside the interpreter lock and hands
    each to the event loop under it, so every call passes between the two threads a few times.
    On two CPUs each hand-over wakes a thread on the other one and the lock moves across; on
    one CPU it does not. docs/benchmarks.md ("hps serve"): with both servers pinned so, the
    floor and hps answer more requests at concurrency 1 and 16, hps more so (it holds the lock
    longer per call). Other threads (the executors of big batches) stay where the OS puts them.

    ``slot``: which of the allowed CPUs, as an index (worker i takes slot i, so that workers
    spread over the CPUs); None: the CPU the thread runs on now.
    """
    if not hasattr(os, "sched_setaffinity"):
        return None
    import threading

    try:
        allowed = sorted(os.sched_getaffinity(0))
        # grpc.aio names its poller's target _poll_wrapper (completion_queue.pyx.pxi).
        pollers = [
            t.native_id for t in threading.enumerate() if "_poll_wrapper" in t.name and t.native_id
        ]
        if len(allowed) < 2 or not pollers:
            return None
        loop_thread = threading.get_native_id()
        cpu = allowed[slot % len(allowed)] if slot is not None else _current_cpu(loop_thread)
        if cpu not in allowed:
            return None
        global _FREE_CPUS
        _FREE_CPUS = set(allowed)
        for thread in (loop_thread, *pollers):
            os.sched_setaffinity(thread, {cpu})
    except (OSError, ValueError):
        return None
    return cpu


_FREE_CPUS: set[int] | None = None  # the CPUs allowed before pin_event_loop pinned


def free_this_thread() -> None:
    """Let the calling thread run on every CPU the process had before ``pin_event_loop``: the
    initializer of the server's thread pools, whose threads the pinned loop starts (a new thread
    inherits its starter's CPUs, and big batches must not share the loop's one CPU)."""
    if _FREE_CPUS is not None:
        try:
            os.sched_setaffinity(0, _FREE_CPUS)
        except OSError:
            pass


def _current_cpu(thread: int) -> int:
    """The CPU a thread of this process last ran on (field 39 of its /proc stat line)."""
    with open(f"/proc/self/task/{thread}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[36])
