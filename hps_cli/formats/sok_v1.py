"""SOK v1 dumps (``sok.Saver.dump_to_file``): ``<var>_keys.file`` + ``<var>_values.file``.

Both files are headerless: keys raw in the layer's key dtype (int64 by default, uint32
possible), values raw float32, ``rows × dim``. SOK's own restore infers the key width from
``key_bytes / value_rows``, which needs the dim. Without ``--dim`` we try both widths: when
only one gives a whole dim it is taken; when both do (any even int64 dim does), the keys decide:
int64 keys within ±2**31 have high words that are just the sign of the low word (0 or
0xFFFFFFFF), which pairs of unique uint32 keys practically never have. If that test is not
conclusive, ``--dim`` is required.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..runtime.errors import InvalidInputError
from .base import RawArray, RawRowsTable, SkippedFile, file_size
from .options import OpenOptions

FORMAT = "sok-v1"
KEYS_SUFFIX = "_keys.file"
VALUES_SUFFIX = "_values.file"
_SAMPLE_WORDS = 1 << 16


def looks_like(path: Path) -> bool:
    return path.is_dir() and any(p.name.endswith(KEYS_SUFFIX) for p in path.iterdir())


class SokV1Table(RawRowsTable):
    format = FORMAT


def _key_width(
    keys_path: Path, key_bytes: int, value_bytes: int, dim: int | None
) -> tuple[int, int, str]:
    """(key width in bytes, dim, how it was decided)."""
    floats = value_bytes // 4
    if dim is not None:
        if floats % dim:
            raise InvalidInputError(
                f"{value_bytes} bytes of values are not a whole number of rows of dim {dim}",
                location=str(
                    keys_path.with_name(keys_path.name[: -len(KEYS_SUFFIX)] + VALUES_SUFFIX)
                ),
            )
        rows = floats // dim
        for width in (8, 4):
            if rows and key_bytes == rows * width:
                return width, dim, "from --dim"
        raise InvalidInputError(
            f"{key_bytes} bytes of keys do not match {rows} value rows of dim {dim} "
            "(neither int64 nor uint32 keys): key and value row counts disagree",
            location=str(keys_path),
        )
    candidates = []
    for width in (8, 4):
        if key_bytes % width == 0 and key_bytes and floats % (key_bytes // width) == 0:
            candidates.append((width, floats // (key_bytes // width)))
    candidates = [c for c in candidates if c[1] > 0]
    if not candidates:
        raise InvalidInputError(
            f"{key_bytes} bytes of keys and {value_bytes} bytes of values give no whole dim for "
            "int64 or uint32 keys: key and value row counts disagree",
            location=str(keys_path),
        )
    if len(candidates) == 1:
        width, found = candidates[0]
        return width, found, "the only key width giving a whole dim"
    with open(keys_path, "rb") as handle:
        words = np.frombuffer(handle.read(min(key_bytes, _SAMPLE_WORDS * 4)), dtype="<u4")
    low, high = words[0::2][: words.size // 2], words[1::2]
    if high.size >= 2 and np.array_equal(high, (low >> 31) * np.uint32(0xFFFFFFFF)):
        width, found = candidates[0]
        return width, found, "int64: the sampled keys fit 32 bits (their high words are sign bits)"
    (w8, d8), (w4, d4) = candidates
    raise InvalidInputError(
        f"the key width is ambiguous: int64 keys with dim {d8} or uint32 keys with dim {d4}",
        location=str(keys_path),
        hint="pass --dim",
    )


def open_tables(path: Path, options: OpenOptions) -> tuple[list[RawRowsTable], list[SkippedFile]]:
    tables, skipped = [], []
    names = sorted(p.name for p in path.iterdir())
    for entry in names:
        full = path / entry
        if entry.endswith(KEYS_SUFFIX):
            var = entry[: -len(KEYS_SUFFIX)]
            values = path / (var + VALUES_SUFFIX)
            key_bytes = file_size(full, "SOK v1 keys file")
            if not values.exists():
                raise InvalidInputError(
                    f"the values file {values.name} of variable '{var}' is missing",
                    location=str(full),
                )
            value_bytes = file_size(values, "SOK v1 values file")
            if key_bytes == 0 or value_bytes == 0:
                raise InvalidInputError(
                    "the file is empty", location=str(full if not key_bytes else values)
                )
            if value_bytes % 4:
                raise InvalidInputError(
                    f"{value_bytes} bytes are not whole float32 values (the file is truncated)",
                    location=str(values),
                )
            width, dim, how = _key_width(full, key_bytes, value_bytes, options.dim)
            rows = key_bytes // width
            dtype = np.dtype("<i8") if width == 8 else np.dtype("<u4")
            tables.append(
                SokV1Table(
                    var,
                    str(path),
                    RawArray(full, 0, dtype, rows),
                    RawArray(values, 0, "<f4", rows, dim),
                    details={
                        "key_dtype": "int64" if width == 8 else "uint32",
                        "key_width": how,
                        "keys_file": str(full),
                        "values_file": str(values),
                    },
                )
            )
        elif entry.endswith(VALUES_SUFFIX):
            if not (path / (entry[: -len(VALUES_SUFFIX)] + KEYS_SUFFIX)).exists():
                raise InvalidInputError(
                    f"the keys file of variable '{entry[: -len(VALUES_SUFFIX)]}' is missing",
                    location=str(full),
                )
        else:
            skipped.append(SkippedFile(str(full), "not a SOK v1 keys or values file"))
    return tables, skipped
