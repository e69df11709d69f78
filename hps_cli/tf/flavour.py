"""Which Keras the layers are built for: Keras 3 (``keras``) or Keras 2 (``tf_keras``).

TensorFlow >= 2.16 makes ``tf.keras`` Keras 3 unless ``TF_USE_LEGACY_KERAS=1`` was set before
TensorFlow was imported, in which case ``tf.keras`` is ``tf_keras``. The HPS layers follow the
same rule by default, so a notebook that uses ``tf.keras`` gets layers of the same Keras; the
other flavour's classes are available on demand (``hps_cli.tf.layers_for("tf_keras")``).
"""

from __future__ import annotations

import os
from types import ModuleType

from ..runtime.errors import DependencyMissingError, InvalidInputError

KERAS3 = "keras3"
TF_KERAS = "tf_keras"
FLAVOURS = (KERAS3, TF_KERAS)


def legacy_requested() -> bool:
    """TF_USE_LEGACY_KERAS as TensorFlow reads it ("1", "true", "yes": tf_keras)."""
    return os.environ.get("TF_USE_LEGACY_KERAS", "").strip().lower() in ("1", "true", "yes")


def default_flavour() -> str:
    return TF_KERAS if legacy_requested() else KERAS3


def keras_module(flavour: str) -> ModuleType:
    """The Keras module of a flavour (imports it)."""
    if flavour == KERAS3:
        try:
            import keras
        except ImportError as exc:
            raise DependencyMissingError("keras", "tf", "the HPS TensorFlow layers") from exc
        if not keras.__version__.startswith("3."):
            raise DependencyMissingError("keras>=3", "tf", "the HPS TensorFlow layers (Keras 3)")
        return keras
    if flavour == TF_KERAS:
        try:
            import tf_keras
        except ImportError as exc:
            raise DependencyMissingError("tf_keras", "tf", "the HPS layers under tf_keras") from exc
        return tf_keras
    raise InvalidInputError(
        f"unknown Keras flavour '{flavour}'", location="keras", hint="use keras3 or tf_keras"
    )


def flavour_of(module_or_layer: object) -> str:
    """keras3 or tf_keras, for a Keras module, a layer or a model of either."""
    name = (
        module_or_layer.__name__
        if isinstance(module_or_layer, ModuleType)
        else type(module_or_layer).__module__
    )
    return TF_KERAS if name.split(".")[0] == "tf_keras" else KERAS3
