"""What the user may tell the readers beyond the input path."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class OpenOptions:
    dim: int | None = None  # floats per vector, where the input cannot tell (SOK v1)
    keys: Path | None = None  # a .npy of keys for a .npy / HDF5 matrix (else row indices)
    dataset: str | None = None  # an HDF5 dataset path, e.g. /a/b
    model: str | None = None  # the model whose families to read from a RocksDB
