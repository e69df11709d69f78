"""Named points where a test may kill the process, to prove that every step is crash-safe.

``crash_point("rocksdb.ingested")`` does nothing unless the environment variable
``HPS_CRASH_AT`` names that point; then the process sends itself SIGKILL right there, as a
power cut or ``kill -9`` would (no cleanup, no ``finally``). ``HPS_CRASH_AT=<point>:TERM`` (or
``:INT``) sends SIGTERM (SIGINT) instead, which must unwind and clean up (exit 143, 130). The
tests run a command once per point and check that what is on disk is the old or the new
output, never a mix, and that the next run removes what the dead one left behind. The points
(grep ``crash_point(``):

- ``atomic.built``, ``atomic.swapped``: a folder output (atomic.py) before and after it
  replaces the destination;
- ``rocksdb.built``, ``rocksdb.marked``, ``rocksdb.created``, ``rocksdb.ingested``,
  ``rocksdb.recorded``: replacing a RocksDB column family (persistent/rocksdb_replace.py);
- ``shm.loaded``: a start-up load of a ``multi_process_hash_map`` table, every row in and its
  load record not yet written (startup_load.py).
"""

from __future__ import annotations

import os
import signal

_SIGNALS = {"KILL": signal.SIGKILL, "TERM": signal.SIGTERM, "INT": signal.SIGINT}


def crash_point(name: str) -> None:
    """Signal this process when ``HPS_CRASH_AT`` is ``name`` (or ``name:SIGNAL``)."""
    wanted = os.environ.get("HPS_CRASH_AT")
    if not wanted:
        return
    point, _, how = wanted.partition(":")
    if point == name:
        os.kill(os.getpid(), _SIGNALS.get(how or "KILL", signal.SIGKILL))
