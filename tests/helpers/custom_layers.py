"""A custom Keras layer for the --custom-objects tests, built on ``tf.keras`` as third-party
libraries do (so it is a tf_keras class under TF_USE_LEGACY_KERAS=1, else a Keras 3 one).

The spec forms the tests use: ``custom_layers:CUSTOM_OBJECTS`` (a dict), ``custom_layers:LAYERS``
(a list), ``custom_layers:custom_objects`` (a function returning a dict), ``custom_layers:Scale``
(a class), ``custom_layers`` (import only).
"""

from __future__ import annotations

import tensorflow as tf


class Scale(tf.keras.layers.Layer):
    """Multiplies by a constant factor (no weights)."""

    def __init__(self, factor: float = 2.0, **kwargs):
        super().__init__(**kwargs)
        self.factor = float(factor)

    def call(self, inputs):
        return inputs * self.factor

    def get_config(self) -> dict:
        return {**super().get_config(), "factor": self.factor}


CUSTOM_OBJECTS = {"Scale": Scale}
LAYERS = [Scale]


def custom_objects() -> dict:
    return dict(CUSTOM_OBJECTS)
