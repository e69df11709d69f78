"""Atomic outputs: build beside the target under a hidden temporary name, then swap it in.

A crash or an error leaves the destination as it was (absent, or the old version) or as the new
version, never a half-written table, database or model, and nothing beside it:

- The temporary name is ``.<name>.hps-tmp-<pid>-<start>-<random>``: the owner's pid and start
  time (owners.py). On an error, SIGINT or SIGTERM the owner removes it; after a ``kill -9`` the
  next run that writes beside the same destination removes it (``sweep_stale``), because its
  owner is dead. A live owner's temporary output is never touched.
- A folder replaces an existing folder in one step, ``renameat2(RENAME_EXCHANGE)``; where the
  file system cannot exchange, the old folder is first renamed aside
  (``.<name>.hps-old-<pid>-<start>-<random>``) and a sweep puts it back if its owner died
  before the new folder was in place.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .crash_points import crash_point
from .errors import OutputExistsError
from .owners import owner_alive, owner_token

TMP_MARK = ".hps-tmp-"
OLD_MARK = ".hps-old-"
# what follows ".<name>": the kind, the owner's pid, its start time (absent in names of older
# versions) and a random part
_TEMP_TAIL = re.compile(r"^\.hps-(tmp|old)-(\d+)-(?:(\d+)-)?[0-9a-f]{8}$")


def temp_sibling(dest: Path, mark: str = TMP_MARK) -> Path:
    """A fresh temporary name beside ``dest``, owned by this process."""
    return dest.parent / f".{dest.name}{mark}{owner_token()}-{uuid.uuid4().hex[:8]}"


def sweep_stale(dest: Path | str) -> list[Path]:
    """Remove the temporary outputs beside ``dest`` whose owner process is dead; put back an
    old version that a dead owner had renamed aside when ``dest`` is missing. Returns what was
    removed or restored."""
    dest = Path(dest)
    prefix = f".{dest.name}"
    try:
        entries = [e.name for e in os.scandir(dest.parent) if e.name.startswith(prefix)]
    except OSError:
        return []
    swept = []
    for name in entries:
        match = _TEMP_TAIL.match(name[len(prefix) :])
        if match is None:
            continue
        kind, pid, start = match.group(1), int(match.group(2)), match.group(3)
        if owner_alive(pid, int(start) if start else None):
            continue
        path = dest.parent / name
        try:
            if kind == "old" and not (dest.exists() or dest.is_symlink()):
                os.rename(path, dest)  # the new version never made it: the old one stays
            else:
                _remove(path)
        except OSError:
            continue  # another sweeper got there first, or it is not ours to remove
        swept.append(path)
    return swept


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


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
        sweep_stale(self.dest)
        self.path = temp_sibling(self.dest)
        self.path.mkdir()
        self.done = False

    def commit(self) -> Path:
        _fsync_dir(self.path)
        crash_point("atomic.built")
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
    sweep_stale(dest)
    tmp = temp_sibling(dest)
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
    """Move ``src`` to ``dest``, replacing what is there in one step where the file system
    allows it; the old version is removed last."""
    if dest.is_dir() and not dest.is_symlink():
        if _exchange(src, dest):  # src now holds the old version
            crash_point("atomic.swapped")
            shutil.rmtree(src, ignore_errors=True)
        else:
            old = temp_sibling(dest, OLD_MARK)
            os.rename(dest, old)
            try:
                os.rename(src, dest)
            except BaseException:
                os.rename(old, dest)
                raise
            crash_point("atomic.swapped")
            shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dest)
    _fsync_dir(dest.parent)


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_renameat2 = None


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    global _renameat2
    if _renameat2 is None:
        try:
            _renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
        except (AttributeError, OSError):
            _renameat2 = False
    if _renameat2 is False:
        return False
    rc = _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


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
