"""Threads pinned to one CPU, and the threads they start set free again.

``hps serve`` pins its event loop's thread (and gRPC's poller thread) to one CPU
(``hps_cli/serve/event_loop.py``). A thread inherits the CPUs of the thread that starts it, so
a thread that the pinned loop starts later (a worker of a thread pool, a background thread
started on the first lookup that needs it) would share the loop's one CPU; such threads call
``free_this_thread`` first, which gives them back every CPU the process had before the pinning.
Linux only (``os.sched_setaffinity``); elsewhere nothing is pinned and nothing needs freeing.
"""

from __future__ import annotations

import os

_FREE_CPUS: set[int] | None = None  # the CPUs allowed before pin_threads pinned


def allowed_cpus() -> list[int]:
    """The CPUs this process may run on (empty where the system does not say)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return []


def pin_threads(cpu: int, threads: list[int]) -> bool:
    """Pin the threads (native ids of this process) to ``cpu``; False when the system refused,
    with every one of them free again."""
    global _FREE_CPUS
    if _FREE_CPUS is None:
        _FREE_CPUS = set(allowed_cpus())
    try:
        for thread in threads:
            os.sched_setaffinity(thread, {cpu})
    except OSError:
        for thread in threads:
            try:
                os.sched_setaffinity(thread, _FREE_CPUS)
            except OSError:
                pass
        return False
    return True


def free_this_thread() -> None:
    """Let the calling thread run on every CPU the process had before ``pin_threads``
    (nothing to do when nothing was pinned)."""
    if _FREE_CPUS:
        try:
            os.sched_setaffinity(0, _FREE_CPUS)
        except OSError:
            pass


def current_cpu(thread: int) -> int:
    """The CPU a thread of this process last ran on (field 39 of its /proc stat line)."""
    with open(f"/proc/self/task/{thread}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[36])
