"""A readers-writer lock: many concurrent lookups, one exclusive update at a time.

Writer-preferring (a waiting writer blocks new readers), so a stream of lookups cannot starve an
update. Not reentrant: a thread must not take the read side twice while a writer may be waiting.

Every lookup takes the read side (the served lookups of ``hps serve``, thousands a second), so
both sides are plain context-manager objects made once per lock, whose ``__enter__`` and
``__exit__`` hold the mutex for a counter update: no generator per use, and a finished reader
wakes threads only when a writer waits.
"""

from __future__ import annotations

import threading


class _ReadSide:
    __slots__ = ("_lock",)

    def __init__(self, lock: "RWLock"):
        self._lock = lock

    def __enter__(self) -> None:
        lock = self._lock
        with lock._mutex:
            while lock._writer or lock._waiting_writers:
                lock._cond.wait()
            lock._readers += 1

    def __exit__(self, *exc: object) -> None:
        lock = self._lock
        with lock._mutex:
            lock._readers -= 1
            if not lock._readers and lock._waiting_writers:  # only writers wait for readers
                lock._cond.notify_all()


class _WriteSide:
    __slots__ = ("_lock",)

    def __init__(self, lock: "RWLock"):
        self._lock = lock

    def __enter__(self) -> None:
        self._lock._acquire_write()

    def __exit__(self, *exc: object) -> None:
        self._lock._release_write()


class RWLock:
    """``with lock.read(): ...`` for shared access, ``with lock.write(): ...`` for exclusive."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._cond = threading.Condition(self._mutex)
        self._readers = 0
        self._writer = False
        self._waiting_writers = 0
        self._read_side = _ReadSide(self)
        self._write_side = _WriteSide(self)

    def read(self) -> _ReadSide:
        return self._read_side

    def write(self) -> _WriteSide:
        return self._write_side

    def _acquire_write(self) -> None:
        with self._mutex:
            self._waiting_writers += 1
            try:
                while self._writer or self._readers:
                    self._cond.wait()
            except BaseException:  # e.g. KeyboardInterrupt: readers held back for us go on
                self._waiting_writers -= 1
                self._cond.notify_all()
                raise
            self._waiting_writers -= 1
            self._writer = True

    def _release_write(self) -> None:
        with self._mutex:
            self._writer = False
            self._cond.notify_all()
