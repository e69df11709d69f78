"""Writing one embedding variable as an HPS table, streaming it slice by slice.

Rows are read from the source (checkpoint data file or HDF5 dataset) in slices of about
``CHUNK_BYTES`` and appended to a ``TableWriter``; memory stays at a couple of slices whatever
the table size. Keys are the row indices, or the ids of an IntegerLookup vocabulary
(``KeyMap``), in which case rows no id maps to (OOV buckets) are left out.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ..runtime.direct_io import whole_page_rows
from ..runtime.errors import InvalidInputError
from ..runtime.table import TableSummary, TableWriter
from ..runtime.table.finite import HINT as FINITE_HINT
from ..runtime.table.finite import non_finite_rows
from ..runtime.table.sidecar import read_sidecar, write_sidecar
from .inspect import TableChoice
from .plan import KeyMap
from .source_types import Source

CHUNK_BYTES = 32 << 20


def as_float32(rows: np.ndarray, dtype: str) -> np.ndarray:
    """Rows of any float dtype as float32 (bfloat16 arrives as raw uint16)."""
    if dtype == "bfloat16":
        return (rows.astype(np.uint32) << 16).view(np.float32)
    return rows


def prefetched(chunks: Iterator, depth: int = 1) -> Iterator:
    """Run ``chunks`` one step ahead in a thread, so reading overlaps the writer's work.

    ``pread``, CRC32, NumPy and file writes release the GIL, so on two cores reading the next
    slice and checksumming/writing this one proceed together. The producer must keep each item
    valid for ``depth + 1`` further steps (iter_rows with ``buffers >= depth + 2``).
    """
    items: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in chunks:
                while not stop.is_set():
                    try:
                        items.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            items.put(done)
        except BaseException as exc:  # handed to the consumer, raised there
            items.put(exc)

    worker = threading.Thread(target=produce, name="hps-dissect-read", daemon=True)
    worker.start()
    try:
        while True:
            item = items.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while worker.is_alive():
            try:
                items.get_nowait()
            except queue.Empty:
                pass
            worker.join(timeout=0.05)


def write_table(
    source: Source,
    choice: TableChoice,
    dest: Path,
    keys: KeyMap,
    progress: Callable[[int], None] | None = None,
    *,
    allow_non_finite: bool = False,
) -> TableSummary:
    """Write ``choice.variable`` of ``source`` as the table folder ``dest`` (must not exist).

    Reading, widening to float32 and the NaN/Inf scan run one slice ahead in a thread while
    the writer checksums and writes the previous slice; a row holding NaN or Inf fails the
    table (naming the variable, row and key) unless ``allow_non_finite``. Row-index keys are
    unique by construction, so they are not sorted to count duplicates: table.json records 0.
    """
    var = choice.variable
    rows, dim = var.shape
    item = max(1, var.nbytes // max(1, rows * dim))
    per_chunk = whole_page_rows(max(1, CHUNK_BYTES // (dim * item)))
    row_keys = has_key = None
    if keys.source != "row_index":
        row_keys = np.zeros(rows, dtype=np.int64)
        has_key = np.zeros(rows, dtype=bool)
        row_keys[keys.rows] = keys.keys
        has_key[keys.rows] = True
    described = {
        "model": str(source.path),
        "format": source.format,
        "variable": var.name,
        "source_key": var.location,
        "keys": keys.source,
        "tool": "hps dissect",
    }
    writer = TableWriter(
        dest,
        dim,
        atomic=False,
        source=described,
        scan_values=False,
        count_duplicates=row_keys is not None,
        expected_rows=rows if row_keys is None else int(np.count_nonzero(has_key)),
    )
    non_finite = 0

    def slices():
        for start, chunk in source.iter_rows(var, per_chunk, buffers=3):
            vectors = as_float32(chunk, var.dtype)
            if row_keys is not None:
                select = has_key[start : start + len(chunk)]
                vectors = vectors if select.all() else vectors[select]
            else:
                select = None
            bad = int(np.count_nonzero(~np.isfinite(vectors).all(axis=1))) if vectors.size else 0
            if bad and not allow_non_finite:
                rows = np.arange(start, start + len(chunk))
                rows = rows if select is None else rows[select]
                at = int(non_finite_rows(vectors)[0])
                key = rows[at] if row_keys is None else row_keys[rows[at]]
                raise InvalidInputError(
                    f"variable '{var.name}': the vector of key {int(key)} (row {int(rows[at])}) "
                    f"holds NaN or Inf ({bad} such row(s) in this slice): NaN and Inf are refused",
                    location=var.location,
                    hint=FINITE_HINT,
                )
            yield start, len(chunk), vectors, select, bad

    try:
        for start, count, vectors, select, bad in prefetched(slices()):
            stop = start + count
            non_finite += bad
            if row_keys is None:
                writer.append(np.arange(start, stop, dtype=np.int64), vectors)
            elif len(vectors):
                ids = row_keys[start:stop]
                writer.append(ids if select.all() else ids[select], vectors)
            if progress:
                progress(count * dim * item)
        summary = writer.commit()
    except BaseException:
        writer.abort()
        raise
    sidecar = read_sidecar(dest)
    if sidecar is not None:  # what the threads above established, without rescanning
        write_sidecar(
            dest,
            replace(
                sidecar,
                non_finite=non_finite,
                duplicates=0 if row_keys is None else sidecar.duplicates,
            ),
        )
    return summary
