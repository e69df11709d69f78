"""Writing one embedding variable as an HPS table, streaming it slice by slice.

Rows are read from the source (checkpoint data file or HDF5 dataset) in slices of about
``CHUNK_BYTES`` and appended to a ``TableWriter``; memory stays at a couple of slices whatever
the table size. Keys are the row indices, or the ids of an IntegerLookup vocabulary
(``KeyMap``), in which case rows no id maps to (OOV buckets) are left out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from ..runtime.table import TableSummary, TableWriter
from .inspect import TableChoice
from .plan import KeyMap
from .sources import Source

CHUNK_BYTES = 32 << 20


def as_float32(rows: np.ndarray, dtype: str) -> np.ndarray:
    """Rows of any float dtype as float32 (bfloat16 arrives as raw uint16)."""
    if dtype == "bfloat16":
        return (rows.astype(np.uint32) << 16).view(np.float32)
    return rows


def write_table(source: Source, choice: TableChoice, dest: Path, keys: KeyMap,
                progress: Callable[[int], None] | None = None) -> TableSummary:
    """Write ``choice.variable`` of ``source`` as the table folder ``dest`` (must not exist)."""
    var = choice.variable
    rows, dim = var.shape
    item = max(1, var.nbytes // max(1, rows * dim))
    per_chunk = max(1, CHUNK_BYTES // (dim * item))
    row_keys = has_key = None
    if keys.source != "row_index":
        row_keys = np.zeros(rows, dtype=np.int64)
        has_key = np.zeros(rows, dtype=bool)
        row_keys[keys.rows] = keys.keys
        has_key[keys.rows] = True
    described = {"model": str(source.path), "format": source.format, "variable": var.name,
                 "source_key": var.location, "keys": keys.source, "tool": "hps dissect"}
    writer = TableWriter(dest, dim, atomic=False, source=described,
                         count_duplicates=keys.source != "row_index")
    try:
        for start, chunk in source.iter_rows(var, per_chunk):
            stop = start + len(chunk)
            vectors = as_float32(chunk, var.dtype)
            if row_keys is None:
                writer.append(np.arange(start, stop, dtype=np.int64), vectors)
            else:
                select = has_key[start:stop]
                if select.all():
                    writer.append(row_keys[start:stop], vectors)
                elif select.any():
                    writer.append(row_keys[start:stop][select], vectors[select])
            if progress:
                progress(len(chunk) * dim * item)
        return writer.commit()
    except BaseException:
        writer.abort()
        raise
