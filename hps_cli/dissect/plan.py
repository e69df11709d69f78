"""What a loaded model looks like to dissect: its inputs, the table lookups, the dense part.

A ``ModelPlan`` is built from a Keras functional model (model_keras.py) or from a SavedModel's
serving graph (model_graph.py). Both say which model input feeds which table with which
combiner, how client ids map to table rows (``KeyMap``), what the dense SavedModel's inputs and
outputs are, and can run the original model for the self-check.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

COMBINERS = ("none", "sum", "mean", "sqrtn")


@dataclass
class KeyMap:
    """How the ids a client sends map to rows of a table.

    ``row_index``: the id is the row. ``integer_lookup_vocabulary``: an IntegerLookup layer
    maps ids to rows; ``keys[i]`` is stored for row ``rows[i]``. Rows no id maps to (OOV
    buckets) are not written: an id outside the vocabulary then gets the table's default value
    in HPS, not the OOV row's vector.
    """

    source: str = "row_index"
    keys: np.ndarray | None = None
    rows: np.ndarray | None = None
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        doc = {"source": self.source}
        doc.update(self.details)
        return doc


@dataclass
class ModelInput:
    """One input of the original model (a signature input, or a SparseTensor's three parts)."""

    name: str
    dtype: str
    shape: list[int | None]
    format: str = "dense"  # "dense" tensor or "sparse" (indices, values, dense_shape)
    components: dict[str, str] | None = None


@dataclass
class TensorSig:
    name: str
    dtype: str
    shape: list[int | None]

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass
class Lookup:
    """One model input looked up in one table; its result is one dense-part input."""

    table_variable: str
    model_input: str
    combiner: str
    ids_per_sample: int | None
    dense_input: TensorSig
    keys: KeyMap


@dataclass
class DirectInput:
    """A model input that goes to the dense part unchanged."""

    model_input: str
    dense_input: TensorSig


class ModelPlan(ABC):
    """Base of the Keras and graph plans."""

    cut: str = ""  # "keras_functional" or "graph"
    variables_kept: bool = True  # dense weights stay variables (else frozen to constants)
    signature: str | None = None

    def __init__(self):
        self.inputs: list[ModelInput] = []
        self.lookups: list[Lookup] = []
        self.direct: list[DirectInput] = []
        self.outputs: list[TensorSig] = []

    @property
    def dense_signature(self) -> list[TensorSig]:
        """The dense SavedModel's inputs, in order: lookups first, then direct inputs."""
        return [lk.dense_input for lk in self.lookups] + [d.dense_input for d in self.direct]

    def input(self, name: str) -> ModelInput:
        return next(i for i in self.inputs if i.name == name)

    @abstractmethod
    def export_dense(self, dest: Path) -> None: ...

    @abstractmethod
    def predict(self, feed: dict[str, object]) -> dict[str, np.ndarray]:
        """Outputs of the original model for ``feed`` (model input name -> array or SparseIds)."""
        ...


@dataclass
class SparseIds:
    """A batch of variable-length id lists in SparseTensor form (row-major, like tf.sparse)."""

    indices: np.ndarray  # (nnz, 2) int64
    values: np.ndarray  # (nnz,)
    dense_shape: np.ndarray  # (2,) int64

    def rows(self) -> list[np.ndarray]:
        batch = int(self.dense_shape[0])
        return [self.values[self.indices[:, 0] == b] for b in range(batch)]


def dense_input_names(pairs: list[tuple[str, str]], taken: set[str]) -> list[str]:
    """Names for the dense inputs fed by lookups: ``emb_<input>`` (``_<table>`` if needed)."""
    per_input: dict[str, int] = {}
    for model_input, _ in pairs:
        per_input[model_input] = per_input.get(model_input, 0) + 1
    names: list[str] = []
    used = set(taken)
    for model_input, table in pairs:
        base = f"emb_{model_input}" if per_input[model_input] == 1 else f"emb_{model_input}_{table}"
        base = "".join(c if c.isalnum() or c == "_" else "_" for c in base)
        name, n = base, 2
        while name in used:
            name, n = f"{base}_{n}", n + 1
        used.add(name)
        names.append(name)
    return names
