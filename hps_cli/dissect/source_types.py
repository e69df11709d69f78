"""What every model source of dissect is: its variables, and how to stream the rows of one.

Every source lists its variables (real name, shape, dtype, whether it is model or optimizer
state, where its bytes are) and streams the rows of one in bounded chunks. The sources
themselves are in sources.py (checkpoints, SavedModels) and keras_files.py (Keras files).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator

import numpy as np

from ..runtime.errors import NotFoundError
from .bundle import DTYPES
from .object_graph import BOOKKEEPING, MODEL, OPTIMIZER

__all__ = [
    "BOOKKEEPING",
    "MODEL",
    "OPTIMIZER",
    "CHECKPOINT",
    "SAVED_MODEL",
    "KERAS",
    "H5",
    "Variable",
    "Source",
    "sanitize_name",
]

CHECKPOINT, SAVED_MODEL, KERAS, H5 = "checkpoint", "saved_model", "keras", "h5"


@dataclass(frozen=True)
class Variable:
    """One variable of a model source."""

    name: str  # its real name, e.g. "user_emb/embeddings"
    shape: tuple[int, ...]
    dtype: str  # numpy-style name: float32, int64, string, ...
    kind: str  # MODEL, OPTIMIZER or BOOKKEEPING
    location: str  # checkpoint key or HDF5 dataset path
    path: str = ""  # object path in the checkpoint, or the HDF5 path
    aliases: tuple[str, ...] = ()
    layer: str | None = None  # the Keras layer owning it, when known
    layer_class: str | None = None  # that layer's class, when known
    evidence: tuple[str, ...] = ()  # why it is taken for an embedding table (inspect.py)
    crc32c: int | None = None  # TensorBundle's checksum of its bytes, when stored
    id_lookup: str | None = None  # an IntegerLookup layer feeding its Embedding (from config)

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        sizes = {v[0]: v[2] for v in DTYPES.values()}
        return int(np.prod(self.shape, dtype=np.int64)) * sizes.get(self.dtype, 0)

    def with_evidence(self, *items: str) -> "Variable":
        return replace(self, evidence=tuple(dict.fromkeys(self.evidence + items)))


@dataclass
class Source(ABC):
    """A model file or folder opened for dissecting."""

    path: Path
    format: str  # CHECKPOINT, SAVED_MODEL, KERAS or H5
    variables: list[Variable]
    flavour: str = "unknown"  # keras3, tf_keras, tensorflow (no Keras), unknown
    keras_version: str | None = None
    model_name: str | None = None
    loadable: bool = False  # a model can be loaded (for the dense part and the check)
    keras_config: dict | None = None
    notes: list[str] = field(default_factory=list)

    def variable(self, name: str) -> Variable:
        for var in self.variables:
            if name in (var.name, var.location, var.path) or name in var.aliases:
                return var
        raise NotFoundError(
            f"no variable named '{name}'",
            location=str(self.path),
            hint="list the variables with `hps dissect MODEL OUT --list`",
        )

    @abstractmethod
    def iter_rows(
        self, var: Variable, rows_per_chunk: int, buffers: int = 1
    ) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, rows) chunks; chunk ``i`` stays valid for ``buffers - 1`` more steps."""
        ...

    def close(self) -> None:  # noqa: B027 - optional hook: most sources hold nothing
        pass

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def sanitize_name(text: str) -> str:
    """A name valid in HPS configs (``[A-Za-z0-9_-]{1,120}``)."""
    cleaned = re.sub(r"[^A-Za-z0-9_\-]+", "_", text).strip("_") or "model"
    return cleaned[:120]
