"""SOK v2 dumps (``sok.dump(path, vars, optimizer)``, sparse_operation_kit dump_load.py v24.06).

Per variable ``<name>-key`` and ``<name>-weight``, where ``<name>`` is ``var.name`` with every
ASCII punctuation character replaced by ``_`` (``table0:0`` → ``table0_0``); optimizer slots
are ``<name>-<Optimizer>-<slot>``. Every file starts with a 296-byte header:

    256 bytes  table name, ASCII, right-justified (left-padded with spaces; SOK v24.06 leaves
               it blank)
      4 bytes  file type, big-endian uint32: 0 key, 1 emb (weight), 2 optimizer state
     32 bytes  slot name, right-justified with spaces (blank for keys and weights)
      4 bytes  dtype index, big-endian uint32: 0 int32, 1 int64, 2 uint32, 3 uint64,
               4 float16, 5 float32, 6 float64

then the payload as NumPy ``tofile`` wrote it (native little-endian): keys (1-D) and weights
(rows × dim, row-major). We validate both headers, strip them, cast keys to int64 and weights
to float32, and list the optimizer-state files as skipped (HPS serves weights only).
"""

from __future__ import annotations

import string
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..runtime.errors import InvalidInputError
from .base import RawArray, RawRowsTable, SkippedFile, file_size, rows_of
from .options import OpenOptions

FORMAT = "sok-v2"
HEADER_BYTES = 296
NAME_BYTES = 256
SLOT_BYTES = 32
FILE_TYPES = {0: "key", 1: "emb", 2: "opt_state"}
DTYPES = {
    0: np.dtype("<i4"),
    1: np.dtype("<i8"),
    2: np.dtype("<u4"),
    3: np.dtype("<u8"),
    4: np.dtype("<f2"),
    5: np.dtype("<f4"),
    6: np.dtype("<f8"),
}
KEY_DTYPES = (0, 1, 2, 3)
WEIGHT_DTYPES = (4, 5, 6)
OPTIMIZERS = ("SGD", "Adamax", "Adadelta", "Adagrad", "Ftrl", "Adam")


@dataclass(frozen=True)
class SokHeader:
    table_name: str
    file_type: int
    slot_name: str
    dtype_index: int

    @property
    def dtype(self) -> np.dtype:
        return DTYPES[self.dtype_index]

    def to_bytes(self) -> bytes:
        """The header as ``sok.dump`` writes it (used by tests and by tools that write dumps)."""
        return (
            self.table_name.rjust(NAME_BYTES).encode("ascii")
            + struct.pack(">I", self.file_type)
            + self.slot_name.rjust(SLOT_BYTES).encode("ascii")
            + struct.pack(">I", self.dtype_index)
        )


def sanitize(name: str) -> str:
    """SOK's file name of a variable: every ASCII punctuation character becomes ``_``."""
    return "".join("_" if c in string.punctuation else c for c in name)


def parse_header(raw: bytes, location: str = "") -> SokHeader:
    """Parse and check a 296-byte header; InvalidInputError says what is wrong."""
    if len(raw) < HEADER_BYTES:
        raise InvalidInputError(
            f"the file holds {len(raw)} bytes, less than the {HEADER_BYTES}-byte SOK v2 header",
            location=location,
        )
    try:
        name = raw[:NAME_BYTES].decode("ascii")
        slot = raw[NAME_BYTES + 4 : NAME_BYTES + 4 + SLOT_BYTES].decode("ascii")
    except UnicodeDecodeError:
        raise InvalidInputError(
            "the header's table or slot name is not ASCII text: not a SOK v2 dump file",
            location=location,
        ) from None
    if not all(c.isprintable() for c in name + slot):
        raise InvalidInputError(
            "the header's table or slot name holds control characters: not a SOK v2 dump file",
            location=location,
        )
    (file_type,) = struct.unpack(">I", raw[NAME_BYTES : NAME_BYTES + 4])
    (dtype_index,) = struct.unpack(">I", raw[HEADER_BYTES - 4 : HEADER_BYTES])
    if file_type not in FILE_TYPES:
        raise InvalidInputError(
            f"the header's file type is {file_type}; SOK v2 uses 0 (key), "
            "1 (emb) or 2 (optimizer state)",
            location=location,
        )
    if dtype_index not in DTYPES:
        raise InvalidInputError(
            f"the header's dtype index is {dtype_index}; SOK v2 uses 0..6 "
            "(int32, int64, uint32, uint64, float16, float32, float64)",
            location=location,
        )
    return SokHeader(name.strip(" "), file_type, slot.strip(" "), dtype_index)


def read_header(path: Path) -> SokHeader:
    file_size(path, "SOK v2 dump file")
    try:
        with open(path, "rb") as handle:
            raw = handle.read(HEADER_BYTES)
    except OSError as exc:
        raise InvalidInputError(
            f"cannot read the file: {exc.strerror}", location=str(path)
        ) from None
    return parse_header(raw, str(path))


def looks_like(path: Path) -> bool:
    return path.is_dir() and any(p.name.endswith("-key") for p in path.iterdir())


class SokV2Table(RawRowsTable):
    format = FORMAT


def _open_pair(path: Path, name: str) -> SokV2Table:
    key_path, weight_path = path / f"{name}-key", path / f"{name}-weight"
    if not weight_path.exists():
        raise InvalidInputError(
            f"the weight file {weight_path.name} of table '{name}' is missing",
            location=str(key_path),
        )
    kh, wh = read_header(key_path), read_header(weight_path)
    if kh.file_type != 0:
        raise InvalidInputError(
            f"a key file's header must have file type 0 (key), this one has "
            f"{kh.file_type} ({FILE_TYPES[kh.file_type]})",
            location=str(key_path),
        )
    if wh.file_type != 1:
        raise InvalidInputError(
            f"a weight file's header must have file type 1 (emb), this one has "
            f"{wh.file_type} ({FILE_TYPES[wh.file_type]})",
            location=str(weight_path),
        )
    if kh.dtype_index not in KEY_DTYPES:
        raise InvalidInputError(
            f"key dtype index {kh.dtype_index} ({kh.dtype}) is not an integer type",
            location=str(key_path),
        )
    if wh.dtype_index not in WEIGHT_DTYPES:
        raise InvalidInputError(
            f"weight dtype index {wh.dtype_index} ({wh.dtype}) is not a float type",
            location=str(weight_path),
        )
    if kh.table_name != wh.table_name:
        raise InvalidInputError(
            f"the key file names table '{kh.table_name}' but the weight file "
            f"names '{wh.table_name}'",
            location=str(weight_path),
        )
    key_payload = file_size(key_path) - HEADER_BYTES
    weight_payload = file_size(weight_path) - HEADER_BYTES
    rows = rows_of(key_path, key_payload, kh.dtype.itemsize, 1, "keys")
    if rows == 0:
        raise InvalidInputError("the key file holds no keys", location=str(key_path))
    values = rows_of(weight_path, weight_payload, wh.dtype.itemsize, 1, "weights")
    if values % rows:
        raise InvalidInputError(
            f"{values} weight values are not a whole number of rows for {rows} keys: key and "
            "weight row counts disagree (or a file is truncated)",
            location=str(weight_path),
        )
    dim = values // rows
    details = {
        "key_dtype": str(kh.dtype.name),
        "weight_dtype": str(wh.dtype.name),
        "header_table_name": kh.table_name,
        "key_file": str(key_path),
        "weight_file": str(weight_path),
    }
    if kh.table_name and sanitize(kh.table_name) != name:
        details["note"] = f"header table name '{kh.table_name}' differs from the file name"
    return SokV2Table(
        name,
        str(path),
        RawArray(key_path, HEADER_BYTES, kh.dtype, rows),
        RawArray(weight_path, HEADER_BYTES, wh.dtype, rows, dim),
        details=details,
    )


def open_tables(path: Path, options: OpenOptions) -> tuple[list[SokV2Table], list[SkippedFile]]:
    entries = sorted(p.name for p in path.iterdir())
    names = [e[: -len("-key")] for e in entries if e.endswith("-key")]
    tables = [_open_pair(path, name) for name in names]
    skipped = []
    for entry in entries:
        if entry.endswith("-key") or (entry.endswith("-weight") and entry[:-7] in names):
            continue
        full = path / entry
        if entry.endswith("-weight"):
            raise InvalidInputError(
                f"the key file of table '{entry[:-7]}' is missing", location=str(full)
            )
        reason = "not a SOK v2 dump file"
        for name in names:
            rest = entry[len(name) + 1 :] if entry.startswith(name + "-") else ""
            if rest.split("-")[0] in OPTIMIZERS and "-" in rest:
                header = read_header(full)
                if header.file_type != 2:
                    raise InvalidInputError(
                        f"an optimizer-state file's header must have file type 2, this one has "
                        f"{header.file_type}",
                        location=str(full),
                    )
                reason = (
                    f"optimizer state '{header.slot_name or rest.split('-', 1)[1]}' of "
                    f"table '{name}' ({rest.split('-')[0]}): HPS serves weights only"
                )
        if entry == "meta_info":
            reason = "SOK meta_info (not needed: the headers and sizes say everything)"
        skipped.append(SkippedFile(str(full), reason))
    return tables, skipped
