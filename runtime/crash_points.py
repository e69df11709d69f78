"""Named points where a test may kill the process, to prove that every step is crash-safe.

``crash_point("rocksdb.ingested")`` does nothing unless the environment variable
``HPS_CRASH_AT`` names that point; then the process kills itself with SIGKILL right there, as a
power cut or ``kill -9`` would (no cleanup, no ``finally``). The tests run a command once per
point and check that what is on disk is the old or the new output, never a mix, and that the
next run removes what the dead one left behind. The points (grep ``crash_point(``):

- ``atomic.built``, ``atomic.swapped``: a folder output (atomic.py) before and after it
  replaces the destination;
- ``rocksdb.built``, ``rocksdb.marked``, ``rocksdb.created``, ``rocksdb.ingested``,
  ``rocksdb.recorded``: replacing a RocksDB column family (persistent/rocksdb_replace.py).
"""

from __future__ import annotations

import os
import signal


def crash_point(name: str) -> None:
    """SIGKILL this process when ``HPS_CRASH_AT`` is ``name``."""
    if os.environ.get("HPS_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
