"""The deployable SavedModel of `hps build-graph` on synthetic packages: 64-bit and 32-bit keys
(ids above 2^31 sent as negative int32, read as unsigned), keys the tables do not hold (the
table's default vector), sparse combiners, unsorted table files; run by TensorFlow alone in a
process that cannot import hps_cli, against a NumPy reference and against the package's HPS
hierarchy path (hps_cli.tf.load_model). Also: the size guard, --no-saved-model, hps serve
serving the SavedModel (Triton and TF Serving layouts) next to the package, and the memory the
loaded SavedModel holds.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest
from helpers.cli import run_hps
from helpers.saved_model_helpers import run_fresh

pytestmark = [pytest.mark.tf, pytest.mark.slow]

tf = pytest.importorskip("tensorflow")

DIM_A, DIM_S = 8, 4
TOKEN = "saved-model-admin-token-0123456789"
DEFAULTS = (-0.25, 0.5)  # default_value_for_each_table: unknown keys get these vectors
MAX_BATCH = 32
BATCH = 6


def _write_dense(path, with_tags: bool) -> None:
    """A dense part taking looked-up vectors (and dense features): a score, plus the vectors
    themselves as outputs so the lookups can be checked exactly."""
    rng = np.random.default_rng(5)

    class Dense(tf.Module):
        def __init__(self):
            super().__init__()
            self.w_a = tf.Variable(rng.normal(size=(3 * DIM_A, 1)).astype("float32"))
            self.w_s = tf.Variable(rng.normal(size=(DIM_S, 1)).astype("float32"))
            self.w_d = tf.Variable(rng.normal(size=(2, 1)).astype("float32"))

    module = Dense()
    emb_a = tf.TensorSpec([None, 3, DIM_A], tf.float32, name="emb_a")
    dense = tf.TensorSpec([None, 2], tf.float32, name="dense")
    if with_tags:

        @tf.function(input_signature=[emb_a, tf.TensorSpec([None, DIM_S], name="emb_s"), dense])
        def serve(emb_a, emb_s, dense):
            flat = tf.reshape(emb_a, [-1, 3 * DIM_A])
            score = flat @ module.w_a + emb_s @ module.w_s + dense @ module.w_d
            return {"score": score, "emb_a_out": emb_a, "emb_s_out": emb_s}

    else:

        @tf.function(input_signature=[emb_a, dense])
        def serve(emb_a, dense):
            score = tf.reshape(emb_a, [-1, 3 * DIM_A]) @ module.w_a + dense @ module.w_d
            return {"score": score, "emb_a_out": emb_a}

    tf.saved_model.save(module, str(path), signatures={"serving_default": serve})


def _config(path, supportlonglong: bool) -> None:
    doc = {
        "supportlonglong": supportlonglong,
        "models": [
            {
                "model": "synth",
                "sparse_files": ["big", "small"],
                "embedding_table_names": ["big", "small"],
                "embedding_vecsize_per_table": [DIM_A, DIM_S],
                "maxnum_catfeature_query_per_table_per_sample": [3, 5],
                "default_value_for_each_table": list(DEFAULTS),
                "deployed_device_list": [0],
                "max_batch_size": MAX_BATCH,
                "hit_rate_threshold": 1.0,
            }
        ],
    }
    path.write_text(json.dumps(doc))


def _spec(ps: str, dense: str, combiner: str | None) -> dict:
    inputs = [
        {"name": "ids", "lookups": [{"table": "big", "dense_input": "emb_a"}]},
        {"name": "dense", "dense_input": "dense"},
    ]
    if combiner:
        lookup = {"table": "small", "combiner": combiner, "dense_input": "emb_s"}
        inputs.insert(1, {"name": "tags", "format": "sparse", "lookups": [lookup]})
    return {"dense": dense, "ps_config": ps, "model_name": "synth", "inputs": inputs}


# package -> (config, dense part, combiner of the sparse input or None)
PACKAGES = {
    "long_sum": ("ps64.json", "dense_tags", "sum"),
    "short_sqrtn": ("ps32.json", "dense_tags", "sqrtn"),
    "long_batched": ("ps64.json", "dense_plain", None),
}


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """Tables (big: unsorted keys, some above 2^31; small: sorted), configs, dense parts, and
    the three packages built from specs."""
    from hps_cli.runtime.table import write_table

    from hps_cli.build_graph import build_graph

    base = tmp_path_factory.mktemp("saved_model")
    rng = np.random.default_rng(11)
    big_keys = rng.choice(np.arange(1, 2**32 - 1, 7919, dtype=np.int64), 300, replace=False)
    big_keys[:3] = [2**31, 2**31 + 5, 2**32 - 2]  # negative as int32
    big = rng.normal(size=(300, DIM_A)).astype(np.float32)
    small_keys = np.arange(1000, 1050, dtype=np.int64)
    small = rng.normal(size=(50, DIM_S)).astype(np.float32)
    write_table(base / "big", big_keys, big)  # written unsorted: the export sorts
    write_table(base / "small", small_keys, small)
    _config(base / "ps64.json", True)
    _config(base / "ps32.json", False)
    _write_dense(base / "dense_tags", True)
    _write_dense(base / "dense_plain", False)
    packages = {}
    for name, (ps, dense, combiner) in PACKAGES.items():
        spec = base / f"{name}.json"
        spec.write_text(json.dumps(_spec(ps, dense, combiner)))
        packages[name] = base / "packages" / name
        build_graph(spec, packages[name])
    return {
        "base": base,
        "packages": packages,
        "tables": {"big": (big_keys, big), "small": (small_keys, small)},
    }


def _feeds(synth, name: str) -> dict:
    """A batch mixing known keys and keys no table holds; the sparse input has an empty row in
    the middle. 32-bit packages get int32 ids (keys above 2^31 as negative numbers)."""
    big_keys, _ = synth["tables"]["big"]
    small_keys, _ = synth["tables"]["small"]
    long = PACKAGES[name][0] == "ps64.json"
    unknown = [3, 2**32 - 1] + ([2**40] if long else [])
    pool = np.concatenate([big_keys[:40], unknown])
    rng = np.random.default_rng(len(name))
    ids = rng.choice(pool, (BATCH, 3))
    ids[0] = big_keys[:3]  # the keys above 2^31
    ids[1, 0] = unknown[-1]
    dtype = np.int64 if long else np.int32
    feeds = {
        "ids": ids.astype(np.uint32).view(np.int32) if not long else ids,
        "dense": rng.normal(size=(BATCH, 2)).astype(np.float32),
    }
    if PACKAGES[name][2]:
        rows = [[1001, 1002, 5], [1049], [], [7, 8], [1000, 1000, 1010, 1020, 1030], [1003]]
        indices = [[r, j] for r, row in enumerate(rows) for j in range(len(row))]
        values = np.array([v for row in rows for v in row], np.int64)
        feeds["tags_indices"] = np.array(indices, np.int64)
        feeds["tags_values"] = values.astype(dtype)
        feeds["tags_dense_shape"] = np.array([BATCH, 5], np.int64)
    return feeds


def _reference(synth, name: str, feeds: dict) -> dict:
    """What the lookups must give, in NumPy: rows by key, default vectors for unknown keys."""

    def rows(table: str, ids: np.ndarray, default: float) -> np.ndarray:
        keys, vectors = synth["tables"][table]
        where = {int(k): i for i, k in enumerate(keys)}
        flat = ids.reshape(-1).astype(np.int64) & 0xFFFFFFFF if ids.dtype == np.int32 else ids
        out = np.array(
            [
                vectors[where[int(k)]] if int(k) in where else np.full(vectors.shape[1], default)
                for k in flat.reshape(-1)
            ],
            np.float32,
        )
        return out.reshape(ids.shape + (vectors.shape[1],))

    want = {"emb_a_out": rows("big", feeds["ids"], DEFAULTS[0])}
    combiner = PACKAGES[name][2]
    if combiner:
        values = feeds["tags_values"]
        vectors = rows("small", values, DEFAULTS[1])
        segments = feeds["tags_indices"][:, 0]
        out = np.zeros((BATCH, DIM_S), np.float64)
        np.add.at(out, segments, vectors)
        counts = np.bincount(segments, minlength=BATCH).astype(np.float64)
        if combiner == "mean":
            out /= np.maximum(counts, 1)[:, None]
        elif combiner == "sqrtn":
            out /= np.sqrt(np.maximum(counts, 1))[:, None]
        want["emb_s_out"] = out.astype(np.float32)
    return want


def _hierarchy(package, feeds: dict) -> dict:
    """The package's Keras model with lookups through the HPS runtime (the hierarchy path)."""
    import hps_cli.tf as hps

    hps.Shutdown()
    try:
        model = hps.load_model(package)
        inputs = [tf.constant(feeds["ids"])]
        if "tags_values" in feeds:
            inputs.append(
                tf.SparseTensor(
                    feeds["tags_indices"], feeds["tags_values"], feeds["tags_dense_shape"]
                )
            )
        inputs.append(tf.constant(feeds["dense"]))
        outputs = model(inputs)
        outputs = outputs if isinstance(outputs, list) else [outputs]
        names = hps.read_package(package).manifest["inference"]["outputs"]
        return {o["name"]: v.numpy() for o, v in zip(names, outputs)}
    finally:
        hps.Shutdown()


@pytest.fixture(scope="module")
def fresh(synth):
    cases = {
        name: (package / "saved_model" / "1", _feeds(synth, name))
        for name, package in synth["packages"].items()
    }
    return run_fresh(cases, synth["base"] / "fresh")


@pytest.mark.parametrize("name", list(PACKAGES))
def test_saved_model_without_hps_equals_reference_and_hierarchy(synth, fresh, name):
    result = fresh[name]
    assert result["doc"]["hps_modules"] == []
    got = result["outputs"]
    feeds = _feeds(synth, name)
    for key, want in _reference(synth, name, feeds).items():
        assert got[key].shape == want.shape, key
        np.testing.assert_allclose(got[key], want, rtol=0, atol=1e-5, err_msg=key)
    unknown = feeds["ids"][1, 0]
    assert np.all(got["emb_a_out"][1, 0] == np.float32(DEFAULTS[0])), unknown
    hierarchy = _hierarchy(synth["packages"][name], feeds)
    assert sorted(hierarchy) == sorted(got)
    for key in got:
        np.testing.assert_allclose(got[key], hierarchy[key], rtol=0, atol=1e-5, err_msg=key)


def test_hierarchy_path_stays_init_then_load_model(synth, fresh):
    """As the HPS notebooks do: hps.Init, then the package's Keras model looks up through that
    runtime (a row changed in it changes the prediction), while the SavedModel keeps the rows
    it was built with."""
    import hps_cli.tf as hps
    from hps_cli.tf import process_runtime

    package = synth["packages"]["long_sum"]
    feeds = _feeds(synth, "long_sum")
    hps.Shutdown()
    try:
        assert hps.Init(global_batch_size=BATCH, ps_config_file=str(package / "ps.json")) == "OK"
        runtime = process_runtime.active()
        model = hps.load_model(package)
        assert process_runtime.active() is runtime
        inputs = [
            tf.constant(feeds["ids"]),
            tf.SparseTensor(feeds["tags_indices"], feeds["tags_values"], feeds["tags_dense_shape"]),
            tf.constant(feeds["dense"]),
        ]
        names = [o["name"] for o in hps.read_package(package).manifest["inference"]["outputs"]]
        before = dict(zip(names, [v.numpy() for v in model(inputs)]))
        key = int(feeds["ids"][0, 0])
        runtime.insert("synth", "big", np.array([key], np.int64), np.full((1, DIM_A), 9.0))
        after = dict(zip(names, [v.numpy() for v in model(inputs)]))
    finally:
        hps.Shutdown()
    np.testing.assert_array_equal(after["emb_a_out"][0, 0], np.full(DIM_A, 9.0, np.float32))
    assert not np.allclose(after["score"], before["score"])
    saved = fresh["long_sum"]["outputs"]["emb_a_out"][0, 0]
    assert not np.allclose(saved, 9.0)


def test_signature_names_dtypes_and_manifest(synth, fresh):
    long_doc = fresh["long_sum"]["doc"]["inputs"]
    assert long_doc == {
        "ids": ["int64", [None, 3]],
        "tags_indices": ["int64", [None, 2]],
        "tags_values": ["int64", [None]],
        "tags_dense_shape": ["int64", [2]],
        "dense": ["float32", [None, 2]],
    }
    short_doc = fresh["short_sqrtn"]["doc"]["inputs"]
    # Id inputs are int64 whatever the key width (as the package's): a 32-bit table's ids are
    # range-checked into uint32, negative int32 values read as unsigned (hps>KeyCast).
    assert short_doc["ids"] == ["int64", [None, 3]]
    assert short_doc["tags_values"] == ["int64", [None]]
    manifest = json.loads((synth["packages"]["long_sum"] / "manifest.json").read_text())
    saved = manifest["inference"]["saved_model"]
    assert saved["signature"] == "serving_default"
    assert saved["tables"] == [
        {"table": "synth/big", "rows": 300, "dim": DIM_A, "raw_bytes": 300 * (8 + 4 * DIM_A)},
        {"table": "synth/small", "rows": 50, "dim": DIM_S, "raw_bytes": 50 * (8 + 4 * DIM_S)},
    ]
    assert saved["raw_bytes"] == 300 * (8 + 4 * DIM_A) + 50 * (8 + 4 * DIM_S)
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString(
        (synth["packages"]["long_sum"] / saved["dir"] / "saved_model.pb").read_bytes()
    )
    graph = proto.meta_graphs[0].graph_def
    ops = {n.op for n in graph.node} | {n.op for f in graph.library.function for n in f.node_def}
    assert {"LowerBound", "ResourceGather"} <= ops  # big's keys are searched
    assert not ops & {"PyFunc", "EagerPyFunc", "PyFuncStateless"}
    batched = json.loads((synth["packages"]["long_batched"] / "manifest.json").read_text())
    assert [t["table"] for t in batched["inference"]["saved_model"]["tables"]] == ["synth/big"]


def _nothing_left(out) -> None:
    assert not out.exists()
    assert not [p.name for p in out.parent.iterdir() if ".hps-tmp-" in p.name]


def test_size_guard_refuses_with_a_hint_and_no_saved_model_builds(synth, tmp_path):
    from hps_cli.runtime.errors import InvalidInputError

    from hps_cli.build_graph.deployable import DEFAULT_MAX_BYTES, check_size
    from hps_cli.tf.saved_model_export import DEFAULT_MAX_TABLE_BYTES

    assert DEFAULT_MAX_BYTES == DEFAULT_MAX_TABLE_BYTES
    spec = synth["base"] / "long_sum.json"
    total = 300 * (8 + 4 * DIM_A) + 50 * (8 + 4 * DIM_S)
    manifest = json.loads((synth["packages"]["long_sum"] / "manifest.json").read_text())
    assert check_size(manifest, total) == total
    with pytest.raises(InvalidInputError, match="above the limit"):
        check_size(manifest, total - 1)

    out = tmp_path / "pkg"
    done = run_hps("build-graph", str(spec), str(out), "--saved-model-max-size", "10KB")
    assert done.returncode == 3, done.stderr
    assert "error: --saved-model-max-size: the tables would put 12.9 KiB" in done.stderr
    assert "big 11.7 KiB" in done.stderr and "above the limit of 9.8 KiB" in done.stderr
    hint = done.stderr[done.stderr.index("hint:") :]
    assert "--no-saved-model" in hint and "hps serve" in hint
    _nothing_left(out)

    done = run_hps("--json", "build-graph", str(spec), str(out), "--no-saved-model")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["saved_model"] is None
    assert not (out / "saved_model").exists() and not (out / "triton").exists()
    assert "saved_model" not in json.loads((out / "manifest.json").read_text())["inference"]


def test_saved_model_version_option(synth, tmp_path):
    from hps_cli.build_graph import BuildOptions, build_graph

    out = tmp_path / "pkg"
    build_graph(synth["base"] / "long_batched.json", out, BuildOptions(saved_model_version=7))
    assert [p.name for p in (out / "saved_model").iterdir()] == ["7"]
    assert (out / "triton" / "synth" / "7" / "model.savedmodel" / "saved_model.pb").is_file()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["inference"]["saved_model"]["dir"] == "saved_model/7"


# ------------------------------------------------------------------ hps serve


@pytest.fixture(scope="module")
def server(synth):
    """hps serve without --config: the long_sum package (hierarchy), its Triton entry and its
    TF Serving layout, and the batched package's Triton entry."""
    from hps_cli.devtools.serve_process import ServeProcess

    repo = synth["base"] / "repo"
    repo.mkdir()
    packages = synth["packages"]
    shutil.copytree(packages["long_sum"], repo / "pkg")
    (repo / "sm_triton").symlink_to(packages["long_sum"] / "triton" / "synth")
    (repo / "sm_tfserving").symlink_to(packages["long_sum"] / "saved_model")
    (repo / "batched").symlink_to(packages["long_batched"] / "triton" / "synth")
    proc = ServeProcess(
        None,
        model_repository=repo,
        extra_args=["--max-queue-delay-us", "20000"],
        env={"HPS_ADMIN_TOKEN": TOKEN},
        ready_timeout=300,
    ).start()
    yield proc
    assert proc.stop() == 0


def _infer(client, module, model: str, feeds: dict) -> dict:
    metadata = client.get_model_metadata(model)
    specs = (
        metadata["inputs"]
        if isinstance(metadata, dict)
        else [{"name": i.name, "datatype": i.datatype} for i in metadata.inputs]
    )
    inputs = []
    for spec in specs:  # hps serve names a package's sparse components <input>.indices, ...
        array = feeds[spec["name"].replace(".", "_")]
        tensor = module.InferInput(spec["name"], list(array.shape), spec["datatype"])
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    result = client.infer(model, inputs)
    names = (
        [o["name"] for o in metadata["outputs"]]
        if isinstance(metadata, dict)
        else [o.name for o in metadata.outputs]
    )
    return {n: result.as_numpy(n) for n in names}


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_serve_saved_model_equals_the_package(synth, server, protocol):
    import tritonclient.grpc as tgrpc
    import tritonclient.http as thttp

    module = tgrpc if protocol == "grpc" else thttp
    client = module.InferenceServerClient(
        server.grpc_url if protocol == "grpc" else server.http_url
    )
    feeds = _feeds(synth, "long_sum")
    package = _infer(client, module, "pkg", feeds)
    for model in ("sm_triton", "sm_tfserving"):
        assert client.is_model_ready(model)
        got = _infer(client, module, model, feeds)
        assert sorted(got) == sorted(package)
        for key in got:
            np.testing.assert_allclose(got[key], package[key], rtol=0, atol=1e-5, err_msg=key)


def test_serve_metadata_config_batching_and_no_table_updates(synth, server):
    import tritonclient.http as thttp
    from helpers.serve_client import http_post

    client = thttp.InferenceServerClient(server.http_url)
    meta = client.get_model_metadata("sm_triton")
    assert meta["platform"] == "tensorflow_savedmodel" and meta["versions"] == ["1"]
    assert [i["name"] for i in meta["inputs"]] == [
        "ids",
        "tags_indices",
        "tags_values",
        "tags_dense_shape",
        "dense",
    ]
    assert client.get_model_config("sm_triton")["max_batch_size"] == 0  # sparse components
    config = client.get_model_config("batched")
    assert config["max_batch_size"] == MAX_BATCH
    assert [i["dims"] for i in config["input"]] == [[3], [2]]
    # Concurrent requests to the batched model run as one call and get their own rows back.
    feeds = _feeds(synth, "long_batched")
    whole = _infer(client, thttp, "batched", feeds)
    results, errors = {}, []

    def send(lo: int, hi: int) -> None:
        try:
            part = {k: v[lo:hi] for k, v in feeds.items()}
            results[lo] = _infer(
                thttp.InferenceServerClient(server.http_url), thttp, "batched", part
            )
        except Exception as exc:  # noqa: BLE001 - asserted below
            errors.append(exc)

    threads = [threading.Thread(target=send, args=b) for b in [(0, 2), (2, 3), (3, BATCH)]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for lo, hi in [(0, 2), (2, 3), (3, BATCH)]:
        np.testing.assert_allclose(results[lo]["score"], whole["score"][lo:hi], atol=1e-6)
    stats = client.get_inference_statistics("batched")["model_stats"][0]
    assert stats["inference_count"] == 2 * BATCH
    with pytest.raises(Exception, match="above max_batch_size"):
        big = {k: np.repeat(v, 6, axis=0) for k, v in feeds.items()}
        _infer(client, thttp, "batched", big)
    update = {
        "inputs": [
            {"name": "KEYS", "shape": [1], "datatype": "INT64", "data": [3]},
            {"name": "VECTORS", "shape": [1, DIM_A], "datatype": "FP32", "data": [0.0] * DIM_A},
        ]
    }
    status, _, body = http_post(
        server.http_url,
        "/v2/admin/models/sm_triton/tables/big/insert",
        json.dumps(update).encode(),
        {"Authorization": f"Bearer {TOKEN}"},
    )
    assert status == 400 and "is a SavedModel" in json.loads(body)["error"], body


# ------------------------------------------------------------------ memory


MEMORY = r"""
import json, os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
def status():
    out = {}
    for line in open("/proc/self/status"):
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out
import tensorflow as tf
small = tf.saved_model.load(sys.argv[1])  # the loader's own memory, paid before measuring
before = status()
loaded = tf.saved_model.load(sys.argv[2])
after = status()
print(json.dumps({"before": before, "after": after}))
"""


def _memory_model(folder, keys: int, dim: int):
    """A Keras 3 model looking up a table of ``keys`` random rows (written in random key
    order), with its config."""
    from hps_cli.runtime.table import write_table

    import hps_cli.tf as hps

    rng = np.random.default_rng(keys)
    folder.mkdir()
    keys_in_file = rng.permutation(keys).astype(np.int64) * 3  # not a range: keys are held
    write_table(folder / "t", keys_in_file, rng.random((keys, dim), np.float32))
    doc = {
        "supportlonglong": True,
        "models": [
            {
                "model": "m",
                "sparse_files": ["t"],
                "embedding_table_names": ["t"],
                "embedding_vecsize_per_table": [dim],
                "maxnum_catfeature_query_per_table_per_sample": [2],
                "default_value_for_each_table": [0.0],
                "deployed_device_list": [0],
                "max_batch_size": 8,
            }
        ],
    }
    (folder / "ps.json").write_text(json.dumps(doc))
    layers = hps.layers_for("keras3")
    keras = layers.keras
    ids = keras.Input((2,), dtype="int64", name="ids")
    lookup = layers.LookupLayer("m", 0, dim, "float32", ps_config_file=str(folder / "ps.json"))
    return keras.Model(ids, keras.layers.Flatten()(lookup(ids)))


def test_loaded_saved_model_holds_a_table_once(tmp_path):
    """Loading restores the variables without a second copy: the peak RSS while loading, over
    the process before (which already loaded the same model with a 10-row table), is at most
    1.3x the table's raw bytes (54 MB here; the benchmark measures a larger one, and while
    predicting)."""
    import hps_cli.tf as hps

    small = hps.export_saved_model(_memory_model(tmp_path / "s", 10, 32), tmp_path / "small")
    big = hps.export_saved_model(_memory_model(tmp_path / "b", 400_000, 32), tmp_path / "big")
    assert big.raw_bytes == 400_000 * (8 + 4 * 32) and small.raw_bytes == 10 * (8 + 4 * 32)
    done = subprocess.run(
        [sys.executable, "-c", MEMORY, str(small.path), str(big.path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    mem = json.loads(done.stdout.strip().splitlines()[-1])
    peak = (mem["after"]["VmHWM"] - mem["before"]["VmRSS"]) / big.raw_bytes
    held = (mem["after"]["VmRSS"] - mem["before"]["VmRSS"]) / big.raw_bytes
    assert 0.95 <= held <= peak <= 1.3, (held, peak)
