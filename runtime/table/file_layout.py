"""The HPS table layout on disk, and the structural checks that need only file sizes.

A table is a folder holding ``key`` (raw little-endian int64, one per row), ``emb_vector`` (raw
little-endian float32, rows × dim, row-major) and optionally ``meta`` (int64 per key, e.g. access
counts). Our tools may add ``table.json`` (see sidecar.py), which HPS ignores.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

KEY_FILE = "key"
VECTOR_FILE = "emb_vector"
META_FILE = "meta"
SIDECAR_FILE = "table.json"

KEY_DTYPE = np.dtype("<i8")
VECTOR_DTYPE = np.dtype("<f4")
META_DTYPE = np.dtype("<i8")

# The GPU cache marks empty slots with the key type's maximum; such a key can never be cached.
EMPTY_KEY_INT64 = np.iinfo(np.int64).max
EMPTY_KEY_UINT32 = np.iinfo(np.uint32).max


@dataclass(frozen=True)
class Defect:
    """One problem found in a table. ``code`` is stable (scripts may match on it)."""

    code: str
    message: str
    location: str

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message, "location": self.location}


@dataclass(frozen=True)
class TableLayout:
    """File sizes of a table folder and what they imply; ``defects`` lists structural problems."""

    path: Path
    key_bytes: int
    vector_bytes: int
    meta_bytes: int | None
    num_keys: int
    dim: int | None
    defects: tuple[Defect, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not self.defects

    @property
    def total_bytes(self) -> int:
        return self.key_bytes + self.vector_bytes + (self.meta_bytes or 0)


def _size(path: Path, defects: list[Defect]) -> int | None:
    """The file's size; None when it is missing or unreadable (then a defect says why)."""
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        if path.is_symlink():
            defects.append(Defect("unreadable", "a broken symbolic link", str(path)))
        return None
    except OSError as exc:  # a symlink loop (ELOOP), a permission, an I/O error
        defects.append(Defect("unreadable", f"cannot read it: {exc.strerror}", str(path)))
        return None


def inspect_layout(
    path: Path | str, dim: int | None = None, *, sidecar_dim: int | None = None
) -> TableLayout:
    """Check a table folder's files by their sizes alone, collecting every structural defect.

    Args:
        path: the table folder.
        dim: the expected vector size (from a config or the user); None to infer it.
        sidecar_dim: the dim recorded in ``table.json``, used when ``dim`` is None.
    """
    path = Path(path)
    defects: list[Defect] = []
    if not path.is_dir():
        if path.is_symlink() and not path.exists():
            what = "is a broken symbolic link or a symbolic link loop"
        else:
            what = "does not exist" if not path.exists() else "is not a folder"
        defects.append(Defect("not_a_table", f"the table folder {what}", str(path)))
        return TableLayout(path, 0, 0, None, 0, dim, tuple(defects))

    key_path, vec_path, meta_path = path / KEY_FILE, path / VECTOR_FILE, path / META_FILE
    key_bytes, vec_bytes = _size(key_path, defects), _size(vec_path, defects)
    meta_bytes = _size(meta_path, defects)
    unreadable = {d.location for d in defects}
    for name, size, file in ((KEY_FILE, key_bytes, key_path), (VECTOR_FILE, vec_bytes, vec_path)):
        if size is None and str(file) not in unreadable:
            defects.append(Defect("missing_file", f"the '{name}' file is missing", str(file)))
        elif size == 0:
            defects.append(
                Defect("empty_file", f"the '{name}' file is empty (HPS rejects it)", str(file))
            )
    key_bytes = key_bytes or 0
    vec_bytes = vec_bytes or 0
    if key_bytes % KEY_DTYPE.itemsize:
        defects.append(
            Defect(
                "key_size",
                f"'key' holds {key_bytes} bytes, not a multiple of 8 (int64 keys)",
                str(key_path),
            )
        )
    num_keys = key_bytes // KEY_DTYPE.itemsize

    resolved = _resolve_dim(num_keys, vec_bytes, dim, sidecar_dim, vec_path, defects)

    if meta_bytes is not None and meta_bytes != num_keys * META_DTYPE.itemsize:
        defects.append(
            Defect(
                "meta_size",
                f"'meta' holds {meta_bytes} bytes; {num_keys} keys need "
                f"{num_keys * META_DTYPE.itemsize} (one int64 per key)",
                str(meta_path),
            )
        )
    return TableLayout(path, key_bytes, vec_bytes, meta_bytes, num_keys, resolved, tuple(defects))


def _resolve_dim(
    num_keys: int,
    vec_bytes: int,
    dim: int | None,
    sidecar_dim: int | None,
    vec_path: Path,
    defects: list[Defect],
) -> int | None:
    if vec_bytes % VECTOR_DTYPE.itemsize:
        defects.append(
            Defect(
                "vector_size",
                f"'emb_vector' holds {vec_bytes} bytes, not a multiple of 4 "
                "(float32 values): the file is truncated or not float32",
                str(vec_path),
            )
        )
        return dim
    if num_keys == 0 or vec_bytes == 0:
        return dim or sidecar_dim
    values = vec_bytes // VECTOR_DTYPE.itemsize
    inferred = values // num_keys if values % num_keys == 0 else None
    expected = dim if dim is not None else sidecar_dim
    if expected is not None:
        if values != num_keys * expected:
            source = "given" if dim is not None else "recorded in table.json"
            found = (
                f"it holds {inferred} floats per key"
                if inferred
                else f"{values} floats are not a whole number of rows for {num_keys} keys"
            )
            defects.append(
                Defect(
                    "dim_mismatch" if inferred else "vector_size",
                    f"'emb_vector' should hold {num_keys} keys × dim {expected} ({source}) = "
                    f"{num_keys * expected * 4} bytes but holds {vec_bytes}: {found}",
                    str(vec_path),
                )
            )
            return expected
        return expected
    if inferred is None:
        defects.append(
            Defect(
                "vector_size",
                f"'emb_vector' holds {values} floats, not a whole number of rows for "
                f"{num_keys} keys: it is truncated, or 'key' and 'emb_vector' do not belong "
                "together",
                str(vec_path),
            )
        )
    return inferred
