"""Which process owns a temporary output, and whether that process still runs.

Temporary outputs (atomic.py) carry their owner in their name: the pid and the process's start
time (clock ticks since boot, ``/proc/<pid>/stat`` field 22). The start time tells a dead owner
from a new process that reuses its pid. Where ``/proc`` is missing the start time is 0 and a
pid that exists counts as alive.
"""

from __future__ import annotations

import os


def process_start(pid: int) -> int:
    """The start time of process ``pid`` in clock ticks since boot; 0 when it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return 0
    # the command name (field 2) is in parentheses and may hold spaces: split after it
    fields = stat[stat.rfind(b")") + 2 :].split()
    try:
        return int(fields[19])  # field 22 of the whole line
    except (IndexError, ValueError):
        return 0


_OWN_START: int | None = None


def owner_token() -> str:
    """``<pid>-<start>`` of this process, for the names of its temporary outputs."""
    global _OWN_START
    if _OWN_START is None:
        _OWN_START = process_start(os.getpid())
    return f"{os.getpid()}-{_OWN_START}"


def owner_alive(pid: int, start: int | None) -> bool:
    """True while process ``pid`` runs and (when ``start`` is known) is the same process."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    if not start:
        return True
    now = process_start(pid)
    return now == 0 or now == start
