"""The HPS layer classes of each Keras flavour, built once and registered in that Keras."""

from __future__ import annotations

from functools import cache
from types import ModuleType, SimpleNamespace

from .dense_layer import dense_layer_class
from .flavour import flavour_of, keras_module
from .key_cast import key_cast_class
from .layers import lookup_layer_classes


@cache
def _classes(flavour: str) -> SimpleNamespace:
    keras = keras_module(flavour)
    found = lookup_layer_classes(keras)
    found.DenseSavedModel = dense_layer_class(keras)
    found.KeyCast = key_cast_class(keras)
    found.keras = keras
    return found


def layers_for(keras: str | ModuleType) -> SimpleNamespace:
    """The layer classes for a Keras flavour ("keras3", "tf_keras") or module, registered
    under package "hps" in that Keras: ``.LookupLayer``, ``.SparseLookupLayer``,
    ``.DenseSavedModel``, ``.KeyCast``, ``.keras``."""
    return _classes(keras if isinstance(keras, str) else flavour_of(keras))
