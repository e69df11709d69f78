"""The Keras 2 (tf_keras) ``.h5`` weight layout: which layers a file holds and their weights.

A full-model save has group ``model_weights`` whose attribute ``layer_names`` lists the layers;
each layer group has attribute ``weight_names`` (e.g. ``user_emb/embeddings:0``) and the datasets
live at ``model_weights/<layer>/<weight name>``. A weights-only save (``save_weights``) puts
``layer_names`` on the root instead. Weights a model tracks itself (a bare ``tf.Variable``) are
in group ``top_level_model_weights``, which ``layer_names`` does not list; group
``optimizer_weights`` (full saves) lists the optimizer state in its own ``weight_names``.

`hps convert` reads the embedding layers of such a file, `hps dissect` every variable; both go
through this one reader. It takes an open ``h5py.File`` and imports nothing heavy itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..runtime.errors import InvalidInputError

TOP_LEVEL_GROUP = "top_level_model_weights"


@dataclass(frozen=True)
class Weight:
    """One weight of a Keras 2 file."""

    layer: str | None  # the layer from layer_names; None for the model's own and optimizer state
    name: str  # as stored in weight_names, e.g. "user_emb/embeddings:0"
    dataset: Any  # the h5py Dataset (``dataset.name`` is its absolute path in the file)


def text(value) -> str:
    """An HDF5 string attribute (bytes or str) as str."""
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def weights_root(h5):
    """The group holding the layer groups: ``model_weights`` of a full save, else the root."""
    return h5["model_weights"] if "model_weights" in h5 else h5


def layer_names(h5) -> list[str] | None:
    """The layers a Keras 2 file lists, or None when it is not a Keras 2 save (no
    ``layer_names`` attribute)."""
    root = weights_root(h5)
    if "layer_names" not in root.attrs:
        return None
    return [text(name) for name in root.attrs["layer_names"]]


def model_weights(h5, *, top_level: bool = True) -> list[Weight]:
    """Every weight of every listed layer, in file order; with ``top_level``, then those of
    ``top_level_model_weights`` (``layer`` None).

    A layer or weight that is listed but missing from the file is an InvalidInputError naming
    its path: the file is damaged, and leaving the weight out would hide that.
    """
    root = weights_root(h5)
    groups = layer_names(h5) or []
    if top_level and TOP_LEVEL_GROUP in root and TOP_LEVEL_GROUP not in groups:
        groups.append(TOP_LEVEL_GROUP)
    found = []
    for group_name in groups:
        group = _member(h5, root, group_name, "layer_names")
        layer = None if group_name == TOP_LEVEL_GROUP else group_name
        for name in group.attrs.get("weight_names", []):
            name = text(name)
            found.append(Weight(layer, name, _member(h5, group, name, "weight_names")))
    return found


def optimizer_weights(h5) -> list[Weight]:
    """The optimizer state of a full save (none without ``optimizer_weights``). A listed name
    without a dataset is left out: optimizer state is only reported, never converted."""
    if "optimizer_weights" not in h5:
        return []
    group = h5["optimizer_weights"]
    found = []
    for name in group.attrs.get("weight_names", []):
        name = text(name)
        if name in group:
            found.append(Weight(None, name, group[name]))
    return found


def _member(h5, group, name: str, listed_in: str):
    member = group.get(name)
    if member is None:
        raise InvalidInputError(
            f"'{name}' is listed in {listed_in} of {group.name} but not in the file",
            location=str(h5.filename),
            hint="the file is damaged or was not written by Keras; save the model again",
        )
    return member
