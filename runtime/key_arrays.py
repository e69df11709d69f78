"""The common form of a key array: a 1-D, C-contiguous int64 NumPy array.

Every lookup passes its keys through several checks (the served model, ``HPS``, the CPU tiers,
the hash map); for keys already in this form each check is a few attribute reads instead of
NumPy calls. NumPy shares one dtype object per built-in type, so ``is`` suffices; an int64
dtype of another byte order is another object and takes the callers' full checks.
"""

from __future__ import annotations

import numpy as np

INT64 = np.dtype(np.int64)


def is_int64_vector(keys) -> bool:
    """Whether ``keys`` is a 1-D, C-contiguous int64 ``np.ndarray`` (not a subclass)."""
    return (
        type(keys) is np.ndarray
        and keys.dtype is INT64
        and keys.ndim == 1
        and keys.flags.c_contiguous
    )
