"""hps_cli.tf: the HPS layers against tf.nn.embedding_lookup / embedding_lookup_sparse on the
same weights, eagerly, in tf.function and in Keras predict, under Keras 3 and tf_keras; HPS's
checks (table id, dim, dtypes, batch limit); call-once and lazy initialization.

The tables are written here (two small tables); every lookup goes through the real runtime
(hps_cli.runtime.HPS with the caches its config asks for; hit_rate_threshold 1.0: exact).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
from helpers.paths import REPO

pytestmark = pytest.mark.tf

tf = pytest.importorskip("tensorflow")
hps = pytest.importorskip("hps_cli.tf")

from hps_cli.runtime.errors import InvalidInputError  # noqa: E402
from hps_cli.runtime.table import write_table  # noqa: E402

VOCAB, DIM, SMALL_VOCAB, SMALL_DIM = 200, 8, 50, 4
MAX_BATCH, PER_SAMPLE = 8, (6, 3)
FLAVOURS = ("keras3", "tf_keras")


def _config(folder, name: str, supportlonglong: bool, devices=(0,)) -> str:
    doc = {
        "supportlonglong": supportlonglong,
        "models": [
            {
                "model": "demo",
                "sparse_files": ["big", "small"],
                "embedding_table_names": ["big", "small"],
                "embedding_vecsize_per_table": [DIM, SMALL_DIM],
                "maxnum_catfeature_query_per_table_per_sample": list(PER_SAMPLE),
                "default_value_for_each_table": [0.0, 0.5],
                "deployed_device_list": list(devices),
                "max_batch_size": MAX_BATCH,
                "hit_rate_threshold": 1.0,
            }
        ],
    }
    path = folder / name
    path.write_text(json.dumps(doc))
    return str(path)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tf_layers")
    rng = np.random.default_rng(3)
    big = rng.normal(size=(VOCAB, DIM)).astype(np.float32)
    small = rng.normal(size=(SMALL_VOCAB, SMALL_DIM)).astype(np.float32)
    write_table(folder / "big", np.arange(VOCAB), big)
    write_table(folder / "small", np.arange(SMALL_VOCAB), small)
    np.save(folder / "big.npy", big)
    return {
        "big": big,
        "small": small,
        "long": _config(folder, "ps.json", True),
        "short": _config(folder, "ps32.json", False),
        "mirrored": _config(folder, "ps_mirrored.json", True, devices=(0, 1)),
        "folder": folder,
    }


@pytest.fixture
def runtime(weights):
    """HPS initialized from the supportlonglong config (and closed afterwards)."""
    hps.Shutdown()
    assert hps.Init(global_batch_size=MAX_BATCH, ps_config_file=weights["long"]) == "OK"
    yield weights
    hps.Shutdown()


def _layers(flavour: str):
    return hps.layers_for(flavour)


def _lookup_layer(flavour, table_id=0, dim=DIM, **kwargs):
    return _layers(flavour).LookupLayer(
        model_name="demo", table_id=table_id, emb_vec_size=dim, emb_vec_dtype=tf.float32, **kwargs
    )


def _sparse(rows: list[list[int]], weights_of=None, width: int = 5):
    indices = [[r, j] for r, row in enumerate(rows) for j in range(len(row))]
    values = [v for row in rows for v in row]
    shape = [len(rows), width]
    ids = tf.SparseTensor(
        tf.constant(indices, tf.int64, [len(indices), 2]), tf.constant(values, tf.int64), shape
    )
    if weights_of is None:
        return ids, None
    w = [weights_of(r, j) for r, row in enumerate(rows) for j in range(len(row))]
    return ids, tf.SparseTensor(ids.indices, tf.constant(w, tf.float32), shape)


# ------------------------------------------------------------------ LookupLayer


@pytest.mark.parametrize("shape", [(7,), (3, 2), (2, 2, 2)], ids=["rank1", "rank2", "rank3"])
@pytest.mark.parametrize("max_norm", [None, 0.7])
def test_lookup_equals_embedding_lookup(runtime, shape, max_norm):
    rng = np.random.default_rng(sum(shape))
    ids = tf.constant(rng.integers(0, VOCAB, shape), tf.int64)
    ids = tf.tensor_scatter_nd_update(tf.reshape(ids, [-1]), [[1]], [tf.reshape(ids, [-1])[0]])
    ids = tf.reshape(ids, shape)  # a duplicate id
    layer = _lookup_layer("keras3")
    want = tf.nn.embedding_lookup(runtime["big"], ids, max_norm=max_norm).numpy()
    got = layer(ids, max_norm=max_norm)
    assert got.shape == shape + (DIM,)
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-7)
    graph = tf.function(lambda x: layer(x, max_norm=max_norm))
    np.testing.assert_allclose(graph(ids).numpy(), want, rtol=0, atol=1e-7)
    assert graph.get_concrete_function(ids).structured_outputs.shape.as_list() == list(shape) + [
        DIM
    ]  # static shape, last dim known


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_lookup_layer_in_a_model_predict(runtime, flavour):
    keras = _layers(flavour).keras
    ids_in = keras.Input(shape=(3,), dtype="int64", name="ids")
    emb = _lookup_layer(flavour, table_id=1, dim=SMALL_DIM)(ids_in)
    model = keras.Model(ids_in, keras.layers.Flatten()(emb))
    ids = np.random.default_rng(1).integers(0, SMALL_VOCAB, (16, 3))
    want = tf.nn.embedding_lookup(runtime["small"], ids).numpy().reshape(16, -1)
    np.testing.assert_array_equal(model.predict(ids, batch_size=8, verbose=0), want)
    np.testing.assert_array_equal(model(ids[:MAX_BATCH]).numpy(), want[:MAX_BATCH])


def test_missing_keys_get_the_tables_default_value(runtime):
    got = _lookup_layer("keras3", table_id=1, dim=SMALL_DIM)(tf.constant([3, 10**9], tf.int64))
    np.testing.assert_array_equal(got.numpy()[0], runtime["small"][3])
    np.testing.assert_array_equal(got.numpy()[1], np.full(SMALL_DIM, 0.5, np.float32))


# ------------------------------------------------------------------ SparseLookupLayer

ROWS = [[5, 7, 5], [], [199, 0], [3], [8, 8, 8, 1], []]  # duplicates, empty rows, trailing empty


@pytest.mark.parametrize("combiner", ["sum", "mean", "sqrtn"])
@pytest.mark.parametrize("weighted", [False, True], ids=["no_weights", "weights"])
@pytest.mark.parametrize("max_norm", [None, 0.9])
def test_sparse_lookup_equals_embedding_lookup_sparse(runtime, combiner, weighted, max_norm):
    sp_ids, sp_weights = _sparse(ROWS, (lambda r, j: 0.5 + r - 0.25 * j) if weighted else None)
    want = tf.nn.embedding_lookup_sparse(
        runtime["big"], sp_ids, sp_weights, combiner=combiner, max_norm=max_norm
    ).numpy()
    assert want.shape == (5, DIM)  # TF drops the trailing empty row; so must we
    layer = _layers("keras3").SparseLookupLayer("demo", 0, DIM, tf.float32)
    got = layer(sp_ids, sp_weights, combiner=combiner, max_norm=max_norm).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert not got[1].any()  # an empty row in the middle is zeros
    graph = tf.function(lambda i, w: layer(i, w, combiner=combiner, max_norm=max_norm))
    np.testing.assert_allclose(graph(sp_ids, sp_weights).numpy(), want, rtol=1e-6, atol=1e-7)


def test_sparse_lookup_deduplicates_before_the_lookup(runtime):
    """HPS counts unique ids against the batch limit: 20 copies of 2 ids fit a limit of 48."""
    sp_ids, _ = _sparse([[4, 9] * 10] * 3, width=20)
    layer = _layers("keras3").SparseLookupLayer("demo", 0, DIM, tf.float32)
    got = layer(sp_ids, combiner="sum").numpy()
    np.testing.assert_allclose(got[0], 10 * (runtime["big"][4] + runtime["big"][9]), rtol=1e-6)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_sparse_layer_in_a_model_predict(runtime, flavour):
    layers = _layers(flavour)
    keras = layers.keras
    ids_in = keras.Input(shape=(5,), dtype="int64", sparse=True, name="sp")
    out = layers.SparseLookupLayer("demo", 0, DIM, "float32")(ids_in, combiner="sqrtn")
    model = keras.Model(ids_in, out)
    sp_ids, _ = _sparse([[1, 2], [3], [4, 5, 6], [7, 7]])
    want = tf.nn.embedding_lookup_sparse(runtime["big"], sp_ids, None, combiner="sqrtn").numpy()
    np.testing.assert_allclose(model.predict(sp_ids, batch_size=4, verbose=0), want, rtol=1e-6)


def test_sparse_layer_rejects_bad_combiner_and_dense_input(runtime):
    layer = _layers("keras3").SparseLookupLayer("demo", 0, DIM, tf.float32)
    sp_ids, _ = _sparse([[1]])
    with pytest.raises(ValueError, match="combiner must be one of"):
        layer(sp_ids, combiner="max")
    with pytest.raises(TypeError, match="sp_ids must be SparseTensor"):
        layer(tf.constant([[1, 2]], tf.int64))
    with pytest.raises(TypeError, match="sp_weights must be either None or SparseTensor"):
        layer(sp_ids, tf.constant([1.0]))


# ------------------------------------------------------------------ checks and errors


@pytest.mark.parametrize(
    "args,message",
    [
        ({"table_id": 2}, "table_id 2 is out of range: model 'demo' has 2 table"),
        (
            {"emb_vec_size": 16},
            r"emb_vec_size 16 does not match embedding_vecsize_per_table\[0\] = 8",
        ),
        ({"model_name": "other"}, "no model 'other'"),
    ],
)
def test_wrong_table_dim_or_model_is_a_clear_error(runtime, args, message):
    kwargs = {"model_name": "demo", "table_id": 0, "emb_vec_size": DIM, **args}
    layer = _layers("keras3").LookupLayer(emb_vec_dtype=tf.float32, **kwargs)
    with pytest.raises(InvalidInputError, match=message):
        layer(tf.constant([1], tf.int64))


def test_vector_dtype_and_key_dtype_are_checked(runtime):
    with pytest.raises(ValueError, match="emb_vec_dtype must be float32"):
        _layers("keras3").LookupLayer("demo", 0, DIM, tf.float16)
    layer = _lookup_layer("keras3")
    with pytest.raises(
        InvalidInputError, match="ids of dtype int32 do not match supportlonglong true"
    ):
        layer(tf.constant([1, 2], tf.int32))


def test_batch_above_the_limit_is_refused_eagerly_and_in_graphs(runtime):
    layer = _lookup_layer("keras3", table_id=1, dim=SMALL_DIM)  # limit 8 x 3 = 24 keys
    layer(tf.zeros([MAX_BATCH, 3], tf.int64))  # exactly at the limit
    message = (
        "25 keys in one lookup exceed max_batch_size x "
        r"maxnum_catfeature_query_per_table_per_sample\[1\] = 8 x 3 = 24"
    )
    with pytest.raises(InvalidInputError, match=message):
        layer(tf.zeros([25], tf.int64))
    graph = tf.function(lambda x: layer(x))
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        graph(tf.zeros([5, 5], tf.int64))


def test_32_bit_keys_when_supportlonglong_is_false(weights):
    hps.Shutdown()
    try:
        hps.Init(4, weights["short"])
        layer = _lookup_layer("keras3")
        got = layer(tf.constant([[3, 199]], tf.int32)).numpy()
        np.testing.assert_array_equal(got[0], weights["big"][[3, 199]])
        with pytest.raises(
            InvalidInputError, match="ids of dtype int64 do not match supportlonglong false"
        ):
            layer(tf.constant([3], tf.int64))
    finally:
        hps.Shutdown()


# ------------------------------------------------------------------ initialization


def test_init_is_once_per_process_and_another_file_is_ignored(runtime):
    with pytest.warns(RuntimeWarning, match="already initialized"):
        assert hps.Init(4, runtime["short"]) == "OK"
    got = _lookup_layer("keras3")(tf.constant([2], tf.int64))  # still the int64 runtime
    np.testing.assert_array_equal(got.numpy()[0], runtime["big"][2])


def test_init_checks_the_global_batch_size(weights):
    hps.Shutdown()
    with pytest.raises(InvalidInputError, match="global_batch_size 9 exceeds max_batch_size 8"):
        hps.Init(MAX_BATCH + 1, weights["long"])
    with pytest.raises(InvalidInputError, match="global_batch_size must be an integer >= 1"):
        hps.Init(0, weights["long"])


def test_lazy_initialization_from_the_layers_config_file(weights):
    hps.Shutdown()
    try:
        with pytest.raises(InvalidInputError, match="HPS is not initialized"):
            _lookup_layer("keras3")(tf.constant([1], tf.int64))
        layer = _lookup_layer("keras3", ps_config_file=weights["long"], global_batch_size=4)
        graph = tf.function(lambda x: layer(x))
        np.testing.assert_array_equal(
            graph(tf.constant([9], tf.int64)).numpy()[0], weights["big"][9]
        )
        from hps_cli.tf import process_runtime

        assert str(process_runtime.active_path()) == weights["long"]
    finally:
        hps.Shutdown()


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_config_is_json_and_registered_under_hps(weights, flavour):
    layers = _layers(flavour)
    layer = layers.LookupLayer(
        "demo",
        1,
        SMALL_DIM,
        tf.float32,
        ps_config_file="rel/ps.json",
        global_batch_size=4,
        name="emb",
    )
    config = json.loads(json.dumps(layer.get_config()))
    assert {
        k: config[k]
        for k in (
            "model_name",
            "table_id",
            "emb_vec_size",
            "emb_vec_dtype",
            "ps_config_file",
            "global_batch_size",
        )
    } == {
        "model_name": "demo",
        "table_id": 1,
        "emb_vec_size": SMALL_DIM,
        "emb_vec_dtype": "float32",
        "ps_config_file": "rel/ps.json",
        "global_batch_size": 4,
    }
    clone = layers.LookupLayer.from_config(config)
    assert clone.get_config() == layer.get_config() and clone.trainable is False
    for cls in (layers.LookupLayer, layers.SparseLookupLayer, layers.DenseSavedModel):
        name = layers.keras.saving.get_registered_name(cls)
        assert name == f"hps>{cls.__name__}"
        assert layers.keras.saving.get_registered_object(name) is cls


def test_import_follows_tf_use_legacy_keras_and_prints_nothing():
    probe = (
        "import os; before = dict(os.environ)\n"
        "import hps_cli.tf as hps, tensorflow as tf\n"
        "base = hps.LookupLayer.__mro__[2]\n"
        "print(base.__module__.split('.')[0], issubclass(hps.LookupLayer, "
        "tf.keras.layers.Layer), dict(os.environ) == before)"
    )
    for legacy, want in (("0", "keras"), ("1", "tf_keras")):
        env = {**os.environ, "TF_USE_LEGACY_KERAS": legacy}
        done = subprocess.run(
            [sys.executable, "-c", probe],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            cwd=REPO,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.split() == [want, "True", "True"], done.stdout  # nothing else


def test_no_warning_for_the_same_file_twice(runtime):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert hps.Init(2, runtime["long"]) == "OK"


TWO_REPLICAS = (
    "import json, sys, numpy as np, tensorflow as tf\n"
    "cpu = tf.config.list_physical_devices('CPU')[0]\n"
    "tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()]"
    " * 2)\n"
    "import hps_cli.tf as hps\n"
    "strategy = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])\n"
)


def _two_replicas(probe: str, *args: str) -> list[str]:
    """Run ``probe`` after TWO_REPLICAS (2 logical CPUs, a MirroredStrategy over them) in a
    fresh process (logical devices must be set before TensorFlow starts); its stdout lines."""
    done = subprocess.run(
        [sys.executable, "-c", TWO_REPLICAS + probe, *args],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=REPO,
        env={**os.environ, "HPS_CACHE_BACKEND": "reference"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.splitlines()


def test_init_under_a_mirrored_strategy_checks_the_per_replica_batch(weights):
    """HPS's init checks with 2 replicas (2 logical CPUs): 16 = 2 x 8 fits, 18 does not, 15 does
    not split evenly, and a model must list one device per replica."""
    lines = _two_replicas(
        "with strategy.scope():\n"
        "    for path, batch in ((sys.argv[1], 15), (sys.argv[1], 18), (sys.argv[2], 16),"
        " (sys.argv[1], 16)):\n"
        "        try:\n"
        "            print(batch, hps.Init(batch, path))\n"
        "        except Exception as exc:\n"
        "            print(batch, exc.message)\n",
        weights["mirrored"],
        weights["long"],
    )
    assert lines[0] == "15 global_batch_size 15 is not divisible by the 2 replicas in sync"
    assert (
        lines[1] == "18 global_batch_size 18 exceeds max_batch_size 8 of model 'demo' (9 per "
        "replica)"
    )
    assert lines[2] == (
        "16 model 'demo' lists 1 device(s) in deployed_device_list but 2 replicas are in sync"
    )
    assert lines[3] == "16 OK"


def test_each_replica_looks_up_on_its_own_device(weights):
    """Under MirroredStrategy replica r looks up on deployed_device_list[r]: the cache of each
    device sees exactly its replica's keys (the reference cache stands in for the GPUs), the
    vectors equal tf.nn.embedding_lookup's; outside the strategy lookups go to the model's
    default device, the last of the list."""
    lines = _two_replicas(
        "from hps_cli.tf import process_runtime\n"
        "with strategy.scope():\n"
        "    hps.Init(16, sys.argv[1])\n"
        "    layer = hps.LookupLayer(model_name='demo', table_id=0, emb_vec_size=8)\n"
        "def counts():\n"
        "    cache = process_runtime.active().stats()['demo']['big']['cache']\n"
        "    return {d: s['hits'] + s['misses'] for d, s in cache.items()}\n"
        "start = counts()\n"
        "ids = strategy.experimental_distribute_values_from_function(\n"
        "    lambda ctx: tf.range(5, dtype=tf.int64) + 100 * ctx.replica_id_in_sync_group)\n"
        "out = strategy.run(tf.function(lambda x: layer(x)), args=(ids,))\n"
        "table = np.load(sys.argv[2])\n"
        "for r, part in enumerate(strategy.experimental_local_results(out)):\n"
        "    want = table[np.arange(5) + 100 * r]\n"
        "    print('replica', r, np.array_equal(part.numpy(), want))\n"
        "mirrored = counts()\n"
        "layer(tf.constant([1, 2, 3], tf.int64))\n"
        "outside = counts()\n"
        "print(json.dumps([{d: mirrored[d] - start[d] for d in start},"
        " {d: outside[d] - mirrored[d] for d in start}]))\n",
        weights["mirrored"],
        str(weights["folder"] / "big.npy"),
    )
    assert lines[:2] == ["replica 0 True", "replica 1 True"], lines
    mirrored, outside = json.loads(lines[2])
    assert mirrored == {"0": 5, "1": 5}
    assert outside == {"0": 0, "1": 3}
