"""NumPy inputs: a ``.npy`` matrix (keys = row indices, or ``--keys keys.npy``), or an ``.npz``
holding ``keys`` + ``values`` (also accepted: ``key``/``ids`` and ``vectors``/``emb_vector``/
``embeddings``/``weights``; optional ``meta``), as ``hps convert --to npz`` writes.

``.npy`` files are read through their raw payload (or a memory map for Fortran order); ``.npz``
members are streamed out of the zip one chunk at a time, so memory stays constant either way.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from ..runtime.errors import InvalidInputError
from .base import RawArray, RawRowsTable, SkippedFile, SourceTable, as_keys, as_vectors, file_size
from .options import OpenOptions

FORMAT_NPY = "npy"
FORMAT_NPZ = "npz"
KEY_NAMES = ("keys", "key", "ids")
VALUE_NAMES = ("values", "vectors", "emb_vector", "embeddings", "weights")


def _header(handle, location: str) -> tuple[tuple, bool, np.dtype]:
    try:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(handle)
        return np.lib.format.read_array_header_2_0(handle)
    except (ValueError, OSError) as exc:
        raise InvalidInputError(f"not a readable .npy array: {exc}", location=location) from None


def _check_matrix(shape: tuple, dtype: np.dtype, location: str) -> tuple[int, int]:
    if len(shape) != 2 or shape[0] == 0 or shape[1] == 0:
        raise InvalidInputError(
            f"expected a non-empty 2-D matrix (rows × dim), got shape {shape}", location=location
        )
    if dtype.kind not in "fiu":
        raise InvalidInputError(f"the matrix has dtype {dtype}, not numbers", location=location)
    return int(shape[0]), int(shape[1])


def _check_keys(shape: tuple, dtype: np.dtype, rows: int, location: str) -> None:
    if len(shape) != 1 or dtype.kind not in "iu":
        raise InvalidInputError(
            f"keys must be a 1-D integer array, got shape {shape} of {dtype}", location=location
        )
    if shape[0] != rows:
        raise InvalidInputError(
            f"{shape[0]} keys for {rows} vector rows: key and value row counts disagree",
            location=location,
        )


def open_npy_array(path: Path) -> tuple[tuple, np.dtype, RawArray | np.ndarray]:
    """(shape, dtype, raw rows) of a .npy: a RawArray for C order, a memmap for Fortran order."""
    size = file_size(path, ".npy file")
    with open(path, "rb") as handle:
        shape, fortran, dtype = _header(handle, str(path))
        offset = handle.tell()
    if dtype.hasobject:
        raise InvalidInputError("object arrays cannot be converted", location=str(path))
    need = offset + int(np.prod(shape)) * dtype.itemsize
    if size < need:
        raise InvalidInputError(
            f"the file holds {size} bytes but its header promises {need}: it is truncated",
            location=str(path),
        )
    if fortran:
        return shape, dtype, np.load(path, mmap_mode="r")
    width = shape[1] if len(shape) == 2 else 1
    return (
        shape,
        dtype,
        RawArray(
            path,
            offset,
            dtype.newbyteorder("=") if dtype.byteorder == "|" else dtype,
            shape[0] if shape else 0,
            width,
        ),
    )


class ArrayTable(SourceTable):
    """Rows sliced out of array-likes (memory maps, HDF5 datasets); keys default to row ids."""

    def __init__(
        self, name, location, vectors, keys=None, *, format: str, details=None, input_bytes: int = 0
    ):
        super().__init__(
            name,
            location,
            vectors.shape[0],
            vectors.shape[1],
            input_bytes=input_bytes,
            details=details,
        )
        self.format = format
        self._vectors, self._keys = vectors, keys

    def _read(self, first, count):
        vectors = as_vectors(np.asarray(self._vectors[first : first + count]))
        if self._keys is None:
            keys = np.arange(first, first + count, dtype=np.int64)
        elif isinstance(self._keys, RawArray):
            keys = as_keys(self._keys.read(first, count), str(self._keys.path), first)
        else:
            keys = as_keys(np.asarray(self._keys[first : first + count]), self.location, first)
        return keys, vectors, None


class NpyTable(RawRowsTable):
    format = FORMAT_NPY

    def __init__(self, name, location, keys, vectors, *, row_keys: bool, details=None):
        super().__init__(name, location, keys, vectors, details=details)
        self._row_keys = row_keys

    def _read(self, first, count):
        if not self._row_keys:
            return super()._read(first, count)
        return (
            np.arange(first, first + count, dtype=np.int64),
            as_vectors(self._vectors.read(first, count)),
            None,
        )

    def random_access(self):
        return None if self._row_keys else super().random_access()


def _keys_array(options: OpenOptions, rows: int):
    if options.keys is None:
        return None
    shape, dtype, raw = open_npy_array(Path(options.keys))
    _check_keys(shape, dtype, rows, str(options.keys))
    return raw


def open_npy(path: Path, options: OpenOptions) -> tuple[list[SourceTable], list[SkippedFile]]:
    shape, dtype, raw = open_npy_array(path)
    rows, dim = _check_matrix(shape, dtype, str(path))
    keys = _keys_array(options, rows)
    details = {"dtype": dtype.name, "keys": str(options.keys) if options.keys else "row indices"}
    if isinstance(raw, RawArray) and (keys is None or isinstance(keys, RawArray)):
        key_raw = keys if keys is not None else RawArray(path, 0, "<i8", rows)
        table = NpyTable(path.stem, str(path), key_raw, raw, row_keys=keys is None, details=details)
        table.input_bytes = rows * dim * dtype.itemsize
        return [table], []
    return [
        ArrayTable(
            path.stem,
            str(path),
            raw,
            keys,
            format=FORMAT_NPY,
            details=details,
            input_bytes=rows * dim * dtype.itemsize,
        )
    ], []


class _Member:
    """A streamed array inside an .npz (read front to back; a rewind reopens it)."""

    def __init__(self, archive: zipfile.ZipFile, name: str, location: str):
        self.archive, self.name, self.location = archive, name, location
        with archive.open(name) as handle:
            self.shape, self.fortran, self.dtype = _header(handle, f"{location}:{name}")
        if self.fortran and len(self.shape) == 2:
            raise InvalidInputError(
                "Fortran-order matrices inside .npz cannot be streamed",
                location=f"{location}:{name}",
                hint="save it with np.ascontiguousarray(...)",
            )
        self.row_items = int(np.prod(self.shape[1:])) if len(self.shape) > 1 else 1
        self._handle, self._row = None, 0

    def read(self, first: int, count: int) -> np.ndarray:
        if self._handle is None or first != self._row:
            if self._handle is not None:
                self._handle.close()
            self._handle = self.archive.open(self.name)
            _header(self._handle, self.location)
            self._row = 0
            skip = first * self.row_items * self.dtype.itemsize
            while skip:
                skip -= len(self._handle.read(min(skip, 1 << 24)))
            self._row = first
        nbytes = count * self.row_items * self.dtype.itemsize
        raw = self._handle.read(nbytes)
        if len(raw) != nbytes:
            raise InvalidInputError(
                f"the member ended early at row {first}", location=f"{self.location}:{self.name}"
            )
        self._row += count
        arr = np.frombuffer(raw, dtype=self.dtype)
        return arr if len(self.shape) == 1 else arr.reshape(count, *self.shape[1:])

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


class NpzTable(SourceTable):
    format = FORMAT_NPZ

    def __init__(self, path: Path):
        try:
            self._zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise InvalidInputError(
                f"not a readable .npz archive: {exc}", location=str(path)
            ) from None
        members = {n[:-4]: n for n in self._zip.namelist() if n.endswith(".npy")}
        key_name = next((members[n] for n in KEY_NAMES if n in members), None)
        value_name = next((members[n] for n in VALUE_NAMES if n in members), None)
        if key_name is None or value_name is None:
            raise InvalidInputError(
                f"an .npz needs a keys array ({'/'.join(KEY_NAMES)}) and a values array "
                f"({'/'.join(VALUE_NAMES)}); it holds {sorted(members)}",
                location=str(path),
            )
        self._values = _Member(self._zip, value_name, str(path))
        rows, dim = _check_matrix(self._values.shape, self._values.dtype, f"{path}:{value_name}")
        self._keys = _Member(self._zip, key_name, str(path))
        _check_keys(self._keys.shape, self._keys.dtype, rows, f"{path}:{key_name}")
        self._meta = None
        if "meta" in members:
            self._meta = _Member(self._zip, members["meta"], str(path))
            _check_keys(self._meta.shape, self._meta.dtype, rows, f"{path}:meta.npy")
        super().__init__(
            path.stem,
            str(path),
            rows,
            dim,
            has_meta=self._meta is not None,
            input_bytes=rows * (self._keys.dtype.itemsize + dim * self._values.dtype.itemsize),
            details={"keys": key_name, "values": value_name},
        )
        self.skipped = [
            SkippedFile(f"{path}:{n}", "not a keys, values or meta array")
            for n in self._zip.namelist()
            if n not in (key_name, value_name, members.get("meta"))
        ]

    def _read(self, first, count):
        keys = as_keys(self._keys.read(first, count), self.location, first)
        vectors = as_vectors(self._values.read(first, count))
        meta = self._meta.read(first, count).astype(np.int64) if self._meta else None
        return keys, vectors, meta

    def close(self) -> None:
        for member in (self._keys, self._values, self._meta):
            if member is not None:
                member.close()
        self._zip.close()


def open_npz(path: Path, options: OpenOptions) -> tuple[list[SourceTable], list[SkippedFile]]:
    file_size(path, ".npz file")
    table = NpzTable(path)
    return [table], table.skipped
