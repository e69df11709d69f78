"""Which format an input is, from what is on disk (or as forced with ``--from``)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..runtime.errors import InvalidInputError, NotFoundError
from . import hdf5_format, hps_table, hugectr, numpy_format, rocksdb_format, sok_v1, sok_v2
from .base import SkippedFile, SourceTable
from .options import OpenOptions

# name -> (opener, what it is); order is the detection order for folders.
FORMATS = {
    "hps": (hps_table.open_tables, "HPS table folder(s): key + emb_vector [+ meta]"),
    "rocksdb": (rocksdb_format.open_tables, "RocksDB in HPS's layout (hps_et.<model>.<table>)"),
    "hugectr": (
        hugectr.open_tables,
        "HugeCTR *_sparse_*.model folders / embedding_collection_<id>",
    ),
    "sok-v2": (sok_v2.open_tables, "SOK v2 sok.dump: <name>-key + <name>-weight, 296-byte headers"),
    "sok-v1": (
        sok_v1.open_tables,
        "SOK v1 Saver.dump_to_file: <var>_keys.file + <var>_values.file",
    ),
    "npy": (numpy_format.open_npy, ".npy matrix (keys = row indices or --keys)"),
    "npz": (numpy_format.open_npz, ".npz with keys + values [+ meta]"),
    "hdf5": (hdf5_format.open_tables, "HDF5: --dataset /a/b, or a Keras 2 .h5's embedding layers"),
}


@dataclass
class Input:
    path: Path
    format: str
    detected: bool
    tables: list[SourceTable]
    skipped: list[SkippedFile] = field(default_factory=list)

    def close(self) -> None:
        for table in self.tables:
            table.close()


def detect_format(path: Path) -> str:
    """The format of ``path`` judged from names, magic numbers and folder contents."""
    if not path.exists():
        raise NotFoundError("the input does not exist", location=str(path))
    if not os.access(path, os.R_OK):
        raise InvalidInputError("cannot read the input: permission denied", location=str(path))
    if path.is_file():
        with open(path, "rb") as handle:
            magic = handle.read(8)
        if magic.startswith(b"\x93NUMPY"):
            return "npy"
        if magic.startswith(b"PK\x03\x04") and path.suffix == ".npz":
            return "npz"
        if magic == b"\x89HDF\r\n\x1a\n":
            return "hdf5"
        if magic.startswith(b"PK\x03\x04") and path.suffix == ".keras":
            raise InvalidInputError(
                "Keras 3 .keras files are not supported by convert",
                location=str(path),
                hint="use 'hps dissect', or save with tf_keras as .h5",
            )
        raise InvalidInputError(
            "cannot tell the format of this file (not .npy, .npz or HDF5)",
            location=str(path),
            hint="pass --from FORMAT",
        )
    # HugeCTR before HPS: its sparse model folders are HPS tables too, plus slot_id
    for name, probe in (
        ("rocksdb", rocksdb_format.looks_like),
        ("hugectr", hugectr.looks_like),
        ("hps", hps_table.looks_like),
        ("sok-v2", sok_v2.looks_like),
        ("sok-v1", sok_v1.looks_like),
    ):
        if probe(path):
            return name
    raise InvalidInputError(
        "cannot tell the format of this folder: no HPS table, RocksDB, HugeCTR snapshot, "
        "SOK v2 (*-key) or SOK v1 (*_keys.file) files in it",
        location=str(path),
        hint="pass --from FORMAT",
    )


def open_input(
    path: Path | str, fmt: str | None = None, options: OpenOptions | None = None
) -> Input:
    """Open every table of the input (headers and sizes checked, no rows read yet)."""
    path = Path(path)
    options = options or OpenOptions()
    detected = fmt is None
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise InvalidInputError(
            f"unknown format '{fmt}'", location=str(path), hint="formats: " + ", ".join(FORMATS)
        )
    if not path.exists():
        raise NotFoundError("the input does not exist", location=str(path))
    opener = FORMATS[fmt][0]
    try:
        tables, skipped = opener(path, options)
    except PermissionError as exc:
        raise InvalidInputError(
            f"cannot read: {exc.strerror}", location=exc.filename or str(path)
        ) from None
    except (NotADirectoryError, IsADirectoryError) as exc:
        raise InvalidInputError(f"not a {fmt} input: {exc.strerror}", location=str(path)) from None
    if not tables:
        raise NotFoundError(f"no table found in this {fmt} input", location=str(path))
    return Input(path, fmt, detected, list(tables), list(skipped))
