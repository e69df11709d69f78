"""hps_cli.tf.export_saved_model on models written with the HPS layers, as the HPS notebooks
write them: Keras 3 and tf_keras, functional and subclassed; LookupLayer with max_norm,
SparseLookupLayer with weights, every combiner and max_norm; ids the tables do not hold. Each
SavedModel runs by TensorFlow alone in a process that cannot import hps_cli, and must predict
what the model predicts in process through the HPS runtime (the hierarchy path).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers.saved_model_helpers import run_fresh

pytestmark = [pytest.mark.tf, pytest.mark.slow]

tf = pytest.importorskip("tensorflow")
hps = pytest.importorskip("hps_cli.tf")

from hps_cli.runtime.errors import InvalidInputError  # noqa: E402
from hps_cli.runtime.table import write_table  # noqa: E402

VOCAB, DIM, SMALL_VOCAB, SMALL_DIM = 200, 8, 50, 4
BATCH, WIDTH = 5, 4
COMBINERS = ("sum", "mean", "sqrtn")
FLAVOURS = ("keras3", "tf_keras")


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    folder = tmp_path_factory.mktemp("export")
    rng = np.random.default_rng(8)
    write_table(folder / "big", np.arange(VOCAB), rng.normal(size=(VOCAB, DIM)).astype("float32"))
    write_table(
        folder / "small",
        np.arange(SMALL_VOCAB)[::-1].copy(),  # keys descending: the export sorts them
        rng.normal(size=(SMALL_VOCAB, SMALL_DIM)).astype("float32"),
    )
    doc = {
        "supportlonglong": True,
        "models": [
            {
                "model": "demo",
                "sparse_files": ["big", "small"],
                "embedding_table_names": ["big", "small"],
                "embedding_vecsize_per_table": [DIM, SMALL_DIM],
                "maxnum_catfeature_query_per_table_per_sample": [3, WIDTH],
                "default_value_for_each_table": [0.3, -1.0],
                "deployed_device_list": [0],
                "max_batch_size": 16,
                "hit_rate_threshold": 1.0,
            }
        ],
    }
    (folder / "ps.json").write_text(json.dumps(doc))
    return folder


def _inputs() -> dict:
    """ids (one unknown), sparse ids with weights (unknown ids, an empty row in the middle)."""
    rows = [[1, 2, 3], [49], [], [7, 999, 8, 9], [0, 0]]
    indices = np.array([[r, j] for r, row in enumerate(rows) for j in range(len(row))], np.int64)
    values = np.array([v for row in rows for v in row], np.int64)
    return {
        "ids": np.array([[1, 2, 3], [4, 5, 6], [7, 8, 500], [0, 199, 9], [10, 11, 12]], np.int64),
        "sp_indices": indices,
        "sp_values": values,
        "sp_dense_shape": np.array([BATCH, WIDTH], np.int64),
        "w_values": np.linspace(0.5, 2.0, len(values)).astype(np.float32),
        "dense": np.linspace(-1, 1, BATCH * 2, dtype=np.float32).reshape(BATCH, 2),
    }


def _notebook_model(flavour: str, combiner: str, config: str):
    """Subclassed, as in the HPS notebooks: both layers, weights and max_norm, a Dense head."""
    layers = hps.layers_for(flavour)
    keras = layers.keras

    class Notebook(keras.Model):
        def __init__(self):
            super().__init__()
            self.lookup = layers.LookupLayer("demo", 0, DIM, "float32", ps_config_file=config)
            self.sparse = layers.SparseLookupLayer(
                "demo", 1, SMALL_DIM, "float32", ps_config_file=config
            )
            self.head = keras.layers.Dense(1, kernel_initializer="glorot_uniform", name="head")

        def call(self, inputs):
            ids, sp_ids, sp_weights, dense = inputs
            a = self.lookup(ids, max_norm=0.7)
            s = self.sparse(sp_ids, sp_weights, combiner=combiner, max_norm=1.0)
            flat = tf.concat([tf.reshape(a, [-1, 3 * DIM]), s, dense], axis=1)
            return {"score": self.head(flat), "pooled": s}

    return Notebook()


NOTEBOOK_SIGNATURE = {
    "ids": tf.TensorSpec([None, 3], tf.int64),
    "sp": tf.SparseTensorSpec([None, WIDTH], tf.int64),
    "w": tf.SparseTensorSpec([None, WIDTH], tf.float32),
    "dense": tf.TensorSpec([None, 2], tf.float32),
}


def _notebook_feed(data: dict) -> list:
    sp = tf.SparseTensor(data["sp_indices"], data["sp_values"], data["sp_dense_shape"])
    weights = tf.SparseTensor(data["sp_indices"], data["w_values"], data["sp_dense_shape"])
    return [tf.constant(data["ids"]), sp, weights, tf.constant(data["dense"])]


def _signature_feed(data: dict) -> dict:
    return {
        "ids": data["ids"],
        "sp_indices": data["sp_indices"],
        "sp_values": data["sp_values"],
        "sp_dense_shape": data["sp_dense_shape"],
        "w_indices": data["sp_indices"],
        "w_values": data["w_values"],
        "w_dense_shape": data["sp_dense_shape"],
        "dense": data["dense"],
    }


@pytest.fixture(scope="module")
def exported(tables, tmp_path_factory):
    """Every flavour x combiner: the in-process prediction (HPS runtime) and the export."""
    base = tmp_path_factory.mktemp("exported")
    config = str(tables / "ps.json")
    data = _inputs()
    cases, wanted = {}, {}
    hps.Shutdown()
    try:
        for flavour in FLAVOURS:
            for combiner in COMBINERS:
                name = f"{flavour}-{combiner}"
                model = _notebook_model(flavour, combiner, config)
                outputs = model(_notebook_feed(data))
                wanted[name] = {k: v.numpy() for k, v in outputs.items()}
                result = hps.export_saved_model(
                    model, base / name, input_signature=NOTEBOOK_SIGNATURE
                )
                assert [t["table"] for t in result.tables] == ["demo/big", "demo/small"]
                cases[name] = (base / name, _signature_feed(data))
    finally:
        hps.Shutdown()
    return {"fresh": run_fresh(cases, base / "fresh"), "wanted": wanted, "data": data}


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("combiner", COMBINERS)
def test_export_without_hps_predicts_like_the_model(exported, flavour, combiner):
    name = f"{flavour}-{combiner}"
    result = exported["fresh"][name]
    assert result["doc"]["hps_modules"] == []
    assert sorted(result["doc"]["inputs"]) == sorted(_signature_feed(exported["data"]))
    for key, want in exported["wanted"][name].items():
        got = result["outputs"][key]
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5, err_msg=key)


def test_sparse_lookup_with_weights_matches_tensorflow(exported, tables):
    """The exported pooling against tf.nn.embedding_lookup_sparse on the same weights (known
    ids only: TensorFlow's op has no default vector), and the default for unknown ids."""
    from hps_cli.runtime.table import TableReader

    data = exported["data"]
    with TableReader(tables / "small") as reader:
        order = np.argsort(reader.keys())
        params = np.asarray(reader.vectors())[order]
    known = data["sp_values"] < SMALL_VOCAB
    keep = np.flatnonzero(known)
    for combiner in COMBINERS:
        got = exported["fresh"][f"keras3-{combiner}"]["outputs"]["pooled"]
        rows = np.unique(data["sp_indices"][keep, 0])
        only_known = [r for r in rows if known[data["sp_indices"][:, 0] == r].all()]
        sp = tf.SparseTensor(
            data["sp_indices"][keep], data["sp_values"][keep], data["sp_dense_shape"]
        )
        weights = tf.SparseTensor(
            data["sp_indices"][keep], data["w_values"][keep], data["sp_dense_shape"]
        )
        want = tf.nn.embedding_lookup_sparse(
            params, sp, weights, combiner=combiner, max_norm=1.0
        ).numpy()
        np.testing.assert_allclose(got[only_known], want[only_known], rtol=0, atol=1e-5)
        assert np.all(got[2] == 0)  # the empty row in the middle
        # Row 3 holds id 999, which the table lacks: its default vector (-1.0s, clipped to
        # norm 1 like the others) is pooled with the rest, as the HPS runtime does it.
        at = np.flatnonzero(data["sp_indices"][:, 0] == 3)
        default = np.full(SMALL_DIM, -1.0)
        vectors = np.array(
            [params[i] if i < SMALL_VOCAB else default for i in data["sp_values"][at]], np.float64
        )
        vectors *= np.minimum(1.0, 1.0 / np.linalg.norm(vectors, axis=1))[:, None]
        weights = data["w_values"][at].astype(np.float64)
        total = (vectors * weights[:, None]).sum(axis=0)
        scale = {"sum": 1.0, "mean": weights.sum(), "sqrtn": np.sqrt((weights**2).sum())}
        np.testing.assert_allclose(got[3], total / scale[combiner], rtol=0, atol=1e-5)


def test_functional_model_signature_from_its_inputs(tables, tmp_path):
    """A functional model needs no input_signature: a sparse Input becomes three tensors named
    <input>_indices|values|dense_shape. Layers without a config file use the running HPS."""
    hps.Shutdown()
    try:
        hps.Init(4, str(tables / "ps.json"))
        for flavour in FLAVOURS:
            layers = hps.layers_for(flavour)
            keras = layers.keras
            ids = keras.Input((3,), dtype="int64", name="ids")
            sp = keras.Input((WIDTH,), dtype="int64", sparse=True, name="sp")
            a = keras.layers.Flatten()(layers.LookupLayer("demo", 0, DIM, "float32")(ids))
            s = layers.SparseLookupLayer("demo", 1, SMALL_DIM, "float32")(sp, combiner="mean")
            model = keras.Model([ids, sp], keras.layers.Concatenate()([a, s]))
            result = hps.export_saved_model(model, tmp_path / flavour, output_names=["vec"])
            assert [t.to_dict() for t in result.inputs] == [
                {"name": "ids", "dtype": "int64", "shape": [None, 3]},
                {"name": "sp_indices", "dtype": "int64", "shape": [None, 2]},
                {"name": "sp_values", "dtype": "int64", "shape": [None]},
                {"name": "sp_dense_shape", "dtype": "int64", "shape": [2]},
            ]
            assert [t.name for t in result.outputs] == ["vec"]
            data = _inputs()
            function = tf.saved_model.load(str(tmp_path / flavour)).signatures["serving_default"]
            got = function(**{t.name: tf.constant(data[t.name]) for t in result.inputs})["vec"]
            sparse = tf.SparseTensor(data["sp_indices"], data["sp_values"], data["sp_dense_shape"])
            want = model([tf.constant(data["ids"]), sparse])
            np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=0, atol=1e-6)
    finally:
        hps.Shutdown()


def test_export_refuses_tables_above_the_limit_and_writes_nothing(tables, tmp_path):
    model = _notebook_model("keras3", "sum", str(tables / "ps.json"))
    try:
        model(_notebook_feed(_inputs()))  # built, as a trained model is
        with pytest.raises(InvalidInputError, match="above the limit of 1000 B") as caught:
            hps.export_saved_model(
                model, tmp_path / "out", input_signature=NOTEBOOK_SIGNATURE, max_table_bytes=1000
            )
    finally:
        hps.Shutdown()
    assert caught.value.location == "max_table_bytes"
    assert "hps serve" in caught.value.hint
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "keys",
    [np.arange(-3, 7), np.array([9, -4, 2**40, 17, 3, 2**62])],
    ids=["range", "scattered"],
)
def test_static_table_lookup(tmp_path, keys):
    """Rows by key, in any order, the default vector for every other id; a key range is held
    without its keys."""
    from hps_cli.tf.static_tables import StaticTable

    rng = np.random.default_rng(keys.size)
    vectors = rng.normal(size=(keys.size, 3)).astype(np.float32)
    write_table(tmp_path / "t", keys, vectors)
    table = StaticTable(tmp_path / "t", 3, 0.25, "t")
    assert (table.keys is None) == (np.ptp(keys) == keys.size - 1)
    assert table.rows.shape == (keys.size + 1, 3)
    others = [-5, 8, 2**40 + 1, 2**62 - 1, -(2**63), 2**63 - 1]
    ids = np.array([*keys.tolist(), *others], np.int64).reshape(-1, 2)
    where = {int(k): i for i, k in enumerate(keys)}
    want = np.array(
        [vectors[where[k]] if k in where else np.full(3, 0.25) for k in ids.reshape(-1).tolist()],
        np.float32,
    ).reshape(ids.shape + (3,))
    np.testing.assert_array_equal(table.lookup(tf.constant(ids)).numpy(), want)
    graph = tf.function(table.lookup, input_signature=[tf.TensorSpec(None, tf.int64)])
    np.testing.assert_array_equal(graph(tf.constant(ids)).numpy(), want)
