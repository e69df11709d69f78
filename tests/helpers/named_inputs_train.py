"""Small models whose input names TensorFlow rewrites, saved in every format; no custom code
except the ``Scale`` model.

    python tests/helpers/named_inputs_train.py {keras3|tf_keras} OUT_DIR

A functional model with inputs ``C1``, ``C2`` (int32 ids) and ``I1`` (float32), as recommender
libraries name Criteo's columns: TensorFlow lower-cases placeholder names (``c1``), so a
SavedModel's graph no longer names them as its signature does. Keras 3 writes ``plain.keras``
and ``plain_export/`` (``model.export``) and, with no Keras at all, ``module_sm/``: a
``tf.Module`` whose signature inputs are named ``User-ID``, ``item.ids`` and ``Dense2``
(TensorFlow makes them ``User_ID``, ``item_ids``, ``Dense2``; placeholders ``user_id``, ...).
tf_keras writes ``plain.keras`` (a tf_keras archive: no layer names in its weights file),
``plain.h5``, ``plain_sm/`` (``model.save``) and ``plain_tf_sm/`` (``tf.saved_model.save``).
Both write ``scale.keras`` (and tf_keras ``scale.h5``): the same model with a custom ``Scale``
layer (helpers/custom_layers.py). ``<name>.npz`` holds sample inputs and predictions in the
layout of the other test models (``in:<input>``, ``out:<output>``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

FLAVOUR, OUT = sys.argv[1], Path(sys.argv[2])
os.environ["TF_USE_LEGACY_KERAS"] = "1" if FLAVOUR == "tf_keras" else "0"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from custom_layers import Scale  # noqa: E402

tf.config.set_visible_devices([], "GPU")
keras = tf.keras
rng = np.random.default_rng(3)
tf.random.set_seed(3)
OUT.mkdir(parents=True, exist_ok=True)


def data(rows: int) -> dict:
    return {
        "C1": rng.integers(0, 10, (rows, 1)).astype("int32"),
        "C2": rng.integers(0, 7, (rows, 1)).astype("int32"),
        "I1": rng.random((rows, 2)).astype("float32"),
    }


def save_npz(name: str, sample: dict, output: str, pred) -> None:
    arrays = {f"in:{k}": v for k, v in sample.items()}
    arrays[f"out:{output}"] = np.asarray(pred)
    np.savez(OUT / f"{name}.npz", **arrays)


def functional(custom: bool):
    c1 = keras.Input((1,), name="C1", dtype="int32")
    c2 = keras.Input((1,), name="C2", dtype="int32")
    i1 = keras.Input((2,), name="I1", dtype="float32")
    e1 = keras.layers.Flatten()(keras.layers.Embedding(10, 4, name="emb_C1")(c1))
    e2 = keras.layers.Flatten()(keras.layers.Embedding(7, 4, name="emb_C2")(c2))
    x = keras.layers.Concatenate()([e1, e2, i1])
    x = keras.layers.Dense(8, activation="relu", name="hidden")(x)
    if custom:
        x = Scale(0.5, name="scale")(x)
    out = keras.layers.Dense(1, activation="sigmoid", name="score")(x)
    model = keras.Model([c1, c2, i1], out, name="scaled" if custom else "plain")
    model.compile("adam", "binary_crossentropy")
    train = data(128)
    model.fit(train, rng.integers(0, 2, (128, 1)).astype("float32"), epochs=1, verbose=0)
    return model


def module_saved_model() -> None:
    user = tf.Variable(rng.random((20, 4)).astype("float32"), name="user_table")
    item = tf.Variable(rng.random((10, 4)).astype("float32"), name="item_table")
    weights = tf.Variable(rng.random((10, 1)).astype("float32"), name="head")
    specs = [
        tf.TensorSpec([None, 1], tf.int64, name="User-ID"),
        tf.TensorSpec([None, 1], tf.int32, name="item.ids"),
        tf.TensorSpec([None, 2], tf.float32, name="Dense2"),
    ]

    @tf.function(input_signature=specs)
    def serve(users, items, dense):
        u = tf.reshape(tf.gather(user, users), [-1, 4])
        i = tf.reshape(tf.gather(item, items), [-1, 4])
        return {"Score": tf.matmul(tf.concat([u, i, dense], 1), weights)}

    module = tf.Module()
    module.variables_kept = [user, item, weights]
    module.serve = serve
    tf.saved_model.save(module, str(OUT / "module_sm"), signatures={"serving_default": serve})
    sample = {
        "User_ID": rng.integers(0, 20, (8, 1)).astype("int64"),
        "item_ids": rng.integers(0, 10, (8, 1)).astype("int32"),
        "Dense2": rng.random((8, 2)).astype("float32"),
    }
    pred = serve(sample["User_ID"], sample["item_ids"], sample["Dense2"])["Score"]
    save_npz("module_sm", sample, "Score", pred)


for custom in (False, True):
    model = functional(custom)
    sample = data(8)
    name = "scale" if custom else "plain"
    save_npz(name, sample, "score", model(sample, training=False))
    model.save(OUT / f"{name}.keras")
    if FLAVOUR == "tf_keras":
        model.save(OUT / f"{name}.h5")
    if custom:
        continue
    if FLAVOUR == "keras3":
        model.export(str(OUT / "plain_export"), verbose=False)
    else:
        model.save(OUT / "plain_sm", save_format="tf")
        tf.saved_model.save(model, str(OUT / "plain_tf_sm"))
if FLAVOUR == "keras3":
    module_saved_model()
(OUT / "DONE").write_text(FLAVOUR)
