"""Atomic outputs: build beside the target under a hidden temporary name, then rename.

A crash or an error leaves the destination as it was (absent, or the old version), and never a
half-written table, database or model. Hidden leftovers of a killed process are named
``.<name>.hps-tmp-*`` and are safe to delete.
"""

from __future__ import annotations

import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import OutputExistsError

TMP_MARK = ".hps-tmp-"


def _sibling(dest: Path, tag: str) -> Path:
    return dest.parent / f".{dest.name}{tag}{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _make_parents(path: Path) -> list[Path]:
    """Create missing parent folders; return those created (deepest last)."""
    created: list[Path] = []
    for parent in reversed(path.parents):
        if not parent.exists():
            parent.mkdir()
            created.append(parent)
    return created


def _remove_empty(created: list[Path]) -> None:
    for folder in reversed(created):
        try:
            folder.rmdir()
        except OSError:
            break


def check_destination(dest: Path | str, overwrite: bool) -> Path:
    """Raise OutputExistsError when ``dest`` exists and ``overwrite`` is false."""
    dest = Path(dest)
    if (dest.exists() or dest.is_symlink()) and not overwrite:
        raise OutputExistsError(
            "the destination already exists",
            location=str(dest),
            hint="pass --overwrite to replace it, or choose another path",
        )
    return dest


class AtomicDirectory:
    """A temporary folder beside ``dest`` that replaces it on ``commit`` (``abort`` removes it)."""

    def __init__(self, dest: Path | str, *, overwrite: bool = False):
        self.dest = check_destination(dest, overwrite)
        self._created = _make_parents(self.dest)
        self.path = _sibling(self.dest, TMP_MARK)
        self.path.mkdir()
        self.done = False

    def commit(self) -> Path:
        _fsync_dir(self.path)
        replace_path(self.path, self.dest)
        self.done = True
        return self.dest

    def abort(self) -> None:
        if not self.done:
            shutil.rmtree(self.path, ignore_errors=True)
            _remove_empty(self._created)
            self.done = True


@contextmanager
def atomic_file(dest: Path | str, *, overwrite: bool = False, mode: str = "wb") -> Iterator:
    """Yield an open temporary file that becomes ``dest`` when the block ends without error."""
    dest = check_destination(dest, overwrite)
    created = _make_parents(dest)
    tmp = _sibling(dest, TMP_MARK)
    try:
        with open(tmp, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        replace_path(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        _remove_empty(created)
        raise


def replace_path(src: Path, dest: Path) -> None:
    """Move ``src`` to ``dest``, replacing what is there; the old version is removed last."""
    if dest.is_dir() and not dest.is_symlink():
        old = _sibling(dest, ".hps-old-")
        os.rename(dest, old)
        try:
            os.rename(src, dest)
        except BaseException:
            os.rename(old, dest)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dest)
    _fsync_dir(dest.parent)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
