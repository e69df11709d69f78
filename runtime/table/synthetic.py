"""Synthetic tables of random vectors, for demos, tests and benchmarks."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from .writer import TableSummary, TableWriter

_CHUNK_ROWS_BYTES = 16 << 20


def synthetic_vectors(keys: np.ndarray, dim: int, seed: int = 0) -> np.ndarray:
    """Deterministic vectors of given keys: the same key always gets the same vector.

    Tests use it as the oracle of what any tier must return for a key.
    """
    keys = np.asarray(keys, dtype=np.int64).view(np.uint64)
    cols = np.arange(dim, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = (
            keys[:, None] * np.uint64(0x9E3779B97F4A7C15)
            + cols[None, :] * np.uint64(0xBF58476D1CE4E5B9)
            + np.uint64(seed) * np.uint64(0x94D049BB133111EB)
        )
        x ^= x >> np.uint64(31)
        x *= np.uint64(0xD6E8FEB86659FD93)
        x ^= x >> np.uint64(32)
    return (x >> np.uint64(40)).astype(np.float32) / np.float32(1 << 24) - np.float32(0.5)


def write_synthetic_table(
    dest: Path | str,
    num_keys: int,
    dim: int,
    *,
    first_key: int = 0,
    shuffle: bool = False,
    with_meta: bool = False,
    seed: int = 0,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
    **writer_options,
) -> TableSummary:
    """Write keys ``first_key .. first_key + num_keys - 1`` with ``synthetic_vectors``.

    With ``with_meta``, ``meta`` holds Zipf(1.05)-like counts decreasing in file order (hot rows
    first, as HPS's prefill expects).
    """
    keys = np.arange(first_key, first_key + num_keys, dtype=np.int64)
    if shuffle:
        np.random.default_rng(seed).shuffle(keys)
    rows = max(1, _CHUNK_ROWS_BYTES // (8 + 4 * dim))
    writer = TableWriter(
        dest,
        dim,
        overwrite=overwrite,
        with_meta=with_meta,
        expected_rows=num_keys,
        source={"generator": "synthetic", "seed": seed, "first_key": first_key, "shuffle": shuffle},
        **writer_options,
    )
    try:
        for start in range(0, num_keys, rows):
            chunk = keys[start : start + rows]
            meta = None
            if with_meta:
                ranks = np.arange(start + 1, start + 1 + chunk.size, dtype=np.float64)
                meta = (1e9 / ranks**1.05).astype(np.int64) + 1
            writer.append(chunk, synthetic_vectors(chunk, dim, seed), meta)
            if progress:
                progress(chunk.size * (8 + 4 * dim))
    except BaseException:
        writer.abort()
        raise
    return writer.commit()
