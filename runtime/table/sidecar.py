"""``table.json``: what our tools know about a table (dim, counts, checksums, source).

HPS ignores the file. Our tools use it to skip rescans: when the sizes and modification times of
the data files still match what the sidecar recorded, its dim, statistics and checksums hold.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .file_layout import KEY_FILE, META_FILE, SIDECAR_FILE, VECTOR_FILE

FORMAT = "hps-table"
VERSION = 1


@dataclass(frozen=True)
class FileRecord:
    bytes: int
    crc32: str  # 8 hex digits of the CRC-32 (zlib's) over the whole file
    mtime_ns: int = 0


@dataclass(frozen=True)
class Sidecar:
    dim: int
    num_keys: int
    files: dict[str, FileRecord]
    key_dtype: str = "int64"
    vector_dtype: str = "float32"
    duplicates: int | None = None
    sentinel_keys: int | None = None
    non_finite: int | None = None
    source: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        doc = {"format": FORMAT, "version": VERSION}
        doc.update(asdict(self))
        return doc

    def checksum(self) -> str:
        """One string that changes whenever any data file's content changes."""
        parts = [f"{name}:{rec.bytes}:{rec.crc32}" for name, rec in sorted(self.files.items())]
        return f"dim={self.dim};" + ";".join(parts)


def read_sidecar(table: Path | str) -> Sidecar | None:
    """The table's sidecar, or None when absent, unreadable or of another format."""
    path = Path(table) / SIDECAR_FILE
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if doc.get("format") != FORMAT or doc.get("version") != VERSION:
            return None
        files = {name: FileRecord(**rec) for name, rec in doc["files"].items()}
        return Sidecar(
            dim=int(doc["dim"]),
            num_keys=int(doc["num_keys"]),
            files=files,
            key_dtype=doc.get("key_dtype", "int64"),
            vector_dtype=doc.get("vector_dtype", "float32"),
            duplicates=doc.get("duplicates"),
            sentinel_keys=doc.get("sentinel_keys"),
            non_finite=doc.get("non_finite"),
            source=doc.get("source") or {},
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def sidecar_is_current(table: Path | str, sidecar: Sidecar) -> bool:
    """True when every data file still has the size and mtime the sidecar recorded."""
    table = Path(table)
    names = {KEY_FILE, VECTOR_FILE} | ({META_FILE} if (table / META_FILE).exists() else set())
    if names != set(sidecar.files):
        return False
    for name in names:
        try:
            st = os.stat(table / name)
        except OSError:
            return False
        rec = sidecar.files[name]
        if st.st_size != rec.bytes or st.st_mtime_ns != rec.mtime_ns:
            return False
    return True


def write_sidecar(table: Path | str, sidecar: Sidecar) -> None:
    """Write ``table.json`` (used inside an atomic table build, so no temp file is needed)."""
    path = Path(table) / SIDECAR_FILE
    path.write_text(
        json.dumps(sidecar.to_json(), indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )


def current_sidecar(table: Path | str) -> Sidecar | None:
    """The sidecar when it exists and still describes the files, else None."""
    sidecar = read_sidecar(table)
    if sidecar is not None and sidecar_is_current(table, sidecar):
        return sidecar
    return None
