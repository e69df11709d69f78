"""Train the small models the dissect tests take apart, and save them in every format.

    python tests/helpers/dissect_train.py {keras3|tf_keras|plain} OUT_DIR

Run in a subprocess: ``tf_keras`` sets TF_USE_LEGACY_KERAS=1 before TensorFlow is imported, so
``tf.keras`` is Keras 2 there. Every model is trained for one epoch on a few hundred synthetic
rows, then saved; ``<name>.npz`` next to it holds what the tests compare against: the trained
table weights (``table:<variable>``), sample inputs (``in:<input>``, sparse inputs as
``in:<input>:indices|values|dense_shape``) and the trained model's predictions on them
(``out:<output>``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

FLAVOUR, OUT = sys.argv[1], Path(sys.argv[2])
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
if FLAVOUR == "tf_keras":
    os.environ["TF_USE_LEGACY_KERAS"] = "1"

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

tf.config.set_visible_devices([], "GPU")
keras = tf.keras
ROWS, SEED = 320, 7
VOCAB = np.array([1005, 2010, 3333, 4040, 5555, 777, 888, 999, 31337, 4242], dtype=np.int64)
rng = np.random.default_rng(SEED)
tf.random.set_seed(SEED)
OUT.mkdir(parents=True, exist_ok=True)


def save_expected(name: str, tables: dict, inputs: dict, outputs: dict) -> None:
    arrays = {f"table:{k}": np.asarray(v) for k, v in tables.items()}
    for key, value in inputs.items():
        if isinstance(value, tf.SparseTensor):
            arrays[f"in:{key}:indices"] = value.indices.numpy()
            arrays[f"in:{key}:values"] = value.values.numpy()
            arrays[f"in:{key}:dense_shape"] = value.dense_shape.numpy()
        else:
            arrays[f"in:{key}"] = np.asarray(value)
    for key, value in outputs.items():
        arrays[f"out:{key}"] = np.asarray(value)
    np.savez(OUT / f"{name}.npz", **arrays)


def dlrm_data(n):
    return {
        "user": rng.integers(0, 100, (n, 1)),
        "items": rng.integers(0, 60, (n, 3)),
        "dense": rng.normal(size=(n, 4)).astype("float32"),
    }


def dlrm() -> None:
    """Functional DLRM-like model: two Embeddings and dense features."""
    user = keras.Input((1,), dtype="int64", name="user")
    items = keras.Input((3,), dtype="int64", name="items")
    dense = keras.Input((4,), dtype="float32", name="dense")
    u = keras.layers.Flatten()(keras.layers.Embedding(100, 8, name="user_emb")(user))
    i = keras.layers.Flatten()(keras.layers.Embedding(60, 8, name="item_emb")(items))
    bottom = keras.layers.Dense(8, activation="relu", name="bottom")(dense)
    x = keras.layers.Concatenate()([u, i, bottom])
    x = keras.layers.Dense(16, activation="relu", name="fc1")(x)
    out = keras.layers.Dense(1, activation="sigmoid", name="ctr")(x)
    model = keras.Model([user, items, dense], out, name="dlrm_like")
    model.compile(keras.optimizers.Adam(0.01), "binary_crossentropy")
    data = dlrm_data(ROWS)
    label = (data["dense"][:, :1] > 0).astype("float32")
    model.fit(
        [data["user"], data["items"], data["dense"]], label, epochs=1, batch_size=32, verbose=0
    )
    sample = dlrm_data(16)
    pred = model([sample["user"], sample["items"], sample["dense"]], training=False)
    tables = {
        "user_emb/embeddings": model.get_layer("user_emb").get_weights()[0],
        "item_emb/embeddings": model.get_layer("item_emb").get_weights()[0],
    }
    save_expected("dlrm", tables, sample, {"ctr": pred})
    if FLAVOUR == "keras3":
        model.save(OUT / "dlrm.keras")
        model.export(str(OUT / "dlrm_export"), verbose=False)
        tf.train.Checkpoint(model=model, optimizer=model.optimizer).write(
            str(OUT / "dlrm_ckpt" / "ckpt")
        )
    else:
        model.save(OUT / "dlrm.h5")
        model.save(OUT / "dlrm_sm")
        model.save_weights(str(OUT / "dlrm_weights" / "ckpt"))


class NotebookModel(keras.Model):
    """The HPS notebooks' pattern: a plain tf.Variable table and embedding_lookup_sparse."""

    def __init__(self, vocab: int, dim: int, **kwargs):
        super().__init__(**kwargs)
        self.params = tf.Variable(
            tf.random.uniform([vocab, dim], -0.1, 0.1, seed=SEED), name="params"
        )
        self.fc_1 = keras.layers.Dense(16, activation="relu", name="fc_1")
        self.fc_2 = keras.layers.Dense(1, activation="sigmoid", name="fc_2")

    def build(self, input_shape=None):  # layers build on the first call
        self.built = True

    def call(self, inputs):
        sp_ids, dense = inputs
        vectors = tf.nn.embedding_lookup_sparse(
            self.params, sp_ids, sp_weights=None, combiner="mean"
        )
        return self.fc_2(self.fc_1(tf.concat([vectors, dense], axis=1)))


def sparse_ids(n: int, vocab: int, width: int) -> tf.SparseTensor:
    counts = rng.integers(1, width + 1, n)
    indices = np.array([[r, j] for r in range(n) for j in range(counts[r])], dtype=np.int64)
    values = rng.integers(0, vocab, len(indices)).astype(np.int64)
    return tf.SparseTensor(indices, values, [n, width])


def notebook() -> None:
    vocab, dim, width = 200, 8, 5
    model = NotebookModel(vocab, dim, name="notebook_dnn")
    optimizer = keras.optimizers.Adam(0.01)
    ids, dense = sparse_ids(ROWS, vocab, width), rng.normal(size=(ROWS, 4)).astype("float32")
    label = (dense[:, :1] > 0).astype("float32")
    model([ids, dense])
    trainable = list(model.trainable_variables)
    if not any(v is model.params for v in trainable):  # Keras 3 does not track tf.Variable
        trainable.append(model.params)
    for start in range(0, ROWS, 32):
        batch_ids = tf.sparse.slice(ids, [start, 0], [32, width])  # indices relative to start
        with tf.GradientTape() as tape:
            pred = model([batch_ids, dense[start : start + 32]])
            loss = tf.reduce_mean(keras.losses.binary_crossentropy(label[start : start + 32], pred))
        optimizer.apply_gradients(zip(tape.gradient(loss, trainable), trainable))
    sample_ids, sample_dense = (
        sparse_ids(16, vocab, width),
        rng.normal(size=(16, 4)).astype("float32"),
    )
    pred = model([sample_ids, sample_dense])
    save_expected(
        "notebook",
        {"params": model.params.numpy()},
        {"ids": sample_ids, "dense": sample_dense},
        {"score": pred},
    )
    spec = [
        tf.SparseTensorSpec([None, width], tf.int64),
        tf.TensorSpec([None, 4], tf.float32, name="dense"),
    ]
    if FLAVOUR == "keras3":
        module = tf.Module()
        module.params = model.params
        module.dense_variables = list(model.variables)

        @tf.function(input_signature=spec)
        def serve(ids, dense):
            return {"score": model([ids, dense])}

        module.serve = serve
        tf.saved_model.save(module, str(OUT / "notebook_sm"), signatures={"serving_default": serve})
        tf.train.Checkpoint(model=model, optimizer=optimizer).write(
            str(OUT / "notebook_ckpt" / "ckpt")
        )
    else:

        @tf.function(input_signature=spec)
        def serve(ids, dense):
            return {"score": model([ids, dense])}

        model.save(OUT / "notebook_sm", signatures={"serving_default": serve})
        model.save_weights(str(OUT / "notebook_weights.h5"))


def lookup() -> None:
    """IntegerLookup in front of an Embedding: clients send raw ids."""
    raw = keras.Input((2,), dtype="int64", name="raw_ids")
    ids = keras.layers.IntegerLookup(vocabulary=VOCAB, name="id_lookup")(raw)
    emb = keras.layers.Embedding(len(VOCAB) + 1, 4, name="id_emb")(ids)
    out = keras.layers.Dense(1, name="score")(keras.layers.Flatten()(emb))
    model = keras.Model(raw, out, name="lookup_model")
    model.compile(keras.optimizers.Adam(0.01), "mse")
    data = rng.choice(VOCAB, (ROWS, 2))
    model.fit(data, rng.normal(size=(ROWS, 1)), epochs=1, batch_size=32, verbose=0)
    sample = rng.choice(VOCAB, (16, 2))
    pred = model(sample, training=False)
    layer = model.get_layer("id_lookup")
    rows = np.asarray(layer(VOCAB)).reshape(-1)
    np.save(OUT / "lookup_rows.npy", np.stack([VOCAB, rows]))
    save_expected(
        "lookup",
        {"id_emb/embeddings": model.get_layer("id_emb").get_weights()[0]},
        {"raw_ids": sample},
        {"score": pred},
    )
    if FLAVOUR == "keras3":
        model.save(OUT / "lookup.keras")
        model.export(str(OUT / "lookup_export"), verbose=False)
    else:
        model.save(OUT / "lookup.h5")
        model.save(OUT / "lookup_sm")


def plain() -> None:
    """A bare tf.train.Checkpoint: no Keras, no graph; and one without any rank-2 variable."""
    table = tf.Variable(rng.normal(size=(300, 16)).astype("float32"), name="item_table")
    kernel = tf.Variable(rng.normal(size=(16, 4)).astype("float32"), name="head_kernel")
    bias = tf.Variable(np.zeros(4, "float32"), name="head_bias")
    tf.train.Checkpoint(item_table=table, head=tf.Module(), kernel=kernel, bias=bias).write(
        str(OUT / "plain_ckpt" / "ckpt")
    )
    save_expected("plain", {"item_table": table.numpy(), "head_kernel": kernel.numpy()}, {}, {})
    tf.train.Checkpoint(bias=bias, step=tf.Variable(3, dtype=tf.int64)).write(
        str(OUT / "norank2_ckpt" / "ckpt")
    )


if FLAVOUR == "plain":
    plain()
else:
    dlrm()
    notebook()
    lookup()
(OUT / "DONE").write_text(FLAVOUR)
