"""The named shared-memory segment of ``multi_process_hash_map``: one file in ``/dev/shm`` that
every process of a host with the same ``shared_memory_name`` maps, holding the tables of every
config that names it (layout: shm_layout.py).

Opening is open-or-create: the first process sizes the file (``shared_memory_size``, sparse:
pages cost memory once a table region is reserved), writes the header and the directory;
later processes attach. Each table gets a page-aligned region reserved with
``posix_fallocate``, so a too-small ``/dev/shm`` is a ``CapacityError`` at start-up instead of a
SIGBUS later.

Who is attached is known from the kernel, not from a pid list: every attached process holds a
shared lock on the ``ATTACH`` byte (shm_locks.py) until it closes or dies. A process that gets
it exclusively is alone: only then may it rebuild a segment of another size or layout, and, with
``shared_memory_auto_remove``, the last one to close removes the file. A process that opened the
file while it was being removed notices (the path no longer names its file) and opens again.

After ``fork`` the child opens the file again (locks belong to an open file), so a server may
start its worker processes after building ``HPS``; the child's tables stay usable.
"""

from __future__ import annotations

import atexit
import errno
import json
import logging
import mmap
import os
import re
import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import CapacityError, ConfigError, OutputExistsError
from . import shm_layout as L
from .shm_locks import (
    ATTACH,
    DIRECTORY,
    ByteLock,
    load_byte,
    lock,
    partition_byte,
    require_ofd_locks,
    unlock,
)

log = logging.getLogger("hps_cli.runtime")

SHM_DIR = "/dev/shm"
MAGIC = b"HPSSHMv1"
VERSION = 1
POLICY_IDS = {"evict_random": 0, "evict_least_used": 1, "evict_oldest": 2}
NO_MARGIN = -1
# load_state of a directory entry
NEVER_LOADED, LOADING, COMPLETE = 0, 1, 2

HEADER = np.dtype(
    [("magic", "S8"), ("version", "<i8"), ("size", "<i8"), ("used", "<i8"), ("created", "<i8")]
)
_FIELDS = [
    ("state", "<i8"),  # 0: free, 1: in use (written last when a table is added)
    ("tag", f"S{L.TAG_BYTES}"),
    ("dim", "<i8"),
    ("partitions", "<i8"),
    ("room", "<i8"),
    ("policy", "<i8"),
    ("margin", "<i8"),
    ("resolve", "<f8"),
    ("offset", "<i8"),
    ("nbytes", "<i8"),
    ("load_state", "<i8"),
    ("record", f"S{L.RECORD_BYTES}"),
]
ENTRY = np.dtype(
    _FIELDS + [("pad", f"V{L.ENTRY_BYTES - np.dtype(_FIELDS).itemsize}")]  # type: ignore[arg-type]
)
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,200}")


@dataclass(frozen=True)
class TableSpec:
    """What a table needs from the segment: its tag and everything that fixes its layout and
    behaviour (processes that share a table must agree on all of it)."""

    tag: str
    dim: int
    partitions: int
    room: int  # entries per partition (shm_layout.partition_room)
    policy: str
    margin: int | None
    resolve: float

    @property
    def layout(self) -> L.TableLayout:
        return L.table_layout(self.dim, self.partitions, self.room)


def segment_path(name: str, directory: str | Path = SHM_DIR) -> Path:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(
            f"shared_memory_name '{name}' is not a file name",
            location="$.volatile_db.shared_memory_name",
            hint="use letters, digits, '.', '_' and '-' (no '/')",
        )
    return Path(directory) / name


_open_segments: weakref.WeakSet[SharedSegment] = weakref.WeakSet()


class SharedSegment:
    """One mapped segment file. ``close`` detaches (and removes the file when it was the last
    process and ``auto_remove`` is on); it also runs at interpreter exit.

    Args:
        name: ``shared_memory_name`` (a file in ``directory``).
        size: ``shared_memory_size`` in bytes; an existing segment keeps its size while other
            processes use it.
        auto_remove: ``shared_memory_auto_remove``.
        directory: where the file lives (``/dev/shm``: POSIX shared memory on Linux).
    """

    def __init__(
        self,
        name: str,
        size: int,
        *,
        auto_remove: bool = True,
        directory: str | Path = SHM_DIR,
    ):
        require_ofd_locks()
        self.path = segment_path(name, directory)
        self.auto_remove = bool(auto_remove)
        self.closed = False
        if int(size) < L.first_region() + L.PAGE:
            raise CapacityError(
                f"shared_memory_size {size} is below the segment's header and directory "
                f"({human_bytes(L.first_region())})",
                location="$.volatile_db.shared_memory_size",
                hint="give the segment room for its tables (docs/runtime.md: sizing)",
            )
        self._fd = self._open()
        self._locks: dict[int, list[ByteLock]] = {}
        self._load_locks: dict[int, ByteLock] = {}
        self._users: weakref.WeakSet = weakref.WeakSet()
        try:
            with self.directory_locked():
                self.size = self._prepare(int(size))
        except BaseException:
            os.close(self._fd)
            raise
        _open_segments.add(self)

    # ---------------------------------------------------------------- opening

    def _open(self) -> int:
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except PermissionError:
                raise OutputExistsError(
                    f"cannot open the shared-memory segment {self.path}: permission denied",
                    location=str(self.path),
                    hint="it belongs to another user: choose another shared_memory_name",
                ) from None
            except FileNotFoundError:
                raise ConfigError(
                    f"{self.path.parent} does not exist: no POSIX shared memory here",
                    location="$.volatile_db.type",
                    hint="multi_process_hash_map needs Linux's /dev/shm",
                ) from None
            lock(fd, ATTACH, exclusive=False)  # waits while a last process removes the file
            mine = os.fstat(fd)
            try:
                named = os.stat(self.path)
            except FileNotFoundError:
                named = None
            if named is not None and (named.st_ino, named.st_dev) == (mine.st_ino, mine.st_dev):
                return fd
            os.close(fd)  # removed (or replaced) between our open and our lock: again

    def _prepare(self, size: int) -> int:
        """Check or write the header (directory lock held); returns the segment's size."""
        length = os.fstat(self._fd).st_size
        header = self._read_header(length)
        valid = (
            header is not None
            and header["magic"] == MAGIC
            and header["version"] == VERSION
            and length >= header["size"]  # a shorter file would fault (SIGBUS) when read
        )
        if valid and header["size"] == size:
            return self._map(size)
        if valid and not self.alone():
            log.warning(
                "shared-memory segment %s is %s, not the configured %s: other processes use "
                "it, so it keeps its size",
                self.path,
                human_bytes(int(header["size"])),
                human_bytes(size),
            )
            return self._map(int(header["size"]))
        if length and not valid and not self.alone():
            raise ConfigError(
                f"{self.path} exists, is in use and is not an hps segment",
                location="$.volatile_db.shared_memory_name",
                hint="choose another shared_memory_name",
            )
        self._initialize(size)
        return size

    def _read_header(self, length: int):
        if length < L.SEGMENT_HEADER_BYTES:
            return None
        raw = os.pread(self._fd, HEADER.itemsize, 0)
        return np.frombuffer(raw, dtype=HEADER)[0]

    def _initialize(self, size: int) -> None:
        os.ftruncate(self._fd, 0)  # a stale segment's pages go
        os.ftruncate(self._fd, size)
        self._fallocate(0, L.first_region(), "the segment's header and directory")
        self._map(size)
        header = self._header
        header["version"] = VERSION
        header["size"] = size
        header["used"] = L.first_region()
        header["created"] = time.time_ns()
        header["magic"] = MAGIC  # last: a process that died before this left no valid header
        log.info("created shared-memory segment %s (%s)", self.path, human_bytes(size))

    def _map(self, size: int) -> int:
        self._mm = mmap.mmap(self._fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._header = np.frombuffer(self._mm, dtype=HEADER, count=1)[0:1].reshape(())
        self._directory = np.frombuffer(
            self._mm, dtype=ENTRY, count=L.MAX_TABLES, offset=L.SEGMENT_HEADER_BYTES
        )
        return size

    def _fallocate(self, offset: int, length: int, what: str) -> None:
        try:
            os.posix_fallocate(self._fd, offset, length)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.ENOMEM, errno.EFBIG):
                raise
            free = shm_free_bytes(self.path.parent)
            raise CapacityError(
                f"{self.path.parent} has no room for {what} ({human_bytes(length)}; "
                f"{human_bytes(free)} free)",
                location="$.volatile_db.shared_memory_size",
                hint="enlarge /dev/shm (docker run --shm-size=..., Kubernetes: an emptyDir "
                "with medium Memory) or free it",
            ) from None

    # ---------------------------------------------------------------- locks

    def fd(self) -> int:
        return self._fd

    @contextmanager
    def directory_locked(self) -> Iterator[None]:
        lock(self._fd, DIRECTORY, exclusive=True)
        try:
            yield
        finally:
            unlock(self._fd, DIRECTORY)

    def alone(self) -> bool:
        """True when no other open file (process) is attached. Keeps our shared attach lock."""
        if not lock(self._fd, ATTACH, exclusive=True, wait=False):
            return False
        lock(self._fd, ATTACH, exclusive=False)
        return True

    def partition_locks(self, entry: int, partitions: int) -> list[ByteLock]:
        if entry not in self._locks:
            self._locks[entry] = [
                ByteLock(self.fd, partition_byte(entry, p)) for p in range(partitions)
            ]
        return self._locks[entry]

    def load_lock(self, entry: int) -> ByteLock:
        if entry not in self._load_locks:
            self._load_locks[entry] = ByteLock(self.fd, load_byte(entry))
        return self._load_locks[entry]

    # ---------------------------------------------------------------- tables

    def reserve(self, specs: list[TableSpec]) -> list[int]:
        """The directory entry of each table, adding the tables not there yet (their regions
        reserved and initialized). A table that is there with another layout is a ConfigError
        while other processes are attached; alone, the segment is rebuilt for the new layout.
        Raises CapacityError when the new tables do not fit."""
        self._check_open()
        with self.directory_locked():
            found = [self._find(spec.tag) for spec in specs]
            clash = [
                (spec, i) for spec, i in zip(specs, found) if i >= 0 and not self._fits(spec, i)
            ]
            if clash:
                spec, i = clash[0]
                if self._locks or not self.alone():
                    raise ConfigError(
                        f"shared-memory segment {self.path} holds table {spec.tag} with "
                        f"{self._describe(i)}; this config asks for {_describe_spec(spec)}",
                        location="$.volatile_db.shared_memory_name",
                        hint="other processes use it: stop them, or choose another "
                        "shared_memory_name",
                    )
                log.info("rebuilding shared-memory segment %s for a new layout", self.path)
                self._release_mapping()
                self._initialize(self.size)
                found = [-1] * len(specs)
            self._check_room([s for s, i in zip(specs, found) if i < 0])
            return [i if i >= 0 else self._add(spec) for spec, i in zip(specs, found)]

    def entry(self, index: int) -> np.ndarray:
        """The directory entry (a writable 0-d structured view)."""
        return self._directory[index : index + 1].reshape(())

    def region(self, index: int) -> np.ndarray:
        """The table's bytes (uint8 view)."""
        self._check_open()
        e = self._directory[index]
        return np.frombuffer(
            self._mm, dtype=np.uint8, count=int(e["nbytes"]), offset=int(e["offset"])
        )

    def read_record(self, index: int) -> dict | None:
        e = self._directory[index]
        if int(e["load_state"]) != COMPLETE:
            return None
        try:
            return json.loads(bytes(e["record"]).decode())
        except ValueError:
            return None

    def mark_loading(self, index: int) -> None:
        self.entry(index)["load_state"] = LOADING

    def write_record(self, index: int, record: dict) -> None:
        raw = json.dumps(record, sort_keys=True).encode()
        if len(raw) > L.RECORD_BYTES:
            raise ValueError("load record too long")
        e = self.entry(index)
        e["record"] = raw
        e["load_state"] = COMPLETE

    def add_user(self, table) -> None:
        self._users.add(table)

    def free_bytes(self) -> int:
        return self.size - int(self._header["used"])

    def _find(self, tag: str) -> int:
        key = _tag_bytes(tag)
        used = np.flatnonzero(self._directory["state"] == 1)
        for i in used:
            if self._directory[i]["tag"] == key:
                return int(i)
        return -1

    def _fits(self, spec: TableSpec, index: int) -> bool:
        e = self._directory[index]
        return (
            int(e["dim"]) == spec.dim
            and int(e["partitions"]) == spec.partitions
            and int(e["room"]) >= spec.room
            and int(e["policy"]) == POLICY_IDS[spec.policy]
            and int(e["margin"]) == _margin_id(spec.margin)
            and float(e["resolve"]) == spec.resolve
        )

    def _describe(self, index: int) -> str:
        e = self._directory[index]
        margin = int(e["margin"])
        policy = {v: k for k, v in POLICY_IDS.items()}[int(e["policy"])]
        return (
            f"dim {int(e['dim'])}, {int(e['partitions'])} partitions of {int(e['room'])} "
            f"entries, {policy}, overflow_margin {margin if margin >= 0 else 'none'}, "
            f"resolution target {float(e['resolve'])}"
        )

    def _check_room(self, specs: list[TableSpec]) -> None:
        need = sum(spec.layout.nbytes for spec in specs)
        free = self.free_bytes()
        if need > free:
            used = int(self._header["used"])
            raise CapacityError(
                f"the tables need {human_bytes(need)} of shared memory; segment {self.path} "
                f"({human_bytes(self.size)}) has {human_bytes(free)} free",
                location="$.volatile_db.shared_memory_size",
                hint=f"set shared_memory_size to at least {used + need} (docs/runtime.md: "
                "sizing), or an overflow_margin",
            )

    def _add(self, spec: TableSpec) -> int:
        free = np.flatnonzero(self._directory["state"] == 0)
        if not free.size:
            raise CapacityError(
                f"segment {self.path} holds {L.MAX_TABLES} tables already",
                location="$.volatile_db.shared_memory_name",
                hint="use another shared_memory_name for some models",
            )
        index = int(free[0])
        layout = spec.layout
        offset = L.align(int(self._header["used"]), L.PAGE)
        self._fallocate(offset, layout.nbytes, f"table {spec.tag}")
        # Regions are handed out once and start as zeros (a fresh file), except the index
        # (below): only what is written takes memory, in this process's accounts too.
        region = np.frombuffer(self._mm, dtype=np.uint8, count=layout.nbytes, offset=offset)
        index_view = region[layout.index : layout.index + spec.partitions * layout.slots * 16]
        index_view.view(np.int64).reshape(-1, 2)[:, 1] = -1  # every slot empty
        del region, index_view
        e = self.entry(index)
        e["tag"] = _tag_bytes(spec.tag)
        e["dim"], e["partitions"], e["room"] = spec.dim, spec.partitions, spec.room
        e["policy"], e["margin"] = POLICY_IDS[spec.policy], _margin_id(spec.margin)
        e["resolve"] = spec.resolve
        e["offset"], e["nbytes"] = offset, layout.nbytes
        e["load_state"] = NEVER_LOADED
        e["state"] = 1  # last: the entry is complete
        self._header["used"] = offset + layout.nbytes
        return index

    # ---------------------------------------------------------------- closing

    def _check_open(self) -> None:
        if self.closed:
            raise ConfigError(
                f"the shared-memory segment {self.path} is closed",
                location="$.volatile_db",
                hint="the HPS that opened it was closed",
            )

    def _release_mapping(self) -> None:
        self._header = self._directory = None
        try:
            self._mm.close()
        except BufferError:
            pass  # a view is still alive somewhere; the mapping goes with it

    def close(self) -> None:
        """Detach; the last process removes the file when ``auto_remove`` is on."""
        if self.closed:
            return
        self.closed = True
        _open_segments.discard(self)
        for user in list(self._users):
            user.detach()
        try:
            if self.auto_remove:
                with self.directory_locked():
                    if self.alone() and self._still_named():
                        os.unlink(self.path)
                        log.info("removed shared-memory segment %s", self.path)
        finally:
            self._release_mapping()
            os.close(self._fd)  # drops every lock of this open file

    def _still_named(self) -> bool:
        try:
            named = os.stat(self.path)
        except FileNotFoundError:
            return False
        mine = os.fstat(self._fd)
        return (named.st_ino, named.st_dev) == (mine.st_ino, mine.st_dev)

    def _reopen_in_child(self) -> None:
        # Our open file (and its locks) is shared with the parent: open the same file anew.
        fd = os.open(f"/proc/self/fd/{self._fd}", os.O_RDWR | os.O_CLOEXEC)
        lock(fd, ATTACH, exclusive=False, wait=False)
        os.close(self._fd)
        self._fd = fd
        for locks in self._locks.values():
            for byte_lock in locks:
                byte_lock.reset_after_fork()
        for byte_lock in self._load_locks.values():
            byte_lock.reset_after_fork()

    def __enter__(self) -> SharedSegment:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def human_bytes(count: int) -> str:
    """``3 << 30`` → ``3.0 GiB`` (the runtime's messages; the CLI has its own formatter)."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} B"


def _tag_bytes(tag: str) -> bytes:
    raw = tag.encode()
    if len(raw) > L.TAG_BYTES:
        raise ConfigError(
            f"table tag '{tag}' is longer than {L.TAG_BYTES} bytes",
            location="$.models",
            hint="use shorter model and table names",
        )
    return raw


def _margin_id(margin: int | None) -> int:
    return NO_MARGIN if margin is None else int(margin)


def _describe_spec(spec: TableSpec) -> str:
    return (
        f"dim {spec.dim}, {spec.partitions} partitions of {spec.room} entries, {spec.policy}, "
        f"overflow_margin {spec.margin if spec.margin is not None else 'none'}, resolution "
        f"target {spec.resolve}"
    )


def shm_free_bytes(directory: str | Path = SHM_DIR) -> int:
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


def _close_all() -> None:
    for segment in list(_open_segments):
        try:
            segment.close()
        except Exception:  # noqa: BLE001 - exiting: nothing to report to
            pass


def _after_fork_in_child() -> None:
    for segment in list(_open_segments):
        segment._reopen_in_child()


atexit.register(_close_all)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
