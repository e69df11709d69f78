"""Model sources dissect reads: format detection, checkpoints and SavedModels.

``open_source`` opens any supported input as a ``Source`` (source_types.py). Checkpoints and
SavedModels are read with the pure-Python TensorBundle reader; Keras files (keras_files.py)
with h5py. None of this imports TensorFlow.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np

from ..runtime.errors import InvalidInputError, NotFoundError
from .bundle import BundleReader, is_checkpoint, resolve_prefix
from .keras_files import H5Source, KerasArchiveSource, saved_model_keras_metadata
from .object_graph import MODEL, checkpoint_variables
from .source_types import CHECKPOINT, SAVED_MODEL, Source, Variable, sanitize_name

__all__ = ["CheckpointSource", "SavedModelSource", "open_source"]


def _from_checkpoint(reader: BundleReader) -> list[Variable]:
    out = []
    for var in checkpoint_variables(reader):
        if var.tensor.dtype == "string" and var.kind == MODEL and not var.tensor.shape:
            continue
        out.append(
            Variable(
                var.name,
                tuple(var.tensor.shape),
                var.tensor.dtype,
                var.kind,
                var.checkpoint_key,
                var.path,
                var.aliases,
                crc32c=None if var.tensor.entry.sliced else var.tensor.entry.crc32c,
            )
        )
    return out


class CheckpointSource(Source):
    """A TF2 object-based checkpoint (``tf.train.Checkpoint``, ``save_weights``)."""

    def __init__(self, path: Path, prefix: Path | None = None, format: str = CHECKPOINT):
        self.reader = BundleReader(prefix or resolve_prefix(path))
        variables = _from_checkpoint(self.reader)
        flavour = _flavour_of_keys([v.location for v in variables] + [v.path for v in variables])
        super().__init__(
            Path(path),
            format,
            variables,
            flavour=flavour,
            model_name=_checkpoint_model_name(self.reader.prefix),
        )

    def iter_rows(
        self, var: Variable, rows_per_chunk: int, buffers: int = 1
    ) -> Iterator[tuple[int, np.ndarray]]:
        yield from self.reader.iter_rows(var.location, rows_per_chunk, buffers=buffers)

    @property
    def data_files(self) -> list[Path]:
        return [self.reader.data_path(i) for i in range(self.reader.header.num_shards)]


def _checkpoint_model_name(prefix: Path) -> str:
    """A model name from a checkpoint prefix: ``runs/dlrm/ckpt-3`` -> ``dlrm``."""
    stem = re.sub(r"[-_.]?\d+$", "", prefix.name)
    generic = {"", "ckpt", "checkpoint", "model", "variables", "weights", "cp"}
    return sanitize_name(prefix.parent.name if stem.lower() in generic else stem)


def _flavour_of_keys(keys: list[str]) -> str:
    if any(
        "/_operations/" in k
        or k.startswith("_operations/")
        or "/_kernel/" in f"/{k}/"
        or "/_embeddings/" in f"/{k}/"
        for k in keys
    ):
        return "keras3"
    if any(k.startswith("layer_with_weights-") or "/layer_with_weights-" in k for k in keys):
        return "tf_keras"
    return "unknown"


class SavedModelSource(CheckpointSource):
    """A SavedModel folder: ``saved_model.pb`` plus its ``variables/`` checkpoint."""

    def __init__(self, path: Path):
        prefix = path / "variables" / "variables"
        if not prefix.with_name("variables.index").is_file():
            raise InvalidInputError(
                "SavedModel without variables (variables/variables.index)", location=str(path)
            )
        super().__init__(path, prefix, SAVED_MODEL)
        self.loadable = True
        self.model_name = sanitize_name(path.name)
        if (path / "keras_metadata.pb").is_file():
            self.flavour = "tf_keras"
            root = saved_model_keras_metadata(path / "keras_metadata.pb")
            if root:
                self.keras_config = root
                self.keras_version = root.get("keras_version")
                name = root.get("name") or (root.get("config") or {}).get("name")
                if name:
                    self.model_name = sanitize_name(name)
        elif any(
            key.startswith("_all_variables/")
            for var in self.variables
            for key in (var.location, *var.aliases)
        ):
            self.flavour = "keras3"  # keras.Model.export() tracks variables and _all_variables
        else:
            self.flavour = "tensorflow"


def open_source(path: Path | str) -> Source:
    """Open a SavedModel folder, a .keras archive, an .h5 file or a TF checkpoint."""
    path = Path(path)
    if not path.exists() and not path.with_name(path.name + ".index").exists():
        raise NotFoundError("no such file or folder", location=str(path))
    try:
        if path.is_dir() and (path / "saved_model.pb").is_file():
            return SavedModelSource(path)
        if path.is_file() and zipfile.is_zipfile(path):
            return KerasArchiveSource(path)
        if path.is_file() and _is_hdf5(path):
            return H5Source(path)
        if is_checkpoint(path):
            return CheckpointSource(path)
    except OSError as exc:  # permissions, a folder where a file belongs, I/O errors
        raise InvalidInputError(
            f"cannot read: {exc.strerror or exc}", location=exc.filename or str(path)
        ) from exc
    if path.is_dir() and (path / "saved_model.pbtxt").is_file():
        raise InvalidInputError(
            "text SavedModels (saved_model.pbtxt) are not supported", location=str(path)
        )
    raise InvalidInputError(
        "not a model: expected a SavedModel folder, a .keras archive, a Keras .h5 file or a "
        "TensorFlow checkpoint (a prefix with .index and .data-* files)",
        location=str(path),
    )


def _is_hdf5(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
    except OSError as exc:
        raise InvalidInputError(f"cannot read: {exc.strerror}", location=str(path)) from exc
    return head == b"\x89HDF\r\n\x1a\n"
