"""The hash maps' compiled probe (``hash_probe.c``) behind a NumPy-facing interface.

``hash_probe()`` is the probe, or None when ``HPS_NATIVE=0`` or it could not be compiled; the
callers then take their NumPy paths, which give the same answers bit for bit. Arrays passed
in must be C-contiguous and of the dtypes named (the callers' own arrays are); the C code
calls no Python API and ctypes releases the GIL around it.
"""

from __future__ import annotations

import ctypes

import numpy as np

from .loader import native_helper

RETRY = -2  # probe(): the key went a full lap without meeting an empty slot

_P = ctypes.c_void_p
_I = ctypes.c_int64


class HashProbe:
    """The functions of the compiled ``hash_probe.c``."""

    def __init__(self, library: ctypes.CDLL):
        self._mix64 = _bind(library.hps_mix64, [_P, _I, _P])
        self._locate = _bind(library.hps_locate, [_P, _I, _I, _I, _P, _P])
        self._probe = _bind(library.hps_probe, [_P, _I, _P, _P, _P, _I, _P, _P])
        self._find = _bind(library.hps_find, [_P, _I, _I, _P, _I, _P])
        self._get = _bind(library.hps_get, [_P, _I, _I, _P, _I, _P, _I, _P, _P, _P], _I)
        self._shm_read = _bind(library.hps_shm_read, [_P, _P, _P, _P, _P, _I] + [_P] * 5, _I)

    def mix64(self, keys: np.ndarray) -> np.ndarray:
        """``hashing.mix64`` of 1-D int64 ``keys``."""
        out = np.empty(keys.size, dtype=np.uint64)
        self._mix64(address(keys), keys.size, address(out))
        return out

    def locate(
        self, keys: np.ndarray, num_partitions: int, segment: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Partition and home slot of each key (``HashMapTable._partition_and_home``)."""
        part = np.empty(keys.size, dtype=np.int64)
        home = np.empty(keys.size, dtype=np.int64)
        self._locate(
            address(keys), keys.size, num_partitions, segment, address(part), address(home)
        )
        return part, home

    def probe(
        self, slots: np.ndarray, segment: int, keys: np.ndarray, home: np.ndarray, part: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(slot, row)`` of each key probing from ``home``: -1 when absent, ``RETRY`` after a
        full lap of its segment (row -1 unless found)."""
        found = np.empty(keys.size, dtype=np.int64)
        rows = np.full(keys.size, -1, dtype=np.int64)
        self._probe(
            address(slots),
            segment,
            address(keys),
            address(home),
            address(part),
            keys.size,
            address(found),
            address(rows),
        )
        return found, rows

    def find(
        self, slots: np.ndarray, num_partitions: int, segment: int, keys: np.ndarray
    ) -> np.ndarray:
        """Slot of each key, -1 when absent (``HashMapTable._find``)."""
        found = np.empty(keys.size, dtype=np.int64)
        self._find(
            address(slots),
            num_partitions,
            segment,
            address(keys),
            keys.size,
            address(found),
        )
        return found

    def get(
        self,
        slots: np.ndarray,
        num_partitions: int,
        segment: int,
        keys: np.ndarray,
        vectors: np.ndarray,
        out: np.ndarray,
        hit: np.ndarray,
        table_addresses: tuple[int, int] | None = None,
    ) -> np.ndarray:
        """Copy the vectors of the keys found into their rows of ``out`` (float32, ``(n, dim)``)
        and mark them in ``hit`` (bool); returns their rows, in batch order.
        ``table_addresses``: those of ``slots`` and ``vectors`` when the caller keeps them."""
        rows = np.empty(keys.size, dtype=np.int64)
        at_slots, at_vectors = table_addresses or (address(slots), address(vectors))
        count = self._get(
            at_slots,
            num_partitions,
            segment,
            address(keys),
            keys.size,
            at_vectors,
            vectors.shape[1],
            address(out),
            address(hit),
            address(rows),
        )
        return rows[:count]

    def shm_read(
        self,
        table: ShmTable,
        keys: np.ndarray,
        part: np.ndarray | None,
        home: np.ndarray | None,
        pending: np.ndarray | None,
        out: np.ndarray | None,
        hit: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, int] | None:
        """One lock-free read of the shared-memory map (``SharedHashMapTable._read_optimistic``)
        of the keys at ``pending`` (int64 positions into ``keys``, ``part``, ``home`` and the
        rows of ``out`` and ``hit``; None: every key, located here when ``part`` and ``home``
        are None).

        Returns ``(rows of the hits in batch order, positions to read again, keys whose probe
        ended on a slot)``, or None when the C code could not allocate its scratch row."""
        if pending is None:
            n = keys.size
        else:
            pending = np.ascontiguousarray(pending, dtype=np.int64)
            n = pending.size
        buffer = np.empty(2 * n + 3, dtype=np.int64)
        base = address(buffer)
        if self._shm_read(
            ctypes.addressof(table),
            address(keys),
            None if part is None else address(part),
            None if home is None else address(home),
            None if pending is None else address(pending),
            n,
            None if out is None else address(out),
            address(hit),
            base,
            base + 8 * n,
            base + 16 * n,
        ):
            return None
        hits, retries, ended = buffer[2 * n :].tolist()
        return buffer[:hits], buffer[n : n + retries], ended


class ShmTable(ctypes.Structure):
    """A shared-memory table as ``hps_shm_read`` reads it (``hps_shm_table`` in
    ``hash_probe.c``: the same fields in the same order)."""

    _fields_ = [
        ("slots", ctypes.c_void_p),  # the index: (key, row) int64 pairs
        ("segment", ctypes.c_int64),  # index slots per partition
        ("num_partitions", ctypes.c_int64),
        ("epochs", ctypes.c_void_p),  # partition 0's index epoch
        ("epoch_stride", ctypes.c_int64),  # int64 words from a partition's epoch to the next's
        ("words", ctypes.c_void_p),  # the rows: stamp, key, vector
        ("half", ctypes.c_int64),  # int64 words per row
        ("total_rows", ctypes.c_int64),
        ("dim", ctypes.c_int64),
    ]


def address(array: np.ndarray) -> int:
    """Address of a C-contiguous array's data. ``ctypes.c_char.from_buffer`` takes a third of
    the time of ``array.ctypes.data`` (0.3 µs instead of 0.9 on the 2-core test VM: a lookup
    passes five arrays), but needs a writable, non-empty buffer."""
    if array.flags.writeable and array.size:
        return ctypes.addressof(ctypes.c_char.from_buffer(array))
    return array.ctypes.data


def _bind(function, argtypes, restype=None):
    function.argtypes = argtypes
    function.restype = restype
    return function


def hash_probe() -> HashProbe | None:
    """The compiled probe, compiled and loaded at the first call; None when ``HPS_NATIVE=0`` or
    when it cannot be compiled (the NumPy paths answer the same)."""
    return native_helper("hash_probe", HashProbe)
