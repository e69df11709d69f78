"""The one policy on NaN and Inf in embedding vectors: refused by default, everywhere.

A vector holding NaN or Inf poisons every model that looks it up, and JSON cannot carry it. So
every writer of vectors (``hps convert``, ``hps dissect``, the table writer, ``HPS.insert``
and the server's admin insert) and every reader that serves them (start-up, validate-config)
refuses them, naming the first offending row and key; ``allow_non_finite`` (the CLI's
``--allow-non-finite``) lets them through where a user needs that.
"""

from __future__ import annotations

import numpy as np

from ..errors import InvalidInputError

HINT = (
    "fix the source data (a value beyond ±3.4e38 becomes Inf in float32), or pass "
    "--allow-non-finite to keep such vectors"
)


def non_finite_rows(vectors: np.ndarray) -> np.ndarray:
    """Row numbers of the rows of a 2-D float array that hold NaN or Inf."""
    finite = np.isfinite(vectors)
    if finite.all():
        return np.empty(0, dtype=np.int64)
    return np.flatnonzero(~finite.all(axis=1))


def check_finite(
    keys: np.ndarray | None,
    vectors: np.ndarray,
    location: str,
    *,
    first_row: int = 0,
) -> None:
    """Raise InvalidInputError when a vector holds NaN or Inf, naming the first such row (and
    its key when ``keys`` are given; ``first_row`` is the row number of ``vectors[0]``)."""
    vectors = np.asarray(vectors)
    if not np.issubdtype(vectors.dtype, np.floating) or vectors.ndim == 0:
        return
    rows = vectors.reshape(vectors.shape[0], -1) if vectors.ndim != 2 else vectors
    bad = non_finite_rows(rows)
    if not bad.size:
        return
    at = int(bad[0])
    key = ""
    if keys is not None and at < np.size(keys):
        key = f"key {int(np.asarray(keys).reshape(-1)[at])} "
    value = float(rows[at][~np.isfinite(rows[at])][0])
    value = "NaN" if value != value else ("Inf" if value > 0 else "-Inf")
    more = f" ({bad.size} rows in this batch)" if bad.size > 1 else ""
    raise InvalidInputError(
        f"the vector of {key}(row {first_row + at}) holds {value}{more}: NaN and Inf are refused",
        location=location,
        hint=HINT,
    )
