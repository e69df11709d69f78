"""`hps serve` under abuse and load: a corpus of malformed requests over HTTP and gRPC, each
answered with a 4xx (or the gRPC equivalent) naming the problem, the server healthy after it;
10,000 requests at concurrency 16 without a single error."""

from __future__ import annotations

import gzip
import json
import threading

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
from helpers.runtime_configs import make_tables, ps_config
from helpers.serve_client import (
    binary_lookup_body,
    binary_output,
    http_get,
    http_post,
    lookup_inputs,
)
from hps_cli.runtime import HPS
from tritonclient.grpc import service_pb2, service_pb2_grpc

from hps_cli.devtools.serve_process import ServeProcess

LIMIT = 1 << 20  # --max-request-bytes


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve-robust")
    tables = make_tables(tmp, {"a": (3000, 8), "b": (2000, 4)})
    doc = ps_config(tables, {"a": 8, "b": 4}, max_batch_size=256)
    path = tmp / "ps.json"
    path.write_text(json.dumps(doc))
    server = ServeProcess(
        path, extra_args=["--max-request-bytes", str(LIMIT), "--access-log", "off"]
    ).start()
    runtime = HPS(path)
    yield server, runtime
    runtime.close()
    assert server.stop() == 0


def _doc(inputs=None, **extra) -> bytes:
    keys = {"name": "KEYS", "shape": [1, 3], "datatype": "INT64", "data": [1, 2, 3]}
    nums = {"name": "NUMKEYS", "shape": [1, 2], "datatype": "INT32", "data": [2, 1]}
    return json.dumps({"inputs": [keys, nums] if inputs is None else inputs, **extra}).encode()


def _keys(**change) -> dict:
    return {"name": "KEYS", "shape": [1, 3], "datatype": "INT64", "data": [1, 2, 3], **change}


def _nums(**change) -> dict:
    return {"name": "NUMKEYS", "shape": [1, 2], "datatype": "INT32", "data": [2, 1], **change}


def _binary(header: dict, payload: bytes, length: str | None = None) -> tuple[bytes, dict]:
    text = json.dumps(header).encode()
    return text + payload, {"Inference-Header-Content-Length": length or str(len(text))}


KEYS24 = np.array([1, 2, 3], np.int64).tobytes()
BIN_KEYS = {
    "name": "KEYS",
    "shape": [1, 3],
    "datatype": "INT64",
    "parameters": {"binary_data_size": 24},
}
INFER = "/v2/models/m/infer"

# (id, path, body, headers, status, text the error must contain)
HTTP_CASES = [
    ("not-json", INFER, b"{not json", {}, 400, "invalid JSON"),
    ("empty-body", INFER, b"", {}, 400, "invalid JSON"),
    ("not-utf8", INFER, b"\xff\xfe{}", {}, 400, "UTF-8"),
    ("json-array", INFER, b"[]", {}, 400, "JSON object"),
    ("no-inputs", INFER, b"{}", {}, 400, "inputs"),
    ("inputs-not-list", INFER, b'{"inputs": 5}', {}, 400, "inputs"),
    ("input-not-object", INFER, _doc([1]), {}, 400, "inputs[0]"),
    (
        "input-without-name",
        INFER,
        _doc([{"shape": [1], "datatype": "INT64", "data": [1]}]),
        {},
        400,
        "inputs[0].name",
    ),
    ("duplicate-input", INFER, _doc([_keys(), _keys()]), {}, 400, "given twice"),
    (
        "unknown-datatype",
        INFER,
        _doc([_keys(datatype="INT65"), _nums()]),
        {},
        400,
        "unknown datatype",
    ),
    (
        "bytes-datatype",
        INFER,
        _doc([_keys(datatype="BYTES", data=["a", "b", "c"]), _nums()]),
        {},
        400,
        "not supported",
    ),
    ("shape-not-list", INFER, _doc([_keys(shape="3"), _nums()]), {}, 400, "inputs[0].shape"),
    ("negative-dim", INFER, _doc([_keys(shape=[1, -3]), _nums()]), {}, 400, "dimension 1"),
    ("huge-dim", INFER, _doc([_keys(shape=[1, 2**40]), _nums()]), {}, 400, "must be in"),
    ("float-dim", INFER, _doc([_keys(shape=[1.5]), _nums()]), {}, 400, "integer"),
    ("too-many-dims", INFER, _doc([_keys(shape=[1] * 20), _nums()]), {}, 400, "dimensions"),
    ("count-mismatch", INFER, _doc([_keys(shape=[1, 4]), _nums()]), {}, 400, "needs 4"),
    ("string-data", INFER, _doc([_keys(data=["a", "b", "c"]), _nums()]), {}, 400, "numbers"),
    ("float-for-int", INFER, _doc([_keys(data=[1.5, 2, 3]), _nums()]), {}, 400, "integers"),
    ("int32-out-of-range", INFER, _doc([_keys(), _nums(data=[2**40, 1])]), {}, 400, "out of range"),
    ("ragged-data", INFER, _doc([_keys(data=[[1, 2], [3]]), _nums()]), {}, 400, "nested"),
    ("data-not-array", INFER, _doc([_keys(data=5), _nums()]), {}, 400, "JSON array"),
    ("null-in-data", INFER, _doc([_keys(data=[1, None, 3]), _nums()]), {}, 400, "numbers"),
    (
        "no-data",
        INFER,
        _doc([{"name": "KEYS", "shape": [1, 3], "datatype": "INT64"}, _nums()]),
        {},
        400,
        "neither data nor",
    ),
    (
        "negative-binary-size",
        INFER,
        *_binary(
            {"inputs": [{**BIN_KEYS, "parameters": {"binary_data_size": -24}}, _nums()]}, KEYS24
        ),
        400,
        "binary_data_size",
    ),
    (
        "binary-without-header-length",
        INFER,
        json.dumps({"inputs": [BIN_KEYS, _nums()]}).encode() + KEYS24,
        {},
        400,
        "invalid JSON",
    ),
    (
        "binary-size-without-header",
        INFER,
        _doc([BIN_KEYS, _nums()]),
        {},
        400,
        "Inference-Header-Content-Length header",
    ),
    (
        "truncated-binary",
        INFER,
        *_binary({"inputs": [BIN_KEYS, _nums()]}, KEYS24[:16]),
        400,
        "truncated",
    ),
    (
        "trailing-bytes",
        INFER,
        *_binary({"inputs": [BIN_KEYS, _nums()]}, KEYS24 + b"xx"),
        400,
        "after the last binary input",
    ),
    (
        "wrong-binary-size",
        INFER,
        *_binary(
            {"inputs": [{**BIN_KEYS, "parameters": {"binary_data_size": 23}}, _nums()]}, KEYS24[:23]
        ),
        400,
        "23 bytes",
    ),
    (
        "header-length-too-big",
        INFER,
        *_binary({"inputs": [BIN_KEYS, _nums()]}, KEYS24, "99999"),
        400,
        "larger than the body",
    ),
    (
        "header-length-not-number",
        INFER,
        *_binary({"inputs": [BIN_KEYS, _nums()]}, KEYS24, "ab"),
        400,
        "Inference-Header-Content-Length",
    ),
    (
        "raw-binary-request",
        INFER,
        KEYS24,
        {"Inference-Header-Content-Length": "0"},
        400,
        "raw binary",
    ),
    (
        "keys-int32",
        INFER,
        _doc([_keys(datatype="INT32"), _nums()]),
        {},
        400,
        "expected datatype INT64",
    ),
    (
        "numkeys-fp32",
        INFER,
        _doc([_keys(), _nums(datatype="FP32", data=[2.0, 1.0])]),
        {},
        400,
        "NUMKEYS: expected datatype INT32",
    ),
    ("keys-batch-2", INFER, _doc([_keys(shape=[3, 1]), _nums()]), {}, 400, "KEYS: shape"),
    (
        "numkeys-wrong-length",
        INFER,
        _doc([_keys(), _nums(shape=[1, 3], data=[1, 1, 1])]),
        {},
        400,
        "2 table(s)",
    ),
    ("numkeys-wrong-sum", INFER, _doc([_keys(), _nums(data=[1, 1])]), {}, 400, "sum to 2"),
    ("numkeys-negative", INFER, _doc([_keys(), _nums(data=[4, -1])]), {}, 400, "non-negative"),
    ("missing-numkeys", INFER, _doc([_keys()]), {}, 400, "missing input"),
    (
        "unknown-input",
        INFER,
        _doc([_keys(), _nums(), {**_nums(), "name": "EXTRA"}]),
        {},
        400,
        "no input 'EXTRA'",
    ),
    ("unknown-output", INFER, _doc(outputs=[{"name": "OUTPUT9"}]), {}, 400, "no output"),
    (
        "output-binary-not-bool",
        INFER,
        _doc(outputs=[{"name": "OUTPUT0", "parameters": {"binary_data": "yes"}}]),
        {},
        400,
        "binary_data",
    ),
    (
        "binary-output-not-bool",
        INFER,
        _doc(parameters={"binary_data_output": 1}),
        {},
        400,
        "binary_data_output",
    ),
    ("id-not-string", INFER, _doc(id=7), {}, 400, "id"),
    ("parameters-not-object", INFER, _doc(parameters=[1]), {}, 400, "parameters"),
    (
        "above-max-batch-size",
        INFER,
        _doc([_keys(shape=[1, 513], data=list(range(513))), _nums(data=[300, 213])]),
        {},
        400,
        "max_batch_size 256",
    ),
    ("unknown-model", "/v2/models/nope/infer", _doc(), {}, 404, "unknown model 'nope'"),
    ("unknown-version", "/v2/models/m/versions/7/infer", _doc(), {}, 404, "no version '7'"),
    ("unknown-path", "/v2/nothing", _doc(), {}, 404, "no endpoint"),
    ("too-large", INFER, b"{" + b" " * (LIMIT + 10) + b"}", {}, 413, "limit"),
    (
        "gzip-bomb",
        INFER,
        gzip.compress(b"{" + b" " * (4 * LIMIT) + b"}"),
        {"Content-Encoding": "gzip"},
        413,
        "limit",
    ),
]


def test_http_corpus_is_large_enough():
    assert len(HTTP_CASES) >= 30


@pytest.mark.parametrize("case", HTTP_CASES, ids=[c[0] for c in HTTP_CASES])
def test_malformed_http_requests_get_a_clear_4xx(setup, case):
    server, _ = setup
    _, path, body, headers, status, text = case
    got, resp_headers, data = http_post(server.http_url, path, body, headers)
    assert got == status, data[:300]
    assert resp_headers["Content-Type"].startswith("application/json")
    message = json.loads(data)["error"]
    assert text in message, message


def test_wrong_method_is_405_in_json(setup):
    server, _ = setup
    status, body = http_get(server.http_url, INFER)
    assert status == 405 and "not allowed" in json.loads(body)["error"]


def _grpc_request(
    *inputs, raw=None, outputs=(), model="m", version=""
) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=model, model_version=version)
    for name, datatype, shape, contents in inputs:
        tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
        for field, values in (contents or {}).items():
            getattr(tensor.contents, field).extend(values)
    for blob in raw or ():
        request.raw_input_contents.append(blob)
    for name in outputs:
        request.outputs.add(name=name)
    return request


K = ("KEYS", "INT64", [1, 3], None)
N = ("NUMKEYS", "INT32", [1, 2], None)
RAW = [KEYS24, np.array([2, 1], np.int32).tobytes()]

# (id, request, status code, text)
GRPC_CASES = [
    ("unknown-model", _grpc_request(K, N, raw=RAW, model="nope"), "NOT_FOUND", "unknown model"),
    ("unknown-version", _grpc_request(K, N, raw=RAW, version="3"), "NOT_FOUND", "no version"),
    ("no-inputs", _grpc_request(), "INVALID_ARGUMENT", "non-empty"),
    (
        "raw-count-mismatch",
        _grpc_request(K, N, raw=RAW[:1]),
        "INVALID_ARGUMENT",
        "raw_input_contents has 1",
    ),
    (
        "unknown-datatype",
        _grpc_request(("KEYS", "INT65", [1, 3], None), N, raw=RAW),
        "INVALID_ARGUMENT",
        "unknown datatype",
    ),
    (
        "bytes-datatype",
        _grpc_request(("KEYS", "BYTES", [1, 3], None), N, raw=RAW),
        "INVALID_ARGUMENT",
        "not supported",
    ),
    (
        "negative-dim",
        _grpc_request(("KEYS", "INT64", [1, -3], None), N, raw=RAW),
        "INVALID_ARGUMENT",
        "dimension 1",
    ),
    (
        "huge-dim",
        _grpc_request(("KEYS", "INT64", [2**40, 2**40], None), N, raw=RAW),
        "INVALID_ARGUMENT",
        "must be in",
    ),
    (
        "too-many-dims",
        _grpc_request(("KEYS", "INT64", [1] * 17, None), N, raw=RAW),
        "INVALID_ARGUMENT",
        "dimensions",
    ),
    (
        "raw-size-mismatch",
        _grpc_request(K, N, raw=[KEYS24[:20], RAW[1]]),
        "INVALID_ARGUMENT",
        "20 bytes",
    ),
    (
        "typed-count-mismatch",
        _grpc_request(
            ("KEYS", "INT64", [1, 3], {"int64_contents": [1]}),
            ("NUMKEYS", "INT32", [1, 2], {"int_contents": [1, 0]}),
        ),
        "INVALID_ARGUMENT",
        "needs 3",
    ),
    (
        "typed-wrong-field",
        _grpc_request(
            ("KEYS", "INT64", [1, 3], {"fp32_contents": [1, 2, 3]}),
            ("NUMKEYS", "INT32", [1, 2], {"int_contents": [2, 1]}),
        ),
        "INVALID_ARGUMENT",
        "int64_contents",
    ),
    (
        "mixed-raw-and-typed",
        _grpc_request(("KEYS", "INT64", [1, 3], {"int64_contents": [1, 2, 3]}), N, raw=RAW),
        "INVALID_ARGUMENT",
        "mixed",
    ),
    (
        "duplicate-input",
        _grpc_request(K, K, raw=[KEYS24, KEYS24]),
        "INVALID_ARGUMENT",
        "given twice",
    ),
    (
        "empty-name",
        _grpc_request(("", "INT64", [1, 3], None), N, raw=RAW),
        "INVALID_ARGUMENT",
        "name",
    ),
    (
        "keys-int32",
        _grpc_request(("KEYS", "INT32", [1, 6], None), N, raw=RAW),
        "INVALID_ARGUMENT",
        "expected datatype INT64",
    ),
    (
        "numkeys-wrong-sum",
        _grpc_request(K, N, raw=[KEYS24, np.array([1, 1], np.int32).tobytes()]),
        "INVALID_ARGUMENT",
        "sum to 2",
    ),
    (
        "numkeys-wrong-length",
        _grpc_request(
            K,
            ("NUMKEYS", "INT32", [1, 3], None),
            raw=[KEYS24, np.array([1, 1, 1], np.int32).tobytes()],
        ),
        "INVALID_ARGUMENT",
        "2 table(s)",
    ),
    (
        "numkeys-negative",
        _grpc_request(K, N, raw=[KEYS24, np.array([4, -1], np.int32).tobytes()]),
        "INVALID_ARGUMENT",
        "non-negative",
    ),
    ("missing-numkeys", _grpc_request(K, raw=RAW[:1]), "INVALID_ARGUMENT", "missing input"),
    (
        "unknown-output",
        _grpc_request(K, N, raw=RAW, outputs=["OUT9"]),
        "INVALID_ARGUMENT",
        "no output",
    ),
    (
        "duplicate-output",
        _grpc_request(K, N, raw=RAW, outputs=["OUTPUT0", "OUTPUT0"]),
        "INVALID_ARGUMENT",
        "twice",
    ),
    (
        "above-max-batch-size",
        _grpc_request(
            ("KEYS", "INT64", [1, 600], None),
            N,
            raw=[np.arange(600).tobytes(), np.array([300, 300], np.int32).tobytes()],
        ),
        "INVALID_ARGUMENT",
        "max_batch_size 256",
    ),
    (
        "fp16-typed",
        _grpc_request(
            ("KEYS", "FP16", [1, 3], {"fp32_contents": [1, 2, 3]}),
            ("NUMKEYS", "INT32", [1, 2], {"int_contents": [2, 1]}),
        ),
        "INVALID_ARGUMENT",
        "needs raw_input_contents",
    ),
    (
        "int8-out-of-range",
        _grpc_request(
            ("KEYS", "INT8", [1, 3], {"int_contents": [1, 300, 3]}),
            ("NUMKEYS", "INT32", [1, 2], {"int_contents": [2, 1]}),
        ),
        "INVALID_ARGUMENT",
        "out of range",
    ),
    (
        "bool-raw-not-0-or-1",
        _grpc_request(("KEYS", "BOOL", [1, 3], None), N, raw=[b"\x01\x02\x00", RAW[1]]),
        "INVALID_ARGUMENT",
        "0 or 1",
    ),
    (
        "keys-batch-2",
        _grpc_request(("KEYS", "INT64", [3, 1], None), N, raw=RAW),
        "INVALID_ARGUMENT",
        "KEYS: shape",
    ),
    (
        "too-large",
        _grpc_request(
            ("KEYS", "INT64", [1, LIMIT // 8 + 8], None), N, raw=[bytes(LIMIT + 64), RAW[1]]
        ),
        "RESOURCE_EXHAUSTED",
        "",
    ),
]


def test_grpc_corpus_is_large_enough():
    assert len(GRPC_CASES) >= 25 and len(HTTP_CASES) + len(GRPC_CASES) >= 60


@pytest.fixture(scope="module")
def stub(setup):
    server, _ = setup
    channel = grpc.insecure_channel(server.grpc_url)
    yield service_pb2_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


@pytest.mark.parametrize("case", GRPC_CASES, ids=[c[0] for c in GRPC_CASES])
def test_malformed_grpc_requests_get_a_clear_status(stub, case):
    _, request, code, text = case
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(request, timeout=30)
    assert err.value.code() == getattr(grpc.StatusCode, code), err.value.details()
    assert text in (err.value.details() or ""), err.value.details()


def test_grpc_unknown_model_metadata_and_config(stub):
    for call, request in (
        (stub.ModelMetadata, service_pb2.ModelMetadataRequest(name="x")),
        (stub.ModelConfig, service_pb2.ModelConfigRequest(name="x")),
    ):
        with pytest.raises(grpc.RpcError) as err:
            call(request, timeout=30)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_healthy_and_exact_after_the_corpus(setup, stub):
    """Runs after the corpus (file order): the server still answers, correctly."""
    server, runtime = setup
    assert http_get(server.http_url, "/v2/health/ready")[0] == 200
    assert http_get(server.http_url, "/v2/health/live")[0] == 200
    assert stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=30).ready
    keys, counts = np.array([1, 2, 3], np.int64), np.array([2, 1], np.int32)
    expected = runtime.lookup_concatenated(keys, counts, "m")
    body, headers = binary_lookup_body(keys, counts)
    status, resp_headers, data = http_post(server.http_url, INFER, body, headers)
    assert status == 200
    np.testing.assert_array_equal(binary_output(resp_headers, data), expected)
    client = tgrpc.InferenceServerClient(server.grpc_url)
    got = client.infer("m", lookup_inputs(tgrpc, keys, counts)).as_numpy("OUTPUT0")
    np.testing.assert_array_equal(got.reshape(-1), expected)


def test_ten_thousand_requests_at_concurrency_16_without_errors(setup):
    """HTTP keep-alive connections (binary) and tritonclient.grpc clients, 16 at once."""
    import http.client

    server, runtime = setup
    rng = np.random.default_rng(3)
    cases = []
    for _ in range(32):
        counts = rng.integers(0, 12, 2).astype(np.int32)
        keys = rng.integers(-10, 3100, int(counts.sum())).astype(np.int64)
        cases.append((keys, counts, runtime.lookup_concatenated(keys, counts, "m")))
    total, threads_n = 10_000, 16
    errors: list[str] = []
    done = [0] * threads_n

    def worker(index: int) -> None:
        use_grpc = index % 4 == 3
        try:
            if use_grpc:
                client = tgrpc.InferenceServerClient(server.grpc_url)
            else:
                host, port = server.http_url.split(":")
                conn = http.client.HTTPConnection(host, int(port), timeout=60)
            for i in range(index, total, threads_n):
                keys, counts, expected = cases[i % len(cases)]
                if use_grpc:
                    got = (
                        client.infer("m", lookup_inputs(tgrpc, keys, counts))
                        .as_numpy("OUTPUT0")
                        .reshape(-1)
                    )
                else:
                    body, headers = binary_lookup_body(keys, counts)
                    status, resp_headers, data = http_post(
                        server.http_url, INFER, body, headers, conn=conn
                    )
                    if status != 200:
                        errors.append(f"HTTP {status}: {data[:200]!r}")
                        continue
                    got = binary_output(resp_headers, data)
                if not np.array_equal(got, expected):
                    errors.append(f"wrong vectors for case {i % len(cases)}")
                done[index] += 1
        except Exception as exc:  # noqa: BLE001 - counted as an error below
            errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:5]
    assert sum(done) == total
    stats = json.loads(http_get(server.http_url, "/v2/models/m/stats")[1])["model_stats"][0]
    assert stats["inference_stats"]["success"]["count"] >= total
