"""Saving a dense part as a SavedModel with explicitly named inputs and outputs.

The dense part is wrapped in a ``tf.Module`` whose ``serving_default`` is a ``tf.function``
with an ``input_signature`` of named ``TensorSpec``s, so the inputs are called ``emb_user``,
``dense`` ... instead of Keras 3's generated ``keras_tensor_1CLONE``, and the outputs carry the
model's output names. Only variables are tracked (not Keras objects), so loading the result
needs TensorFlow alone: ``tf.saved_model.load(dir).signatures["serving_default"]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from ..common.tf_loader import import_tensorflow
from .plan import TensorSig

SIGNATURE = "serving_default"


def save_dense(
    dest: Path,
    call: Callable[[list], Sequence],
    inputs: list[TensorSig],
    outputs: list[TensorSig],
    variables: Sequence = (),
) -> None:
    """Save ``call(list of input tensors) -> output tensors`` as a SavedModel at ``dest``."""
    tf = import_tensorflow("saving the dense part")
    specs = [tf.TensorSpec(sig.shape, tf.as_dtype(sig.dtype), name=sig.name) for sig in inputs]
    names = [sig.name for sig in outputs]

    @tf.function(input_signature=specs)
    def serve(*args):
        result = call(list(args))
        flat = tf.nest.flatten(result)
        return {name: tf.identity(tensor, name=name) for name, tensor in zip(names, flat)}

    module = tf.Module()
    module.dense_variables = list(variables)
    module.serve = serve
    tf.saved_model.save(module, str(dest), signatures={SIGNATURE: serve.get_concrete_function()})


def load_dense(path: Path):
    """(loaded root, serving function) of a dense SavedModel; keep the root alive while calling."""
    tf = import_tensorflow("loading the dense part")
    root = tf.saved_model.load(str(path))
    return root, root.signatures[SIGNATURE]
