"""Shared-memory segments for tests: a unique name per segment, removed when the test ends."""

from __future__ import annotations

import itertools
import os
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
