"""`hps serve` inference models: packages written by `hps dissect` (and `hps build-graph`) from
the trained test models, queried with tritonclient (HTTP binary and JSON, gRPC); the answers
equal the predictions the original TensorFlow models made at training time."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from helpers.dissect_models import expected, trained_models
from helpers.serve_client import http_get, http_post, scrape
from tritonclient.utils import InferenceServerException

from hps_cli.devtools.serve_process import ServeProcess

pytestmark = [pytest.mark.tf, pytest.mark.slow]

TOKEN = "inference-admin-token-0123456789"
# package name -> (flavour, model file, npz, --table specs)
PACKAGES = {
    "dlrm": ("keras3", "dlrm.keras", "dlrm"),  # Keras functional cut, shared runtime
    "dlrm_sm": ("tf_keras", "dlrm_sm", "dlrm"),  # graph cut of a tf_keras SavedModel
    "notebook": ("keras3", "notebook_sm", "notebook"),  # SparseTensor ids, mean combiner
    "lookup": ("keras3", "lookup_export", "lookup"),  # IntegerLookup: raw ids are the keys
}
DTYPES = {"INT64": np.int64, "INT32": np.int32, "FP32": np.float32}


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    from hps_cli.dissect.pipeline import DissectOptions, dissect

    models = trained_models()
    base = tmp_path_factory.mktemp("serve-inference")
    repository = base / "repo"
    repository.mkdir()
    for name, (flavour, path, _) in PACKAGES.items():
        dissect(models / flavour / path, repository / name, DissectOptions())
    # an hps build-graph package (dissect output + model.keras + an inference section)
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "hps_cli",
            "build-graph",
            str(repository / "notebook"),
            str(repository / "notebook_pkg"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr
    (repository / "not_a_package").mkdir()  # ignored: no manifest.json
    return models, repository


@pytest.fixture(scope="module")
def server(repo):
    models, repository = repo
    proc = ServeProcess(
        repository / "dlrm" / "ps.json",
        model_repository=repository,
        extra_args=["--max-queue-delay-us", "20000"],
        env={"HPS_ADMIN_TOKEN": TOKEN},
        ready_timeout=300,
    ).launch()
    proc.wait_for("listening")
    # While the packages load (TensorFlow takes seconds): alive, not ready, inference refused.
    seen_loading = False
    while proc.process.poll() is None:
        ready = http_get(proc.http_url, "/v2/health/ready")[0]
        if ready == 200:
            break
        assert http_get(proc.http_url, "/v2/health/live")[0] == 200
        status, _, body = http_post(proc.http_url, "/v2/models/dlrm_like/infer", b"{}")
        if status == 503:
            seen_loading = True
            assert "not ready" in json.loads(body)["error"]
        time.sleep(0.05)
    proc.wait_for("ready")
    assert seen_loading
    yield proc, models, repository
    assert proc.stop() == 0


def _feeds(name: str, models, repository) -> tuple[dict, np.ndarray]:
    """Served inputs (by tensor name) from the recorded sample, and the recorded prediction."""
    flavour, _, npz = PACKAGES.get(name, PACKAGES["notebook"])
    data = expected(models / flavour / f"{npz}.npz")
    manifest = json.loads((repository / name / "manifest.json").read_text())
    feeds = {}
    for spec in manifest["inputs"]:
        if spec["format"] == "sparse":
            for part, tensor in spec["components"].items():
                feeds[tensor] = data[f"in:{spec['name']}:{part}"]
        else:
            feeds[spec["name"]] = data[f"in:{spec['name']}"]
    out = next(v for k, v in data.items() if k.startswith("out:"))
    return feeds, out


def _inputs(module, metadata, feeds, binary=True):
    specs = (
        metadata["inputs"]
        if isinstance(metadata, dict)
        else [{"name": i.name, "datatype": i.datatype} for i in metadata.inputs]
    )
    inputs = []
    for spec in specs:
        array = np.asarray(feeds[spec["name"]]).astype(DTYPES[spec["datatype"]])
        tensor = module.InferInput(spec["name"], list(array.shape), spec["datatype"])
        if module is thttp:
            tensor.set_data_from_numpy(array, binary_data=binary)
        else:
            tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


ALL = ["dlrm", "dlrm_sm", "notebook", "lookup", "notebook_pkg"]


@pytest.mark.parametrize("protocol", ["http-binary", "http-json", "grpc"])
def test_inference_models_reproduce_the_trained_predictions(server, protocol):
    proc, models, repository = server
    module = tgrpc if protocol == "grpc" else thttp
    client = module.InferenceServerClient(proc.grpc_url if module is tgrpc else proc.http_url)
    for name in ALL:
        assert client.is_model_ready(name)
        metadata = client.get_model_metadata(name)
        feeds, wanted = _feeds(name, models, repository)
        binary = protocol != "http-json"
        outputs = None
        out_name = metadata["outputs"][0]["name"] if module is thttp else metadata.outputs[0].name
        if module is thttp:
            outputs = [thttp.InferRequestedOutput(out_name, binary_data=binary)]
        result = client.infer(name, _inputs(module, metadata, feeds, binary), outputs=outputs)
        got = result.as_numpy(out_name)
        assert got.shape == wanted.shape, name
        assert np.max(np.abs(got - wanted)) <= 1e-5, name


def test_metadata_and_config(server):
    proc, _, _ = server
    client = thttp.InferenceServerClient(proc.http_url)
    meta = client.get_model_metadata("dlrm")
    assert [(i["name"], i["datatype"], i["shape"]) for i in meta["inputs"]] == [
        ("user", "INT64", [-1, 1]),
        ("items", "INT64", [-1, 3]),
        ("dense", "FP32", [-1, 4]),
    ]
    config = client.get_model_config("dlrm")
    assert config["max_batch_size"] == 1024 and config["input"][1]["dims"] == [3]
    sparse = client.get_model_metadata("notebook")
    assert [i["name"] for i in sparse["inputs"]] == ["ids", "ids_1", "ids_2", "dense"]
    assert client.get_model_config("notebook")["max_batch_size"] == 0  # no common batch dim
    assert client.get_model_metadata("notebook_pkg")["platform"] == "hps_tensorflow"
    index = {
        m["name"]
        for m in client.get_model_repository_index(headers={"Authorization": f"Bearer {TOKEN}"})
    }
    assert index == {"dlrm_like", *ALL}


def test_concurrent_requests_are_split_back_exactly(server):
    """Slices of the sample, sent at once, are batched into one execution and each gets its
    own rows of the predictions back."""
    proc, models, repository = server
    feeds, wanted = _feeds("dlrm", models, repository)
    before = scrape(proc.metrics_url)
    client_meta = thttp.InferenceServerClient(proc.http_url).get_model_metadata("dlrm")
    bounds = [(0, 3), (3, 4), (4, 9), (9, 16)]
    results, errors = {}, []

    def send(lo: int, hi: int) -> None:
        try:
            client = thttp.InferenceServerClient(proc.http_url)
            part = {k: v[lo:hi] for k, v in feeds.items()}
            results[lo] = client.infer("dlrm", _inputs(thttp, client_meta, part)).as_numpy("ctr")
        except Exception as exc:  # noqa: BLE001 - asserted below
            errors.append(exc)

    for _ in range(3):
        threads = [threading.Thread(target=send, args=b) for b in bounds]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        for lo, hi in bounds:
            assert np.max(np.abs(results[lo] - wanted[lo:hi])) <= 1e-5
    after = scrape(proc.metrics_url)
    requests = after['hps_batch_requests_sum{model="dlrm"}'] - before.get(
        'hps_batch_requests_sum{model="dlrm"}', 0
    )
    batches = after['hps_batch_requests_count{model="dlrm"}'] - before.get(
        'hps_batch_requests_count{model="dlrm"}', 0
    )
    assert requests == 12 and batches < requests


def test_inference_request_errors(server):
    proc, models, repository = server
    client = thttp.InferenceServerClient(proc.http_url)
    meta = client.get_model_metadata("dlrm")
    feeds, _ = _feeds("dlrm", models, repository)
    cases = [
        ({**feeds, "dense": feeds["dense"][:5]}, "differs"),  # batch sizes disagree
        ({**feeds, "items": feeds["items"][:, :2]}, "items: shape"),  # fixed dim wrong
        ({k: np.repeat(v, 80, axis=0) for k, v in feeds.items()}, "max_batch_size 1024"),
    ]
    for feed, text in cases:
        with pytest.raises(InferenceServerException) as err:
            client.infer("dlrm", _inputs(thttp, meta, feed))
        assert err.value.status() == "400" and text in err.value.message()
    sparse_meta = client.get_model_metadata("notebook")
    feeds, _ = _feeds("notebook", models, repository)
    outside = feeds["ids"].copy()
    outside[0, 1] = 99  # column beyond dense_shape
    for feed, text in (
        ({**feeds, "ids": outside}, "inside dense_shape"),
        ({**feeds, "ids_2": np.array([16, 7])}, "dimension 1 is 7"),
        ({**feeds, "ids_1": feeds["ids_1"][:-1]}, "one index per value"),
    ):
        with pytest.raises(InferenceServerException) as err:
            client.infer("notebook", _inputs(thttp, sparse_meta, feed))
        assert err.value.status() == "400" and text in err.value.message(), err.value.message()
    assert client.is_server_ready()


def test_admin_update_of_a_shared_table_changes_the_inference(server):
    """The dlrm package shares the server's runtime (its model is in --config): an insert into
    the lookup model's table is seen by the inference model; restoring the rows restores it."""
    proc, models, repository = server
    client = thttp.InferenceServerClient(proc.http_url)
    meta = client.get_model_metadata("dlrm")
    feeds, wanted = _feeds("dlrm", models, repository)
    users = np.unique(feeds["user"].reshape(-1))
    original = (
        client.infer("dlrm_like", _lookup_inputs(users, len(users)))
        .as_numpy("OUTPUT0")
        .reshape(len(users), 8)
    )

    def update(vectors):
        header = json.dumps(
            {
                "inputs": [
                    {
                        "name": "KEYS",
                        "shape": [len(users)],
                        "datatype": "INT64",
                        "data": users.tolist(),
                    },
                    {
                        "name": "VECTORS",
                        "shape": [len(users), 8],
                        "datatype": "FP32",
                        "data": vectors.reshape(-1).tolist(),
                    },
                ]
            }
        ).encode()
        status, _, body = http_post(
            proc.http_url,
            "/v2/admin/models/dlrm_like/tables/user_emb/insert",
            header,
            {"Authorization": f"Bearer {TOKEN}"},
        )
        assert status == 200, body

    update(original + 1.0)
    changed = client.infer("dlrm", _inputs(thttp, meta, feeds)).as_numpy("ctr")
    assert np.max(np.abs(changed - wanted)) > 1e-4
    update(original)
    restored = client.infer("dlrm", _inputs(thttp, meta, feeds)).as_numpy("ctr")
    assert np.max(np.abs(restored - wanted)) <= 1e-5
    # the lookup model's runtime serves the package: not reloaded or unloaded from under it
    for operation in ("load", "unload"):
        status, _, body = http_post(
            proc.http_url,
            f"/v2/repository/models/dlrm_like/{operation}",
            b"",
            {"Authorization": f"Bearer {TOKEN}"},
        )
        assert status == 400 and "inference model(s) dlrm" in json.loads(body)["error"], body
    assert client.is_model_ready("dlrm_like") and client.is_model_ready("dlrm")


def _lookup_inputs(keys, n):
    a = thttp.InferInput("KEYS", [1, n], "INT64")
    a.set_data_from_numpy(np.asarray(keys, np.int64).reshape(1, -1))
    b = thttp.InferInput("NUMKEYS", [1, 2], "INT32")
    b.set_data_from_numpy(np.array([[n, 0]], np.int32))
    return [a, b]


def test_unload_and_load_a_package(server):
    proc, models, repository = server
    auth = {"Authorization": f"Bearer {TOKEN}"}
    grpc_auth = {"authorization": f"Bearer {TOKEN}"}  # gRPC metadata keys are lower case
    client = tgrpc.InferenceServerClient(proc.grpc_url)
    client.unload_model("lookup", headers=grpc_auth)
    assert not client.is_model_ready("lookup")
    with pytest.raises(InferenceServerException) as err:
        client.get_model_metadata("lookup")
    assert "NOT_FOUND" in err.value.status()
    http_client = thttp.InferenceServerClient(proc.http_url)
    state = {m["name"]: m["state"] for m in http_client.get_model_repository_index(headers=auth)}
    assert state["lookup"] == "UNAVAILABLE"
    client.load_model("lookup", headers=grpc_auth)
    assert client.is_model_ready("lookup")
    feeds, wanted = _feeds("lookup", models, repository)
    meta = http_client.get_model_metadata("lookup")
    got = http_client.infer("lookup", _inputs(thttp, meta, feeds)).as_numpy(
        meta["outputs"][0]["name"]
    )
    assert np.max(np.abs(got - wanted)) <= 1e-5
    with pytest.raises(InferenceServerException) as err:
        client.load_model("not_a_package", headers=grpc_auth)
    assert "NOT_FOUND" in err.value.status()
    with pytest.raises(InferenceServerException) as err:
        client.load_model("lookup", headers={"authorization": "Bearer nope"})
    assert "UNAUTHENTICATED" in err.value.status()
    # a package copied in at run time becomes loadable
    shutil.copytree(repository / "lookup", repository / "lookup2")
    http_client.load_model("lookup2", headers=auth)
    got = http_client.infer("lookup2", _inputs(thttp, meta, feeds)).as_numpy(
        meta["outputs"][0]["name"]
    )
    assert np.max(np.abs(got - wanted)) <= 1e-5
