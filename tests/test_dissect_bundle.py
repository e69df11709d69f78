"""The pure-Python checkpoint reader against TensorFlow's own reader and protobuf classes."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from hps_cli.runtime.errors import InvalidInputError, NotFoundError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hps_cli.dissect.bundle import BundleReader, resolve_prefix
from hps_cli.dissect.object_graph import MODEL, OPTIMIZER, checkpoint_variables
from hps_cli.dissect.protowire import decode_entry, decode_object_graph
from hps_cli.dissect.sstable import read_table

pytestmark = pytest.mark.tf


@pytest.fixture(scope="module")
def tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    return tf


def _compare_with_tf(tf, prefix: str) -> BundleReader:
    reader = BundleReader(prefix)
    reference = tf.train.load_checkpoint(prefix)
    shapes, dtypes = reference.get_variable_to_shape_map(), reference.get_variable_to_dtype_map()
    assert set(reader.tensors) == set(shapes)
    for key, info in reader.tensors.items():
        assert list(info.shape) == shapes[key]
        assert info.dtype == dtypes[key].name
        if info.dtype == "string":
            continue
        value = reader.read(key)
        if info.dtype == "bfloat16":
            value = (value.astype(np.uint32) << 16).view(np.float32)
            assert np.array_equal(value, reference.get_tensor(key).astype(np.float32))
        else:
            assert np.array_equal(value, reference.get_tensor(key)), key
    return reader


def test_every_dtype_and_the_object_graph_match_tensorflow(tf, tmp_path):
    from tensorflow.core.protobuf import tensor_bundle_pb2, trackable_object_graph_pb2

    rng = np.random.default_rng(1)
    variables = {
        "f32": tf.Variable(rng.normal(size=(33, 7)).astype("float32")),
        "f64": tf.Variable(rng.normal(size=(5, 3))),
        "f16": tf.Variable(rng.normal(size=(9, 4)).astype("float16")),
        "bf16": tf.Variable(tf.cast(rng.normal(size=(6, 2)), tf.bfloat16)),
        "i32": tf.Variable(rng.integers(-9, 9, (4, 4)).astype("int32")),
        "i64": tf.Variable(rng.integers(-(2**40), 2**40, (3,))),
        "flag": tf.Variable([True, False]),
        "scalar": tf.Variable(2.5),
        "word": tf.Variable("héllo\x00wörld"),
    }
    module = tf.Module()
    module.inner = tf.Module()
    module.inner.table = tf.Variable(
        rng.normal(size=(20, 4)).astype("float32"), name="user_emb/embeddings"
    )
    prefix = tf.train.Checkpoint(net=module, **variables).write(str(tmp_path / "ckpt"))
    reader = _compare_with_tf(tf, prefix)
    assert reader.read_strings("word/.ATTRIBUTES/VARIABLE_VALUE") == ["héllo\x00wörld".encode()]
    # Our protobuf decoding equals TensorFlow's generated classes, entry by entry.
    data = (tmp_path / "ckpt.index").read_bytes()
    for key, value in read_table(data):
        if not key:
            continue
        ours, theirs = decode_entry(value), tensor_bundle_pb2.BundleEntryProto.FromString(value)
        assert (ours.dtype, ours.shard_id, ours.offset, ours.size, ours.crc32c) == (
            theirs.dtype,
            theirs.shard_id,
            theirs.offset,
            theirs.size,
            theirs.crc32c,
        )
        assert ours.shape == tuple(d.size for d in theirs.shape.dim)
    raw = reader.read_strings("_CHECKPOINTABLE_OBJECT_GRAPH")[0]
    ours = decode_object_graph(raw)
    theirs = trackable_object_graph_pb2.TrackableObjectGraph.FromString(raw)
    assert [[(c.node_id, c.local_name) for c in n.children] for n in ours] == [
        [(c.node_id, c.local_name) for c in n.children] for n in theirs.nodes
    ]
    assert [[(a.full_name, a.checkpoint_key) for a in n.attributes] for n in ours] == [
        [(a.full_name, a.checkpoint_key) for a in n.attributes] for n in theirs.nodes
    ]
    named = {v.name: v for v in checkpoint_variables(reader)}
    assert named["user_emb/embeddings"].path == "net/inner/table"
    assert named["user_emb/embeddings"].kind == MODEL


def test_optimizer_slots_are_told_apart(tf, tmp_path):
    import keras

    model = keras.Sequential(
        [
            keras.Input((2,), dtype="int64"),
            keras.layers.Embedding(10, 3, name="emb"),
            keras.layers.Flatten(),
            keras.layers.Dense(1, name="head"),
        ]
    )
    model.compile(keras.optimizers.Adam(), "mse")
    model.fit(np.zeros((4, 2), "int64"), np.zeros((4, 1)), verbose=0)
    prefix = tf.train.Checkpoint(model=model, optimizer=model.optimizer).write(str(tmp_path / "c"))
    kinds = {v.name: v.kind for v in checkpoint_variables(BundleReader(prefix))}
    assert kinds["sequential/emb/embeddings"] == kinds["sequential/head/kernel"] == MODEL
    slots = [name for name, kind in kinds.items() if kind == OPTIMIZER]
    assert any("emb_embeddings_momentum" in s for s in slots) and len(slots) >= 6


def test_partitioned_tensors_are_read_slice_by_slice(tf, tmp_path):
    rng = np.random.default_rng(2)
    big = tf.Variable(rng.normal(size=(20000, 12)).astype("float32"))
    small = tf.Variable(rng.normal(size=(300, 5)).astype("float32"))
    policy = tf.train.experimental.MaxShardSizePolicy(max_shard_size=64 << 10)
    prefix = tf.train.Checkpoint(big=big, small=small).write(
        str(tmp_path / "sharded"),
        options=tf.train.CheckpointOptions(experimental_sharding_callback=policy),
    )
    assert len(list(tmp_path.glob("sharded.data-*"))) > 10
    reader = _compare_with_tf(tf, prefix)
    key = "big/.ATTRIBUTES/VARIABLE_VALUE"
    assert reader.info(key).entry.sliced
    chunks = [(start, c.copy()) for start, c in reader.iter_rows(key, 1000)]  # buffer is reused
    assert np.array_equal(np.concatenate([c for _, c in chunks]), big.numpy())
    assert [start for start, _ in chunks] == sorted(start for start, _ in chunks)
    assert np.array_equal(reader.read_rows(key, 5000, 7000), big.numpy()[5000:7000])


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rows=st.integers(1, 400),
    dim=st.integers(1, 40),
    chunk=st.integers(1, 500),
    dtype=st.sampled_from(["float32", "float16", "float64"]),
)
def test_row_chunks_reassemble_the_tensor(tf, tmp_path, rows, dim, chunk, dtype):
    folder = tmp_path / f"h{rows}-{dim}-{chunk}-{dtype}"
    shutil.rmtree(folder, ignore_errors=True)
    value = np.random.default_rng(rows * dim).normal(size=(rows, dim)).astype(dtype)
    prefix = tf.train.Checkpoint(v=tf.Variable(value)).write(str(folder / "ck"))
    reader = BundleReader(prefix)
    parts = [c.copy() for _, c in reader.iter_rows("v/.ATTRIBUTES/VARIABLE_VALUE", chunk)]
    assert all(len(c) <= chunk for c in parts)
    assert np.array_equal(np.concatenate(parts), value)


def test_prefix_resolution(tf, tmp_path):
    prefix = tf.train.Checkpoint(v=tf.Variable([[1.0]])).write(str(tmp_path / "run" / "ckpt-3"))
    for given_path in (
        prefix,
        prefix + ".index",
        prefix + ".data-00000-of-00001",
        tmp_path / "run",
    ):
        assert resolve_prefix(given_path) == tmp_path / "run" / "ckpt-3"
    with pytest.raises(NotFoundError):
        resolve_prefix(tmp_path / "nothing")


def test_damaged_checkpoints_give_clear_errors(tf, tmp_path):
    value = np.arange(600, dtype=np.float32).reshape(100, 6)
    prefix = tf.train.Checkpoint(v=tf.Variable(value)).write(str(tmp_path / "ok" / "ck"))
    index = (tmp_path / "ok" / "ck.index").read_bytes()
    data = (tmp_path / "ok" / "ck.data-00000-of-00001").read_bytes()

    def damaged(name, index_bytes, data_bytes):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "ck.index").write_bytes(index_bytes)
        if data_bytes is not None:
            (folder / "ck.data-00000-of-00001").write_bytes(data_bytes)
        return folder / "ck"

    with pytest.raises(InvalidInputError, match="bad SSTable magic"):
        BundleReader(damaged("magic", index[:-1] + b"\x00", data))
    with pytest.raises(InvalidInputError, match="too short"):
        BundleReader(damaged("short", index[:20], data))
    with pytest.raises(InvalidInputError):
        BundleReader(damaged("cut", index[: len(index) // 2] + index[-48:], data))
    reader = BundleReader(damaged("truncated", index, data[: len(data) // 2]))
    with pytest.raises(InvalidInputError, match="past the end of the data file"):
        list(reader.iter_rows("v/.ATTRIBUTES/VARIABLE_VALUE", 10))
    reader = BundleReader(damaged("nodata", index, None))
    with pytest.raises(NotFoundError, match="data file"):
        reader.read("v/.ATTRIBUTES/VARIABLE_VALUE")
    assert np.array_equal(BundleReader(prefix).read("v/.ATTRIBUTES/VARIABLE_VALUE"), value)
