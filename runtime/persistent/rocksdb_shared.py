"""One open RocksDB database per folder and process, shared by the runtimes that name it.

RocksDB lets one opener hold a database folder. A process may run several ``HPS`` runtimes
over one ``persistent_db`` (``hps serve`` gives every lookup model a runtime of its own, so
that a model can be loaded, reloaded and unloaded alone): the first one opens the database,
later ones share that store, and the last one to release it closes it. The first opener's
options (threads, block and row caches) are the store's; a later opener must agree on the key
width. Read-only and read-write openers get a store each (RocksDB lets readers beside a
writer). A runtime that replaces a family another one serves leaves the other reading the
version it loaded (rocksdb_tier.py: the table is pinned to a snapshot).
"""

from __future__ import annotations

import threading
from pathlib import Path

from ..errors import ConfigError
from .rocksdb_tier import RocksDbStore

_LOCK = threading.Lock()
_OPEN: dict[tuple[Path, bool], list] = {}  # (resolved folder, read_only) -> [store, users]


def open_rocksdb(path: Path | str, *, read_only: bool, key_width: int, **options) -> RocksDbStore:
    """The process's store of the database at ``path``: opened now, or shared with the
    runtimes that opened it before (``options`` are ``RocksDbStore``'s, used on opening)."""
    key = (Path(path).resolve(), bool(read_only))
    with _LOCK:
        held = _OPEN.get(key)
        if held is None:
            store = RocksDbStore(path, read_only=read_only, key_width=key_width, **options)
            _OPEN[key] = [store, 1]
            return store
        store = held[0]
        if store.key_width != key_width:
            raise ConfigError(
                f"the RocksDB database is open in this process with {store.key_width}-bit keys",
                location=str(path),
                hint="the configs of one process that share a database must agree on "
                "supportlonglong",
            )
        held[1] += 1
        return store


def release_rocksdb(store: RocksDbStore) -> None:
    """Give back a store from ``open_rocksdb``; the last user closes it (a store that did not
    come from it is closed at once)."""
    with _LOCK:
        for key, held in _OPEN.items():
            if held[0] is store:
                held[1] -= 1
                if held[1] > 0:
                    return
                del _OPEN[key]
                break
    store.close()
