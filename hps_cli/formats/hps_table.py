"""HPS tables as input: one table folder, or a folder of table folders.

Re-verified on the way (the layout up front; sentinel keys, shapes and statistics by the
writer), re-chunked, optionally deduplicated and reordered hot-first by ``meta``.
"""

from __future__ import annotations

from pathlib import Path

from ..runtime.errors import InvalidInputError
from ..runtime.table.file_layout import (
    KEY_FILE,
    META_FILE,
    SIDECAR_FILE,
    VECTOR_FILE,
    inspect_layout,
)
from ..runtime.table.sidecar import current_sidecar
from .base import RawArray, RawRowsTable, SkippedFile
from .options import OpenOptions

FORMAT = "hps"


class HpsTable(RawRowsTable):
    format = FORMAT


def is_table(path: Path) -> bool:
    return path.is_dir() and (path / KEY_FILE).exists() and (path / VECTOR_FILE).exists()


def looks_like(path: Path) -> bool:
    return is_table(path) or (path.is_dir() and any(is_table(p) for p in path.iterdir()))


def open_table(path: Path, dim: int | None = None) -> HpsTable:
    sidecar = current_sidecar(path)
    layout = inspect_layout(path, dim, sidecar_dim=sidecar.dim if sidecar else None)
    if not layout.ok:
        first = layout.defects[0]
        raise InvalidInputError(
            first.message,
            location=first.location,
            hint=f"run 'hps table verify {path}' for every defect",
        )
    meta = (
        RawArray(path / META_FILE, 0, "<i8", layout.num_keys)
        if layout.meta_bytes is not None
        else None
    )
    table = HpsTable(
        path.name,
        str(path),
        RawArray(path / KEY_FILE, 0, "<i8", layout.num_keys),
        RawArray(path / VECTOR_FILE, 0, "<f4", layout.num_keys, layout.dim),
        meta,
        details={"sidecar": "current" if sidecar else "absent or stale"},
    )
    if sidecar is not None:
        table.checksum = sidecar.checksum()
    return table


def open_tables(path: Path, options: OpenOptions) -> tuple[list[HpsTable], list[SkippedFile]]:
    if is_table(path):
        skipped = [
            SkippedFile(str(p), "not a table file")
            for p in sorted(path.iterdir())
            if p.name not in (KEY_FILE, VECTOR_FILE, META_FILE, SIDECAR_FILE)
        ]
        return [open_table(path, options.dim)], skipped
    tables, skipped = [], []
    for child in sorted(path.iterdir()):
        if is_table(child):
            tables.append(open_table(child, options.dim))
        else:
            skipped.append(SkippedFile(str(child), "not an HPS table folder"))
    return tables, skipped


def sidecar_checksum(path: Path, dim: int) -> str:
    """``Sidecar.checksum()`` of a table whose sidecar is missing or stale, by reading its files
    (the same string a fresh ``table.json`` would give)."""
    from ..runtime.checksum import file_crc32
    from ..runtime.table.sidecar import FileRecord, Sidecar

    records = {}
    for name in (KEY_FILE, VECTOR_FILE, META_FILE):
        file = path / name
        if not file.exists():
            continue
        crc, size = file_crc32(file)
        records[name] = FileRecord(size, f"{crc:08x}")
    return Sidecar(dim=dim, num_keys=records[KEY_FILE].bytes // 8, files=records).checksum()
