"""Shared-memory segments for tests: a unique name per segment, removed when the test ends, and
another process (``Peer``) that opens the same segment through ``HPS``."""

from __future__ import annotations

import itertools
import json
import os
import select
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from hps_cli.runtime.volatile.shm_segment import SHM_DIR, SharedSegment

_names = itertools.count()


def segment_name(label: str = "seg") -> str:
    """A name no other test (or test run) uses at the same time."""
    return f"hps_test_{label}_{os.getpid()}_{next(_names)}"


@contextmanager
def shared_segment(size: int = 1 << 30, label: str = "seg") -> Iterator[SharedSegment]:
    """An open segment (sparse: only the regions of its tables take memory), removed after."""
    segment = SharedSegment(segment_name(label), size)
    try:
        yield segment
    finally:
        segment.close()
        remove_segment(segment.path.name)


def remove_segment(name: str) -> None:
    """Remove a segment file a test left behind (auto_remove off, or a killed process)."""
    Path(SHM_DIR, name).unlink(missing_ok=True)


class Peer:
    """``helpers/shm_peer.py`` in a subprocess: ``HPS(config)`` over the same segment as the
    test, answering JSON commands (``ask``)."""

    def __init__(self, config_path: Path, *, stall_load: bool = False, timeout: float = 120):
        args = [sys.executable, str(Path(__file__).with_name("shm_peer.py")), str(config_path)]
        if stall_load:
            args.append("--stall-load")
        self.timeout = timeout
        self.process = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        self.hello = self._answer()
        self.pid = self.process.pid

    def _answer(self) -> dict:
        ready, _, _ = select.select([self.process.stdout], [], [], self.timeout)
        line = self.process.stdout.readline() if ready else ""
        if not line:
            self.kill()
            raise RuntimeError(f"the peer process gave no answer (exit {self.process.poll()})")
        return json.loads(line)

    def ask(self, op: str, **arguments) -> dict:
        self.process.stdin.write(json.dumps({"op": op, **arguments}) + "\n")
        self.process.stdin.flush()
        return self._answer()

    def close(self) -> None:
        """Close its HPS (detaching from the segment) and let it exit."""
        self.ask("close")
        self.process.wait(self.timeout)

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind runs in it."""
        self.process.kill()
        self.process.wait(self.timeout)
