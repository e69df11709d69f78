"""The rounds of a GPU cache insert, compiled (``insert_rounds.c``): one pass over the batch
instead of one NumPy pass per round (reference.replace_rounds keeps the NumPy version, which
gives the same rounds)."""

from __future__ import annotations

import ctypes

import numpy as np

from .hash_probe import address
from .loader import native_helper

_P = ctypes.c_void_p
_I = ctypes.c_int64


class InsertRounds:
    def __init__(self, library: ctypes.CDLL):
        self._rounds = library.hps_replace_rounds
        self._rounds.argtypes = [_P, _P, _I, _P, _P, _P, _P]
        self._rounds.restype = _I

    def __call__(
        self, primary: np.ndarray, second: np.ndarray, num_sets: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(order, offsets) of reference.replace_rounds for int64 set indices below
        ``num_sets``."""
        primary = np.ascontiguousarray(primary, np.int64)
        second = np.ascontiguousarray(second, np.int64)
        n = primary.size
        last = np.empty(max(int(num_sets), 1), np.int32)
        rounds = np.empty(max(n, 1), np.int32)
        order = np.empty(max(n, 1), np.int64)
        offsets = np.empty(n + 2, np.int64)
        count = self._rounds(
            address(primary),
            address(second),
            n,
            address(last),
            address(rounds),
            address(order),
            address(offsets),
        )
        return order[:n], offsets[: count + 1]


def insert_rounds() -> InsertRounds | None:
    """The compiled rounds, loaded at the first call; None when ``HPS_NATIVE=0`` or when they
    cannot be compiled."""
    return native_helper("insert_rounds", InsertRounds)
