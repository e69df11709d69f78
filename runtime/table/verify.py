"""Verification of HPS tables: every defect HPS would trip over, and a few it never checks.

Structure (file sizes, dim) comes from file_layout.py. The scan then streams the keys (sentinel
keys, keys that do not fit 32 bits when the config uses uint32 keys, duplicates) and, on request,
the vectors (NaN/Inf), in bounded memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .duplicates import DuplicateCounter, DuplicateStats
from .file_layout import (
    EMPTY_KEY_INT64,
    EMPTY_KEY_UINT32,
    KEY_FILE,
    VECTOR_FILE,
    Defect,
    TableLayout,
    inspect_layout,
)
from .reader import DEFAULT_CHUNK_BYTES, TableReader
from .sidecar import current_sidecar

ProgressFn = Callable[[int], None]  # called with the number of bytes just processed

_MAX_EXAMPLES = 5


@dataclass(frozen=True)
class TableReport:
    """What is known about one table after ``table_info`` or ``verify_table``."""

    path: Path
    layout: TableLayout
    duplicates: DuplicateStats | None = None
    sentinel_keys: int | None = None
    sentinel_rows: tuple[int, ...] = ()
    non_finite: int | None = None
    non_finite_rows: tuple[int, ...] = ()
    defects: tuple[Defect, ...] = field(default=())
    from_sidecar: bool = False

    @property
    def ok(self) -> bool:
        return not self.defects

    @property
    def num_keys(self) -> int:
        return self.layout.num_keys

    @property
    def dim(self) -> int | None:
        return self.layout.dim

    def to_dict(self) -> dict:
        lay = self.layout
        dups = self.duplicates
        return {
            "path": str(self.path),
            "ok": self.ok,
            "num_keys": lay.num_keys,
            "dim": lay.dim,
            "bytes": {
                "key": lay.key_bytes,
                "emb_vector": lay.vector_bytes,
                "meta": lay.meta_bytes,
                "total": lay.total_bytes,
            },
            "has_meta": lay.meta_bytes is not None,
            "duplicates": None
            if dups is None
            else {
                "extra_rows": dups.extra_rows,
                "keys": dups.keys,
                "examples": list(dups.examples),
            },
            "sentinel_keys": self.sentinel_keys,
            "sentinel_rows": list(self.sentinel_rows),
            "non_finite": self.non_finite,
            "non_finite_rows": list(self.non_finite_rows),
            "from_sidecar": self.from_sidecar,
            "defects": [d.to_dict() for d in self.defects],
        }


def table_info(
    path: Path | str,
    dim: int | None = None,
    *,
    key_width: int = 64,
    progress: ProgressFn | None = None,
) -> TableReport:
    """Counts, dim, sizes, duplicates and sentinel keys; reuses a current ``table.json``."""
    return _examine(
        path, dim, key_width=key_width, scan_values=False, use_sidecar=True, progress=progress
    )


def verify_table(
    path: Path | str,
    dim: int | None = None,
    *,
    key_width: int = 64,
    scan_values: bool = False,
    use_sidecar: bool = False,
    progress: ProgressFn | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> TableReport:
    """Check a table and report every defect found (``report.ok`` is False if any).

    Args:
        path: the table folder.
        dim: the expected vector size (e.g. ``embedding_vecsize_per_table[t]``); None infers it.
        key_width: 64 for int64 keys (``supportlonglong: true``), 32 when HPS narrows keys to
            uint32 (``supportlonglong: false``): then keys must lie in [0, 2^32 - 1).
        scan_values: also scan every vector for NaN and Inf.
        use_sidecar: trust a current ``table.json`` instead of rescanning the keys.
    """
    return _examine(
        path,
        dim,
        key_width=key_width,
        scan_values=scan_values,
        use_sidecar=use_sidecar,
        progress=progress,
        chunk_bytes=chunk_bytes,
    )


def _examine(
    path: Path | str,
    dim: int | None,
    *,
    key_width: int,
    scan_values: bool,
    use_sidecar: bool,
    progress: ProgressFn | None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> TableReport:
    path = Path(path)
    sidecar = current_sidecar(path) if path.is_dir() else None
    layout = inspect_layout(path, dim, sidecar_dim=sidecar.dim if sidecar else None)
    if not layout.ok:
        return TableReport(path, layout, defects=layout.defects)

    if (
        use_sidecar
        and sidecar is not None
        and sidecar.duplicates is not None
        and sidecar.sentinel_keys is not None
        and key_width == 64
        and (not scan_values or sidecar.non_finite is not None)
    ):
        dups = DuplicateStats(extra_rows=sidecar.duplicates)
        defects = _stat_defects(
            path,
            dups,
            sidecar.sentinel_keys,
            (),
            sidecar.non_finite if scan_values else None,
            (),
            key_width,
            0,
        )
        return TableReport(
            path,
            layout,
            dups,
            sidecar.sentinel_keys,
            (),
            sidecar.non_finite if scan_values else None,
            (),
            tuple(defects),
            from_sidecar=True,
        )

    counter = DuplicateCounter()
    sentinel = EMPTY_KEY_INT64 if key_width == 64 else EMPTY_KEY_UINT32
    sentinel_count, sentinel_rows = 0, []
    out_of_range, range_rows = 0, []
    non_finite, nan_rows = (0 if scan_values else None), []
    reader = TableReader(path, layout.dim)
    try:
        for chunk in reader.chunks(reader.rows_per_chunk(chunk_bytes)):
            keys = chunk.keys
            hits = np.flatnonzero(keys == sentinel)
            if hits.size:
                sentinel_count += hits.size
                sentinel_rows.extend((hits[:_MAX_EXAMPLES] + chunk.start).tolist())
            if key_width == 32:
                bad = np.flatnonzero((keys < 0) | (keys > EMPTY_KEY_UINT32))
                if bad.size:
                    out_of_range += bad.size
                    range_rows.extend((bad[:_MAX_EXAMPLES] + chunk.start).tolist())
            counter.add(keys)
            done = keys.nbytes
            if scan_values:
                finite_rows = np.isfinite(chunk.vectors).all(axis=1)
                if not finite_rows.all():
                    bad_rows = np.flatnonzero(~finite_rows)
                    non_finite += bad_rows.size  # type: ignore[operator]
                    nan_rows.extend((bad_rows[:_MAX_EXAMPLES] + chunk.start).tolist())
                done += chunk.vectors.nbytes
            if progress:
                progress(done)
    finally:
        dups = counter.finish()
        reader.close()
    defects = _stat_defects(
        path,
        dups,
        sentinel_count,
        tuple(sentinel_rows[:_MAX_EXAMPLES]),
        non_finite,
        tuple(nan_rows[:_MAX_EXAMPLES]),
        key_width,
        out_of_range,
        tuple(range_rows[:_MAX_EXAMPLES]),
    )
    return TableReport(
        path,
        layout,
        dups,
        sentinel_count,
        tuple(sentinel_rows[:_MAX_EXAMPLES]),
        non_finite,
        tuple(nan_rows[:_MAX_EXAMPLES]),
        tuple(defects),
    )


def _stat_defects(
    path: Path,
    dups: DuplicateStats,
    sentinels: int,
    sentinel_rows: tuple,
    non_finite: int | None,
    nan_rows: tuple,
    key_width: int,
    out_of_range: int,
    range_rows: tuple = (),
) -> list[Defect]:
    defects: list[Defect] = []
    key_loc, vec_loc = str(path / KEY_FILE), str(path / VECTOR_FILE)
    if sentinels:
        value = EMPTY_KEY_INT64 if key_width == 64 else EMPTY_KEY_UINT32
        rows = f" at rows {', '.join(map(str, sentinel_rows))}" if sentinel_rows else ""
        defects.append(
            Defect(
                "sentinel_key",
                f"{sentinels} key(s) equal {value}, the GPU cache's empty-slot "
                f"marker, which can never be looked up{rows}",
                key_loc,
            )
        )
    if out_of_range:
        rows = f" (rows {', '.join(map(str, range_rows))})" if range_rows else ""
        defects.append(
            Defect(
                "key_range",
                f"{out_of_range} key(s) do not fit uint32 (supportlonglong is false, so "
                f"HPS truncates them and they collide){rows}",
                key_loc,
            )
        )
    if dups.extra_rows:
        shown = f"; e.g. {', '.join(map(str, dups.examples))}" if dups.examples else ""
        defects.append(
            Defect(
                "duplicate_keys",
                f"{dups.extra_rows} duplicate row(s) over {dups.keys or '?'} key(s) "
                f"(HPS keeps whichever it inserts last){shown}",
                key_loc,
            )
        )
    if non_finite:
        rows = f" at rows {', '.join(map(str, nan_rows))}" if nan_rows else ""
        defects.append(
            Defect("non_finite", f"{non_finite} vector(s) contain NaN or Inf{rows}", vec_loc)
        )
    return defects
