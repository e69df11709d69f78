"""The HPS "pre-trained embeddings" workflow (hps_pretrained_model_training_demo), ported: a
model trained elsewhere is dissected into HPS tables; a new model reads them through a frozen
SparseLookupLayer and trains only its new Dense layers with ``fit``, under Keras 3 and tf_keras.
The loss goes down, the lookup layer has no weights, and the tables stay exactly as dissected.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers.dissect_models import trained_models

pytestmark = [pytest.mark.tf, pytest.mark.slow]

tf = pytest.importorskip("tensorflow")
hps = pytest.importorskip("hps_cli.tf")

ROWS, WIDTH, BATCH = 512, 5, 64


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """The trained notebook model (a 200 x 8 table read by embedding_lookup_sparse), dissected;
    HPS initialized from the dissect's ps.json as in the notebook (hps.Init)."""
    from hps_cli.dissect.pipeline import DissectOptions, dissect

    out = tmp_path_factory.mktemp("pretrained") / "dissected"
    result = dissect(trained_models() / "keras3" / "notebook_sm", out, DissectOptions(check=False))
    hps.Shutdown()
    hps.Init(global_batch_size=BATCH, ps_config_file=str(out / "ps.json"))
    yield out, result.manifest
    hps.Shutdown()


def _table_state(out, manifest):
    from hps_cli.runtime.table import TableReader

    table = manifest["tables"][0]
    with TableReader(out / table["dir"]) as reader:
        return np.array(reader.keys()), np.array(reader.vectors()), reader.sidecar.checksum()


def _dataset(vectors: np.ndarray):
    """Sparse ids (1..5 per row) and a label that depends on their mean embedding."""
    rng = np.random.default_rng(11)
    counts = rng.integers(1, WIDTH + 1, ROWS)
    indices = np.array([[r, j] for r in range(ROWS) for j in range(counts[r])], np.int64)
    values = rng.integers(0, vectors.shape[0], len(indices)).astype(np.int64)
    ids = tf.SparseTensor(indices, values, [ROWS, WIDTH])
    mean = tf.nn.embedding_lookup_sparse(vectors, ids, None, combiner="mean").numpy()
    direction = rng.normal(size=vectors.shape[1])
    label = (mean @ direction > np.median(mean @ direction)).astype(np.float32)[:, None]
    return tf.data.Dataset.from_tensor_slices((ids, label)).batch(BATCH)


@pytest.mark.parametrize("flavour", ["keras3", "tf_keras"])
def test_frozen_sparse_lookup_feeds_dense_layers_trained_with_fit(pretrained, flavour):
    out, manifest = pretrained
    keys_before, vectors, checksum_before = _table_state(out, manifest)
    assert np.array_equal(keys_before, np.arange(len(keys_before)))  # row-index keys
    layers = hps.layers_for(flavour)
    keras = layers.keras
    keras.utils.set_random_seed(5)
    table = manifest["tables"][0]
    ids = keras.Input(shape=(WIDTH,), sparse=True, dtype="int64", name="ids")
    lookup = layers.SparseLookupLayer(
        model_name=manifest["model_name"],
        table_id=0,
        emb_vec_size=table["dim"],
        emb_vec_dtype=tf.float32,
        name="pretrained",
    )
    x = lookup(ids, combiner="mean")
    x = keras.layers.Dense(16, activation="relu", name="fc_1")(x)
    out_layer = keras.layers.Dense(1, activation="sigmoid", name="fc_2")(x)
    model = keras.Model(ids, out_layer)
    model.compile(keras.optimizers.Adam(0.05), "binary_crossentropy", metrics=["accuracy"])
    data = _dataset(vectors)
    assert lookup.trainable is False and lookup.weights == []
    assert len(model.trainable_weights) == 4  # the two Dense layers only
    before = model.evaluate(data, verbose=0)[0]
    history = model.fit(data, epochs=8, verbose=0, shuffle=False)
    after, accuracy = model.evaluate(data, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert after < 0.75 * before and accuracy > 0.8, (before, after, accuracy)
    keys_after, vectors_after, checksum_after = _table_state(out, manifest)
    assert checksum_after == checksum_before  # the table files are untouched
    assert np.array_equal(vectors_after, vectors)
    served = layers.LookupLayer(manifest["model_name"], 0, table["dim"], tf.float32)(
        tf.constant(keys_before[:20])
    )
    assert np.array_equal(served.numpy(), vectors[:20])  # and so is what HPS serves
