"""`hps serve` lookup models, queried with stock tritonclient (HTTP and gRPC, binary and JSON):
results equal the in-process ``HPS``; metadata, config, statistics, batching, metrics, access
log and the admin endpoints (table updates reaching the cached copies)."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from helpers.runtime_configs import make_tables, ps_config
from helpers.serve_client import (
    binary_output,
    http_get,
    http_post,
    lookup_inputs,
    scrape,
)
from hps_cli.runtime import HPS
from hps_cli.runtime.table.synthetic import synthetic_vectors
from tritonclient.utils import InferenceServerException

from hps_cli.devtools.serve_process import ServeProcess

DIMS = {"a": 8, "b": 16}
TOKEN = "s3cret-admin-token-for-tests"


def _config(tmp, **extra) -> dict:
    tables = make_tables(tmp, {"a": (2000, 8), "b": (1000, 16)}, with_meta=True)
    doc = ps_config(
        tables,
        DIMS,
        defaults={"a": 0.0, "b": -1.0},
        gpucache=True,
        gpucacheper=0.5,
        hit_rate_threshold=1.0,
        max_batch_size=64,
        maxnum_catfeature_query_per_table_per_sample=[1, 2],
        **extra,
    )
    big = make_tables(tmp, {"c": (300, 128)})
    doc["models"].append(
        ps_config(big, {"c": 128}, model="wide", gpucache=False, max_batch_size=4096)["models"][0]
    )
    return doc


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve-lookup")
    doc = _config(tmp)
    path = tmp / "ps.json"
    path.write_text(json.dumps(doc))
    server = ServeProcess(
        path,
        extra_args=[
            "--max-queue-delay-us",
            "2000",
            "--access-log",
            str(tmp / "access.log"),
            "--allow-shared-memory",
        ],
        # The cache metrics need a cache: without a GPU, its NumPy reference.
        env={"HPS_CACHE_BACKEND": "reference"},
    ).start()
    runtime = HPS(path)
    yield server, runtime, tmp
    runtime.close()
    assert server.stop() == 0


def _keys(rng, n_a: int, n_b: int) -> tuple[np.ndarray, np.ndarray]:
    a = rng.integers(-50, 2100, n_a)  # some unknown keys: defaults
    b = rng.integers(0, 1100, n_b)
    return np.concatenate([a, b]).astype(np.int64), np.array([n_a, n_b], np.int32)


def test_health_metadata_and_config_over_both_protocols(setup):
    server, _, _ = setup
    for module, url in ((thttp, server.http_url), (tgrpc, server.grpc_url)):
        client = module.InferenceServerClient(url)
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("m") and client.is_model_ready("wide")
        assert not client.is_model_ready("nope")
        meta = client.get_model_metadata("m")
        config = client.get_model_config("m")
        if module is tgrpc:
            assert [i.name for i in meta.inputs] == ["KEYS", "NUMKEYS"]
            assert [i.datatype for i in meta.inputs] == ["INT64", "INT32"]
            assert meta.outputs[0].name == "OUTPUT0" and meta.outputs[0].datatype == "FP32"
            assert config.config.max_batch_size == 64 and config.config.backend == "hps"
            assert list(config.config.input[0].dims) == [-1]
        else:
            assert meta["inputs"] == [
                {"name": "KEYS", "datatype": "INT64", "shape": [-1, -1]},
                {"name": "NUMKEYS", "datatype": "INT32", "shape": [-1, -1]},
            ]
            assert meta["outputs"][0]["name"] == "OUTPUT0"
            assert config["max_batch_size"] == 64 and config["backend"] == "hps"
            assert config["input"][0] == {"name": "KEYS", "data_type": "TYPE_INT64", "dims": [-1]}
            assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 2000
        server_meta = client.get_server_metadata()
        extensions = server_meta["extensions"] if module is thttp else server_meta.extensions
        assert "binary_tensor_data" in extensions and "statistics" in extensions


@pytest.mark.parametrize("protocol", ["http-binary", "http-json", "grpc"])
def test_lookups_equal_the_in_process_runtime(setup, protocol, rng):
    server, runtime, _ = setup
    module = tgrpc if protocol == "grpc" else thttp
    client = module.InferenceServerClient(
        server.grpc_url if protocol == "grpc" else server.http_url
    )
    binary = protocol != "http-json"
    for n_a, n_b in ((5, 7), (64, 0), (0, 128), (1, 1), (10, 100)):
        keys, counts = _keys(rng, n_a, n_b)
        outputs = (
            [module.InferRequestedOutput("OUTPUT0", binary_data=binary)]
            if module is thttp
            else None
        )
        result = client.infer(
            "m", lookup_inputs(module, keys, counts, binary=binary), outputs=outputs
        )
        got = result.as_numpy("OUTPUT0")
        expected = runtime.lookup_concatenated(keys, counts, "m")
        assert got.shape == (1, expected.size)
        np.testing.assert_array_equal(got.reshape(-1), expected)
        # independent oracle: the synthetic table values, defaults for unknown keys
        a = synthetic_vectors(keys[:n_a], 8)
        a[(keys[:n_a] < 0) | (keys[:n_a] >= 2000)] = 0.0
        b = synthetic_vectors(keys[n_a:], 16)
        b[keys[n_a:] >= 1000] = -1.0
        np.testing.assert_array_equal(
            got.reshape(-1), np.concatenate([a.reshape(-1), b.reshape(-1)])
        )
        params = (
            result.get_response()["parameters"]
            if module is thttp
            else {k: v.int64_param for k, v in result.get_response().parameters.items()}
        )
        assert params["NumSample"] == -(-keys.size // 3) and params["DeviceID"] == 0


def test_flat_shapes_and_json_inputs_with_binary_output(setup):
    """[total] / [n_tables] (no batch dimension) are accepted; the output has none either."""
    server, runtime, _ = setup
    keys, counts = np.array([3, 4, 5], np.int64), np.array([2, 1], np.int32)
    body = json.dumps(
        {
            "inputs": [
                {"name": "KEYS", "shape": [3], "datatype": "INT64", "data": keys.tolist()},
                {"name": "NUMKEYS", "shape": [2], "datatype": "INT32", "data": counts.tolist()},
            ],
            "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}],
            "id": "req-7",
        }
    ).encode()
    status, headers, data = http_post(server.http_url, "/v2/models/m/versions/1/infer", body)
    assert status == 200
    header = json.loads(data[: int(headers["Inference-Header-Content-Length"])])
    assert header["id"] == "req-7" and header["outputs"][0]["shape"] == [32]
    np.testing.assert_array_equal(
        binary_output(headers, data), runtime.lookup_concatenated(keys, counts, "m")
    )


def test_compressed_requests_and_responses(setup, rng):
    server, runtime, _ = setup
    keys, counts = _keys(rng, 20, 20)
    expected = runtime.lookup_concatenated(keys, counts, "m")
    client = thttp.InferenceServerClient(server.http_url)
    for request, response in (("gzip", None), ("deflate", None), (None, "gzip")):
        result = client.infer(
            "m",
            lookup_inputs(thttp, keys, counts),
            request_compression_algorithm=request,
            response_compression_algorithm=response,
        )
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0").reshape(-1), expected)
    grpc_client = tgrpc.InferenceServerClient(server.grpc_url)
    result = grpc_client.infer(
        "m", lookup_inputs(tgrpc, keys, counts), compression_algorithm="gzip"
    )
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0").reshape(-1), expected)


def test_dim_128_model(setup, rng):
    server, runtime, _ = setup
    client = tgrpc.InferenceServerClient(server.grpc_url)
    keys = rng.integers(0, 320, 1000).astype(np.int64)
    got = client.infer("wide", lookup_inputs(tgrpc, keys, [1000])).as_numpy("OUTPUT0")
    np.testing.assert_array_equal(
        got.reshape(-1), runtime.lookup_concatenated(keys, [1000], "wide")
    )


def test_max_batch_size_is_enforced(setup):
    server, _, _ = setup
    client = thttp.InferenceServerClient(server.http_url)
    keys = np.arange(193, dtype=np.int64)  # 193 keys / 3 per sample = 65 samples > 64
    with pytest.raises(InferenceServerException) as err:
        client.infer("m", lookup_inputs(thttp, keys, [100, 93]))
    assert err.value.status() == "400" and "max_batch_size 64" in err.value.message()
    ok = client.infer("m", lookup_inputs(thttp, keys[:192], [100, 92]))
    assert ok.as_numpy("OUTPUT0").size == 100 * 8 + 92 * 16


def test_concurrent_requests_are_batched_and_exact(setup):
    server, runtime, _ = setup
    before = scrape(server.metrics_url)
    errors, wrong = [], []

    def worker(seed: int) -> None:
        rng = np.random.default_rng(seed)
        client = (
            tgrpc.InferenceServerClient(server.grpc_url)
            if seed % 2
            else thttp.InferenceServerClient(server.http_url)
        )
        module = tgrpc if seed % 2 else thttp
        try:
            for _ in range(25):
                keys, counts = _keys(rng, int(rng.integers(0, 40)), int(rng.integers(0, 40)))
                got = client.infer("m", lookup_inputs(module, keys, counts)).as_numpy("OUTPUT0")
                if not np.array_equal(
                    got.reshape(-1), runtime.lookup_concatenated(keys, counts, "m")
                ):
                    wrong.append(seed)
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and not wrong
    after = scrape(server.metrics_url)
    key = 'hps_batch_requests_count{model="m"}'
    batches = after[key] - before.get(key, 0)
    requests = after['hps_batch_requests_sum{model="m"}'] - before.get(
        'hps_batch_requests_sum{model="m"}', 0
    )
    assert requests == 200 and batches < requests  # some requests were coalesced
    assert (
        after['hps_batch_samples_bucket{le="64.0",model="m"}']
        == after['hps_batch_samples_count{model="m"}']
    )  # never beyond max_batch_size


def test_statistics_metrics_and_access_log(setup):
    server, _, tmp = setup
    client = thttp.InferenceServerClient(server.http_url)
    client.infer("m", lookup_inputs(thttp, np.array([1, 2], np.int64), [1, 1]))
    stats = client.get_inference_statistics("m")["model_stats"][0]
    assert stats["name"] == "m" and stats["inference_stats"]["success"]["count"] >= 1
    assert stats["execution_count"] >= 1 and stats["inference_count"] >= 1
    grpc_stats = tgrpc.InferenceServerClient(server.grpc_url).get_inference_statistics("m")
    assert grpc_stats.model_stats[0].inference_stats.success.count >= 1
    metrics = scrape(server.metrics_url)
    assert metrics['hps_requests_total{code="200",model="m",protocol="http"}'] >= 1
    assert metrics['hps_requests_total{code="OK",model="m",protocol="grpc"}'] >= 1
    assert metrics['hps_request_duration_seconds_count{model="m",protocol="http"}'] >= 1
    assert metrics["hps_ready"] == 1.0
    assert 'hps_queue_depth{model="m"}' in metrics
    hit = metrics['hps_table_hit_rate{model="m",table="a",tier="volatile"}']
    assert 0.0 < hit <= 1.0
    assert metrics['hps_table_keys_total{model="m",result="default",table="a"}'] > 0
    assert metrics['hps_cache_capacity{device="0",model="m",table="a"}'] >= 1000
    assert (
        0
        < metrics['hps_cache_occupancy{device="0",model="m",table="a"}']
        <= metrics['hps_cache_capacity{device="0",model="m",table="a"}']
    )
    assert 0.0 < metrics['hps_cache_hit_rate{device="0",model="m",table="a"}'] <= 1.0
    lines = [json.loads(x) for x in (tmp / "access.log").read_text().splitlines()]
    infer = [x for x in lines if x.get("path") == "/v2/models/m/infer"]
    assert infer and {
        "ts",
        "protocol",
        "method",
        "status",
        "ms",
        "bytes_in",
        "bytes_out",
        "peer",
        "model",
    } <= set(infer[-1])
    assert any(x.get("protocol") == "grpc" and x.get("method") == "ModelInfer" for x in lines)


def test_admin_endpoints_are_disabled_without_a_token(setup):
    server, _, _ = setup
    status, _, body = http_post(
        server.http_url,
        "/v2/admin/models/m/tables/a/remove",
        b"{}",
        {"Authorization": f"Bearer {TOKEN}"},
    )
    assert status == 403 and "disabled" in json.loads(body)["error"]
    with pytest.raises(InferenceServerException) as err:
        tgrpc.InferenceServerClient(server.grpc_url).unload_model("m")
    assert "PERMISSION_DENIED" in err.value.status()


@pytest.fixture(scope="module")
def admin_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve-admin")
    path = tmp / "ps.json"
    path.write_text(json.dumps(_config(tmp)))
    server = ServeProcess(
        path, env={"HPS_ADMIN_TOKEN": TOKEN, "HPS_CACHE_BACKEND": "reference"}
    ).start()
    yield server
    assert server.stop() == 0


def _update(server, table: str, op: str, keys, vectors=None, token=TOKEN, binary=True):
    keys = np.asarray(keys, np.int64)
    inputs = [("KEYS", keys, "INT64")] + (
        [("VECTORS", vectors, "FP32")] if vectors is not None else []
    )
    doc, blobs = {"inputs": []}, []
    for name, array, dtype in inputs:
        entry = {"name": name, "shape": list(array.shape), "datatype": dtype}
        if binary:
            entry["parameters"] = {"binary_data_size": array.nbytes}
            blobs.append(np.ascontiguousarray(array).tobytes())
        else:
            entry["data"] = array.reshape(-1).tolist()
        doc["inputs"].append(entry)
    header = json.dumps(doc).encode()
    headers = {"Authorization": f"Bearer {token}"}
    if binary:
        headers["Inference-Header-Content-Length"] = str(len(header))
    return http_post(
        server.http_url,
        f"/v2/admin/models/m/tables/{table}/{op}",
        header + b"".join(blobs),
        headers,
    )


def test_admin_insert_and_remove_reach_every_tier_and_the_cache(admin_server):
    server = admin_server
    grpc_client = tgrpc.InferenceServerClient(server.grpc_url)
    keys = np.array([5, 6, 1500, 9999], np.int64)  # cached, cached, maybe not, new

    def look():
        return (
            grpc_client.infer("m", lookup_inputs(tgrpc, keys, [4, 0]))
            .as_numpy("OUTPUT0")
            .reshape(4, 8)
        )

    before = look()
    np.testing.assert_array_equal(before[:3], synthetic_vectors(keys[:3], 8))
    assert (before[3] == 0.0).all()
    cache = scrape(server.metrics_url)
    new = np.arange(32, dtype=np.float32).reshape(4, 8) + 0.5
    status, _, body = _update(server, "a", "insert", keys, new)
    assert status == 200, body
    answer = json.loads(body)
    assert {k: answer[k] for k in ("model", "table", "operation", "keys")} == {
        "model": "m",
        "table": "a",
        "operation": "insert",
        "keys": 4,
    }
    assert answer["durable"] is False and "until the server restarts" in answer["lasts"]
    np.testing.assert_array_equal(look(), new)  # the cached copies were replaced too
    after = scrape(server.metrics_url)
    assert (
        after['hps_cache_keys_total{device="0",model="m",result="hit",table="a"}']
        > cache['hps_cache_keys_total{device="0",model="m",result="hit",table="a"}']
    )
    status, _, body = _update(server, "a", "remove", keys[:2], binary=False)
    assert status == 200, body
    got = look()
    assert (got[:2] == 0.0).all()  # the default of table a
    np.testing.assert_array_equal(got[2:], new[2:])
    status, _, body = _update(
        server, "0", "insert", keys[:2], synthetic_vectors(keys[:2], 8), binary=False
    )  # table by index, JSON tensors
    assert status == 200, body
    np.testing.assert_array_equal(look()[:2], synthetic_vectors(keys[:2], 8))


def test_admin_errors(admin_server):
    server = admin_server
    status, headers, body = _update(server, "a", "remove", [1], token="wrong-token-xxxxxxxx")
    assert status == 401 and "wrong bearer token" in json.loads(body)["error"]
    assert headers.get("WWW-Authenticate", "").startswith("Bearer")
    status, _, body = http_post(server.http_url, "/v2/admin/models/m/tables/a/remove", b"{}")
    assert status == 401 and "Authorization" in json.loads(body)["error"]
    status, _, body = _update(server, "zz", "remove", [1])
    assert status == 404 and "no table 'zz'" in json.loads(body)["error"]
    status, _, body = _update(server, "a", "insert", [1, 2], np.zeros((2, 9), np.float32))
    assert status == 400 and "VECTORS" in json.loads(body)["error"]
    status, _, body = _update(server, "a", "insert", [1, 2])
    assert status == 400 and "missing input 'VECTORS'" in json.loads(body)["error"]
    client = thttp.InferenceServerClient(server.http_url)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with pytest.raises(InferenceServerException) as err:
        client.load_model("nowhere", headers=auth)  # neither in ps.json nor a package
    assert err.value.status() == "404" and "no model 'nowhere'" in err.value.message()
    with pytest.raises(InferenceServerException) as err:
        client.load_model("../etc", headers=auth)
    assert err.value.status() in ("400", "404")
    index = client.get_model_repository_index(headers=auth)
    assert [(m["name"], m["state"]) for m in index] == [("m", "READY"), ("wide", "READY")]
    status, _ = http_get(server.http_url, "/v2/health/ready")
    assert status == 200


@pytest.mark.parametrize("module", [thttp, tgrpc], ids=["http", "grpc"])
def test_system_shared_memory_inputs_and_outputs(setup, module, rng):
    """Triton's system shared memory extension through tritonclient's own helpers: KEYS read
    from a region, OUTPUT0 written into one; the response carries no vector bytes."""
    import tritonclient.utils.shared_memory as shm

    server, runtime, _ = setup
    client = module.InferenceServerClient(server.grpc_url if module is tgrpc else server.http_url)
    keys, counts = _keys(rng, 40, 30)
    out_bytes = (40 * 8 + 30 * 16) * 4
    name = f"hps_test_{module.__name__.split('.')[-1]}"
    handle = shm.create_shared_memory_region(name, "/" + name, 4096 + out_bytes)
    try:
        shm.set_shared_memory_region(handle, [keys], offset=4096)
        client.register_system_shared_memory(name, "/" + name, 4096 + out_bytes)
        status = client.get_system_shared_memory_status()
        names = [r["name"] for r in status] if module is thttp else list(status.regions)
        assert name in names
        a = module.InferInput("KEYS", [1, keys.size], "INT64")
        a.set_shared_memory(name, keys.nbytes, offset=4096)
        b = module.InferInput("NUMKEYS", [1, 2], "INT32")
        b.set_data_from_numpy(counts.reshape(1, -1))
        out = module.InferRequestedOutput("OUTPUT0")
        out.set_shared_memory(name, out_bytes)
        result = client.infer("m", [a, b], outputs=[out])
        got = shm.get_contents_as_numpy(handle, np.float32, [1, out_bytes // 4])
        np.testing.assert_array_equal(
            got.reshape(-1), runtime.lookup_concatenated(keys, counts, "m")
        )
        meta = result.get_output("OUTPUT0")
        params = (
            meta["parameters"]
            if module is thttp
            else {
                k: getattr(v, v.WhichOneof("parameter_choice")) for k, v in meta.parameters.items()
            }
        )
        assert params["shared_memory_region"] == name
        assert params["shared_memory_byte_size"] == out_bytes
        small = module.InferRequestedOutput("OUTPUT0")
        small.set_shared_memory(name, out_bytes - 4)
        with pytest.raises(InferenceServerException) as err:
            client.infer("m", [a, b], outputs=[small])
        assert "region gives" in err.value.message()
        client.unregister_system_shared_memory(name)
        with pytest.raises(InferenceServerException) as err:
            client.infer("m", [a, b], outputs=[out])
        assert "no shared memory region" in err.value.message()
    finally:
        client.unregister_system_shared_memory()
        shm.destroy_shared_memory_region(handle)


def test_shared_memory_registration_errors(setup, tmp_path):
    server, _, _ = setup
    client = thttp.InferenceServerClient(server.http_url)
    for key, text in (
        ("/no_such_region_hps", "cannot open"),
        ("/../etc/passwd", "must name"),
        ("a/b", "must name"),
    ):
        with pytest.raises(InferenceServerException) as err:
            client.register_system_shared_memory("r", key, 8)
        assert text in err.value.message(), err.value.message()
    import tritonclient.utils.shared_memory as shm

    handle = shm.create_shared_memory_region("hps_small", "/hps_small", 64)
    try:
        with pytest.raises(InferenceServerException) as err:
            client.register_system_shared_memory("r", "/hps_small", 128)
        assert err.value.status() == "400" and "exceeds" in err.value.message()
        client.register_system_shared_memory("r", "/hps_small", 64)
        with pytest.raises(InferenceServerException) as err:
            client.register_system_shared_memory("r", "/hps_small", 64)
        assert "already registered" in err.value.message()
    finally:
        client.unregister_system_shared_memory()
        shm.destroy_shared_memory_region(handle)


def test_shared_memory_is_off_by_default(admin_server):
    client = thttp.InferenceServerClient(admin_server.http_url)
    with pytest.raises(InferenceServerException) as err:
        client.register_system_shared_memory("r", "/x", 8)
    assert err.value.status() == "403" and "--allow-shared-memory" in err.value.message()
    assert "system_shared_memory" not in client.get_server_metadata()["extensions"]


def test_a_fused_config_serves_the_unfused_answers_and_its_warnings_are_logged(tmp_path, rng):
    """Table fusion through `hps serve`: two tables of one dim fused (keys apart), a third
    table of another dim; answers equal the unfused in-process runtime's. A field hps ignores
    is reported in the server's log with its JSON path."""
    tables = {}
    for name, first in (("x", 0), ("y", 5000), ("z", 9000)):
        tables.update(
            make_tables(tmp_path, {name: (1000, 4 if name != "z" else 8)}, first_key=first)
        )
    dims = {"x": 4, "y": 4, "z": 8}
    plain = ps_config(tables, dims, gpucache=True, hit_rate_threshold=1.0, max_batch_size=256)
    fused = json.loads(json.dumps(plain))
    fused["fuse_embedding_table"] = True
    fused["models"][0]["use_context_stream"] = False
    path = tmp_path / "fused.json"
    path.write_text(json.dumps(fused))
    with ServeProcess(path) as server, HPS(plain) as runtime:
        client = thttp.InferenceServerClient(server.http_url)
        for _ in range(3):
            parts = [rng.integers(f, f + 1100, n) for f, n in ((0, 30), (5000, 20), (9000, 9))]
            keys, counts = np.concatenate(parts), np.array([p.size for p in parts], np.int32)
            got = client.infer("m", lookup_inputs(thttp, keys, counts)).as_numpy("OUTPUT0")
            np.testing.assert_array_equal(
                got.reshape(-1), runtime.lookup_concatenated(keys, counts, "m")
            )
        assert "$.models[0].use_context_stream: has no effect" in server.log_text()


@pytest.mark.parametrize("offset", [0, 1, 3])
def test_keys_wherever_they_sit_in_the_body_reach_the_tiers_aligned(tmp_path, offset):
    """Binary KEYS start wherever the request's JSON header ends: a lookup model hands the
    tiers (and the compiled probe) contiguous, aligned int64 keys with the same values, and
    answers their vectors."""
    from hps_cli.serve.models import LookupModel
    from hps_cli.serve.protocol import InferRequest, Tensor
    from hps_cli.serve.served_runtime import ServedRuntime

    tables = make_tables(tmp_path, {"a": (1_000, 8)})
    config = tmp_path / "ps.json"
    config.write_text(json.dumps(ps_config(tables, {"a": 8}, max_batch_size=64)))
    keys = np.arange(5, 69, dtype=np.int64)
    body = bytes(offset) + keys.tobytes()
    placed = np.frombuffer(body, np.int64, offset=offset).reshape(1, -1)
    assert placed.flags.aligned == (offset == 0)
    runtime = ServedRuntime(config)
    try:
        model = LookupModel("m", runtime)
        request = InferRequest(
            model="m",
            inputs={
                "KEYS": Tensor("KEYS", "INT64", placed),
                "NUMKEYS": Tensor("NUMKEYS", "INT32", np.array([[keys.size]], np.int32)),
            },
        )
        work = model.prepare(request)
        (handed,) = work.data["keys"]
        assert handed.flags.aligned and handed.flags.c_contiguous and handed.dtype == np.int64
        np.testing.assert_array_equal(handed, keys)
        (result,) = model.execute([work])
        (output,) = result.outputs
        np.testing.assert_array_equal(output.array.reshape(-1, 8), synthetic_vectors(keys, 8))
    finally:
        runtime.close()
