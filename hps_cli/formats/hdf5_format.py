"""HDF5 inputs (h5py): one dataset (``--dataset /a/b``), or the embedding layers of a Keras 2
``.h5`` file.

The Keras 2 (tf_keras) layout is read by ``hps_cli.common.keras2_h5``. An embedding layer is one
with a 2-D weight named ``.../embeddings:0``; its keys are the row indices ``0..vocab-1`` and the
table is named after the layer. Rows are read by slicing the dataset, so memory stays at one
chunk.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..common import keras2_h5
from ..runtime.errors import InvalidInputError, NotFoundError
from .base import SkippedFile, SourceTable, file_size
from .numpy_format import ArrayTable, _check_keys, _check_matrix, open_npy_array
from .options import OpenOptions

FORMAT = "hdf5"
FORMAT_KERAS = "keras-h5"
SUFFIXES = (".h5", ".hdf5", ".hdf", ".he5")


def looks_like(path: Path) -> bool:
    if path.is_file():
        with open(path, "rb") as handle:
            return handle.read(8) == b"\x89HDF\r\n\x1a\n"
    return False


def _open_file(path: Path):
    import h5py

    file_size(path, "HDF5 file")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise InvalidInputError(f"not a readable HDF5 file: {exc}", location=str(path)) from None


def keras_layers(handle) -> list[tuple[str, str]] | None:
    """(layer name, dataset path) of every embedding layer of a Keras 2 .h5, or None when the
    file is not a Keras 2 save."""
    if keras2_h5.layer_names(handle) is None:
        return None
    return [
        (weight.layer, weight.dataset.name)
        for weight in keras2_h5.model_weights(handle, top_level=False)
        if weight.name.split("/")[-1].startswith("embeddings") and len(weight.dataset.shape) == 2
    ]


def _matrices(handle) -> list[str]:
    import h5py

    out = []
    handle.visititems(
        lambda name, obj: (
            out.append("/" + name)
            if isinstance(obj, h5py.Dataset) and len(obj.shape) == 2
            else None
        )
    )
    return out


class Hdf5Table(ArrayTable):
    def __init__(self, name, path: Path, handle, dataset_path: str, keys, fmt: str, details: dict):
        dataset = handle[dataset_path]
        rows, dim = _check_matrix(dataset.shape, dataset.dtype, f"{path}:{dataset_path}")
        if keys is not None:
            _check_keys(keys.shape, keys.dtype, rows, f"{path}:keys")
        super().__init__(
            name,
            f"{path}:{dataset_path}",
            dataset,
            keys,
            format=fmt,
            details={"dataset": dataset_path, "dtype": dataset.dtype.name, **details},
            input_bytes=rows * dim * dataset.dtype.itemsize,
        )
        self._handle = handle

    def close(self) -> None:
        try:
            self._handle.close()
        except Exception:
            pass


def _keys_for(handle, path: Path, options: OpenOptions):
    if options.keys is None:
        return None
    text = str(options.keys)
    if text.startswith("/") and text in handle and not Path(text).exists():
        return handle[text]
    shape, dtype, raw = open_npy_array(Path(options.keys))
    return np.load(options.keys, mmap_mode="r")


def open_tables(path: Path, options: OpenOptions) -> tuple[list[SourceTable], list[SkippedFile]]:
    handle = _open_file(path)
    try:
        if options.dataset:
            name = options.dataset if options.dataset.startswith("/") else "/" + options.dataset
            if name not in handle or len(getattr(handle[name], "shape", ())) != 2:
                raise NotFoundError(
                    f"no 2-D dataset '{name}' in the file",
                    location=str(path),
                    hint="2-D datasets: " + ", ".join(_matrices(handle)[:10]),
                )
            keys = _keys_for(handle, path, options)
            short = name.rstrip("/").split("/")[-1].split(":")[0]
            return [Hdf5Table(short, path, handle, name, keys, FORMAT, {})], []
        layers = keras_layers(handle)
        if layers is None:
            raise InvalidInputError(
                "not a Keras 2 .h5 weight file (no layer_names attribute)",
                location=str(path),
                hint="pass --dataset /path/to/matrix; 2-D datasets here: "
                + (", ".join(_matrices(handle)[:10]) or "none"),
            )
        if not layers:
            raise NotFoundError(
                "the Keras file has no embedding layer (no 2-D 'embeddings' weight)",
                location=str(path),
            )
        tables = [
            Hdf5Table(
                layer,
                path,
                handle,
                dataset,
                None,
                FORMAT_KERAS,
                {"layer": layer, "keys": "row indices"},
            )
            for layer, dataset in layers
        ]
        embedding = {d for _, d in layers}
        skipped = [
            SkippedFile(f"{path}:{d}", "not an embedding layer weight")
            for d in _matrices(handle)
            if d not in embedding
        ]
        return tables, skipped
    except BaseException:
        handle.close()
        raise
