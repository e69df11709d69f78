"""HugeCTR training snapshots: sparse model folders and the newer embedding collections.

1. ``<prefix><i>_sparse_<iter>.model/`` folders (HugeCTR's *_sparse_embedding_hash): ``key``
   (int64) + ``emb_vector`` (float32), already HPS's layout; LocalizedSlot embeddings add
   ``slot_id`` (uint64 per key), which HPS ignores: we check its size and drop it.
2. Embedding collections (HugeCTR embedding_storage/weight_io/parameter_IO.cpp):
   ``embedding_collection_<id>/meta_data`` then ``key<t>`` and ``weight<t>`` per table, each
   with a 128-byte header of 32 little-endian int32: ``[file type (1 key, 2 weight,
   3 optimizer), table id (the file's index t; HugeCTR writes that), 0 × 30]``.
   ``meta_data`` is little-endian: int32 ``[table count, key type (0 uint32, 1 int64), value
   type (0 float32, 1 float16), unused, max dim]``, then int32 table ids, uint64 key counts and
   int32 dims, one per table.

   What we assume and check (conservatively, since HugeCTR does not): the header's type and
   table id match the file, its other 30 ints are zero, sizes match ``meta_data``'s counts
   and dims exactly. Float16 collections are refused: HugeCTR's dump writes
   ``rows × dim × sizeof(float)`` bytes whatever the value type, so their layout is unclear.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..runtime.errors import InvalidInputError
from ..runtime.table.file_layout import inspect_layout
from .base import RawArray, RawRowsTable, SkippedFile, file_size
from .options import OpenOptions

FORMAT = "hugectr"
SNAPSHOT = re.compile(r".*_sparse_.*\.model$")
COLLECTION = re.compile(r"^embedding_collection_(\d+)$")
HEAD_BYTES = 128
META_HEAD_INTS = 5


class HugeCtrTable(RawRowsTable):
    format = FORMAT


def _is_snapshot(path: Path) -> bool:
    return path.is_dir() and bool(SNAPSHOT.match(path.name)) and (path / "key").exists()


def _is_collection(path: Path) -> bool:
    return path.is_dir() and bool(COLLECTION.match(path.name)) and (path / "meta_data").exists()


def looks_like(path: Path) -> bool:
    if _is_snapshot(path) or _is_collection(path):
        return True
    return path.is_dir() and any(_is_snapshot(p) or _is_collection(p) for p in path.iterdir())


def _open_snapshot(path: Path, dim: int | None) -> tuple[HugeCtrTable, list[SkippedFile]]:
    layout = inspect_layout(path, dim)
    if not layout.ok:
        defect = layout.defects[0]
        raise InvalidInputError(defect.message, location=defect.location)
    skipped = []
    slot = path / "slot_id"
    if slot.exists():
        size = file_size(slot, "slot_id file")
        if size != layout.num_keys * 8:
            raise InvalidInputError(
                f"'slot_id' holds {size} bytes; {layout.num_keys} keys need "
                f"{layout.num_keys * 8} (one uint64 per key)",
                location=str(slot),
            )
        skipped.append(SkippedFile(str(slot), "slot ids (HPS ignores them)"))
    for extra in sorted(path.iterdir()):
        if extra.name not in ("key", "emb_vector", "slot_id"):
            skipped.append(SkippedFile(str(extra), "not part of a sparse model folder"))
    name = path.name[: -len(".model")]
    table = HugeCtrTable(
        name,
        str(path),
        RawArray(path / "key", 0, "<i8", layout.num_keys),
        RawArray(path / "emb_vector", 0, "<f4", layout.num_keys, layout.dim),
        details={
            "kind": "sparse model snapshot",
            "slot_id": "dropped" if slot.exists() else "absent",
        },
    )
    return table, skipped


def parse_meta(raw: bytes, location: str) -> dict:
    """``meta_data`` of an embedding collection (see the module doc)."""
    if len(raw) < 4 * META_HEAD_INTS:
        raise InvalidInputError(
            f"meta_data holds {len(raw)} bytes, less than its 20-byte head", location=location
        )
    head = np.frombuffer(raw[:20], dtype="<i4")
    count = int(head[0])
    need = 20 + count * (4 + 8 + 4)
    if count <= 0 or len(raw) != need:
        raise InvalidInputError(
            f"meta_data says {count} tables, which needs {need} bytes, but it holds {len(raw)}",
            location=location,
        )
    if head[1] not in (0, 1):
        raise InvalidInputError(
            f"meta_data key type is {head[1]}; expected 0 (uint32) or 1 (int64)", location=location
        )
    if head[2] != 0:
        raise InvalidInputError(
            f"meta_data value type is {head[2]}"
            + (" (float16)" if head[2] == 1 else "")
            + "; only float32 embedding collections (0) are supported",
            location=location,
        )
    ids = np.frombuffer(raw, dtype="<i4", count=count, offset=20)
    rows = np.frombuffer(raw, dtype="<u8", count=count, offset=20 + 4 * count)
    dims = np.frombuffer(raw, dtype="<i4", count=count, offset=20 + 12 * count)
    if (dims <= 0).any():
        raise InvalidInputError(
            f"meta_data lists a non-positive dim: {dims.tolist()}", location=location
        )
    return {
        "key_dtype": np.dtype("<u4") if head[1] == 0 else np.dtype("<i8"),
        "tables": [(int(i), int(r), int(d)) for i, r, d in zip(ids, rows, dims)],
    }


def check_head(path: Path, expect_type: int, table_id: int, index: int | None = None) -> None:
    """Check a key/weight file's 128-byte header. HugeCTR's dump writes the file's index
    (``key<index>``) as the id, which equals ``meta_data``'s table id unless a subset of tables
    was dumped; both are accepted."""
    index = table_id if index is None else index
    size = file_size(path, "embedding collection file")
    if size < HEAD_BYTES:
        raise InvalidInputError(
            f"the file holds {size} bytes, less than its 128-byte header", location=str(path)
        )
    with open(path, "rb") as handle:
        head = np.frombuffer(handle.read(HEAD_BYTES), dtype="<i4")
    kinds = {1: "key", 2: "weight", 3: "optimizer"}
    if head[0] != expect_type:
        raise InvalidInputError(
            f"the header's file type is {head[0]} "
            f"({kinds.get(int(head[0]), 'unknown')}); expected {expect_type} "
            f"({kinds[expect_type]})",
            location=str(path),
        )
    if head[1] not in (table_id, index):
        raise InvalidInputError(
            f"the header names table id {head[1]}; meta_data says {table_id} (file index {index})",
            location=str(path),
        )
    if head[2:].any():
        raise InvalidInputError(
            "the header's reserved fields (ints 2..31) are not zero: not a "
            "HugeCTR embedding-collection file we know",
            location=str(path),
        )


def _open_collection(path: Path) -> tuple[list[HugeCtrTable], list[SkippedFile]]:
    meta_path = path / "meta_data"
    file_size(meta_path, "meta_data file")
    meta = parse_meta(meta_path.read_bytes(), str(meta_path))
    key_dtype = meta["key_dtype"]
    tables, used = [], {"meta_data"}
    for index, (table_id, rows, dim) in enumerate(meta["tables"]):
        key_path, weight_path = path / f"key{index}", path / f"weight{index}"
        used |= {key_path.name, weight_path.name}
        check_head(key_path, 1, table_id, index)
        check_head(weight_path, 2, table_id, index)
        key_bytes = file_size(key_path) - HEAD_BYTES
        weight_bytes = file_size(weight_path) - HEAD_BYTES
        if key_bytes != rows * key_dtype.itemsize:
            raise InvalidInputError(
                f"holds {key_bytes} key bytes; meta_data says {rows} keys of "
                f"{key_dtype.itemsize} bytes",
                location=str(key_path),
            )
        if weight_bytes != rows * dim * 4:
            raise InvalidInputError(
                f"holds {weight_bytes} weight bytes; meta_data says {rows} rows × dim {dim} × 4",
                location=str(weight_path),
            )
        if rows == 0:
            raise InvalidInputError("the table has no rows", location=str(key_path))
        tables.append(
            HugeCtrTable(
                f"{path.name}_table{table_id}",
                str(path),
                RawArray(key_path, HEAD_BYTES, key_dtype, rows),
                RawArray(weight_path, HEAD_BYTES, "<f4", rows, dim),
                details={
                    "kind": "embedding collection",
                    "table_id": table_id,
                    "key_dtype": key_dtype.name,
                },
            )
        )
    skipped = [
        SkippedFile(str(p), "optimizer state or unknown file: HPS serves weights only")
        for p in sorted(path.iterdir())
        if p.name not in used
    ]
    return tables, skipped


def open_tables(path: Path, options: OpenOptions) -> tuple[list[HugeCtrTable], list[SkippedFile]]:
    if _is_snapshot(path):
        table, skipped = _open_snapshot(path, options.dim)
        return [table], skipped
    if _is_collection(path):
        return _open_collection(path)
    tables, skipped = [], []
    for child in sorted(path.iterdir()):
        if _is_snapshot(child):
            table, more = _open_snapshot(child, options.dim)
            tables.append(table)
            skipped += more
        elif _is_collection(child):
            found, more = _open_collection(child)
            tables += found
            skipped += more
        else:
            skipped.append(
                SkippedFile(
                    str(child),
                    "not a sparse model folder nor an embedding "
                    "collection (dense weights, optimizer states)",
                )
            )
    return tables, skipped
