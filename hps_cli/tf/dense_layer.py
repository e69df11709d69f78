"""``DenseSavedModel``: a Keras layer that runs a SavedModel signature (the dense part).

``hps dissect`` writes the dense part as a SavedModel whose signature has named inputs (lookup
results and pass-through model inputs) and named outputs. This layer loads it with
``tf.saved_model.load`` and calls that signature, so an inference model is "HPS lookup layers →
DenseSavedModel" under Keras 3 and tf_keras alike, and the dense weights stay in the SavedModel
(the ``.keras`` file holds no copy). The path in its config is kept as given; a relative one
resolves against the package being loaded (``hps_cli.tf.load_model``), else the working
directory. Registered as ``hps>DenseSavedModel``.
"""

from __future__ import annotations

from types import ModuleType

import tensorflow as tf

from ..runtime.errors import InvalidInputError, NotFoundError
from . import export_context, process_runtime

SIGNATURE = "serving_default"


class _Loaded:
    """Holds the restored SavedModel outside Keras/TF tracking (its variables are not Keras
    weights, and saving the Keras model must not copy them)."""

    __slots__ = ("root", "function", "inputs", "outputs")

    def __init__(self, root, function, inputs: dict, outputs: list[str]):
        self.root, self.function, self.inputs, self.outputs = root, function, inputs, outputs


def load_signature(path, signature: str = SIGNATURE) -> _Loaded:
    """Load a SavedModel and describe one signature's named inputs and outputs."""
    resolved = process_runtime.resolve_path(path)
    if not (resolved / "saved_model.pb").is_file():
        raise NotFoundError(
            "no SavedModel here (saved_model.pb is missing)",
            location=str(resolved),
            hint="load the package with hps_cli.tf.load_model(package_dir)",
        )
    with tf.init_scope():
        root = tf.saved_model.load(str(resolved))
    if signature not in root.signatures:
        raise NotFoundError(
            f"the SavedModel has no signature '{signature}'",
            location=str(resolved),
            hint="signatures: " + ", ".join(root.signatures.keys()),
        )
    function = root.signatures[signature]
    inputs = dict(function.structured_input_signature[1])
    outputs = sorted(function.structured_outputs)
    return _Loaded(root, function, inputs, outputs)


def dense_layer_class(keras: ModuleType):
    """Build (and register under package "hps") the DenseSavedModel layer for one Keras."""

    @keras.saving.register_keras_serializable(package="hps", name="DenseSavedModel")
    class DenseSavedModel(keras.layers.Layer):
        """``DenseSavedModel(saved_model, signature="serving_default", input_names=None,
        output_names=None)``; ``call(inputs)`` with a list in ``input_names`` order (or a dict
        by name); returns the one output, or a list in ``output_names`` order."""

        def __init__(
            self, saved_model, signature=SIGNATURE, input_names=None, output_names=None, **kwargs
        ):
            kwargs.setdefault("trainable", False)
            super().__init__(**kwargs)
            self.saved_model = str(saved_model)
            self.signature = signature
            loaded = load_signature(self.saved_model, signature)
            self._hps_dense = loaded  # a plain holder: neither Keras nor TF tracks it
            self.input_names = list(input_names) if input_names else sorted(loaded.inputs)
            self.output_names = list(output_names) if output_names else loaded.outputs
            missing = sorted(set(loaded.inputs) - set(self.input_names))
            unknown = sorted(set(self.input_names) - set(loaded.inputs))
            if missing or unknown or len(set(self.input_names)) != len(self.input_names):
                raise InvalidInputError(
                    f"input_names must name each input of signature '{signature}' once "
                    f"(missing {missing}, unknown {unknown})",
                    location=self.saved_model,
                )
            unknown = sorted(set(self.output_names) - set(loaded.outputs))
            if unknown or not self.output_names:
                raise InvalidInputError(
                    f"output_names {unknown or []} are not outputs of "
                    f"signature '{signature}' ({loaded.outputs})",
                    location=self.saved_model,
                )
            self.supports_jit = False

        def build(self, *shapes, **named_shapes):
            self.built = True

        def call(self, inputs):
            loaded = self._hps_dense
            if isinstance(inputs, dict):
                values = [inputs[name] for name in self.input_names]
            else:
                values = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
            if len(values) != len(self.input_names):
                raise InvalidInputError(
                    f"expected {len(self.input_names)} inputs "
                    f"({self.input_names}), got {len(values)}",
                    location=self.name,
                )
            feed = {}
            for name, value in zip(self.input_names, values):
                spec = loaded.inputs[name]
                value = tf.convert_to_tensor(value)
                feed[name] = value if value.dtype == spec.dtype else tf.cast(value, spec.dtype)
            export_context.track(loaded.root)  # a deployable SavedModel saves its variables
            result = loaded.function(**feed)
            outputs = [result[name] for name in self.output_names]
            return outputs[0] if len(outputs) == 1 else outputs

        def get_config(self) -> dict:
            config = super().get_config()
            config.update(
                saved_model=self.saved_model,
                signature=self.signature,
                input_names=list(self.input_names),
                output_names=list(self.output_names),
            )
            return config

    return DenseSavedModel
