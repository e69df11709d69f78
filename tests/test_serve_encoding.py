"""Answers keep what depends on their form alone. gRPC: ``encode_response`` keeps the serialized
head of each answer form and appends the raw contents; the bytes must be those of the whole
message serialized by protobuf, for every form, every time (a kept head never carries an earlier
answer's values). HTTP: the JSON header of an all-binary answer is kept per form; header and
blobs must be this answer's."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from hps_cli.serve import grpc_server, http_codec
from hps_cli.serve.grpc_server import encode_response
from hps_cli.serve.http_codec import encode_infer_response
from hps_cli.serve.protocol import InferRequest, InferResult, RequestedOutput, ShmRef, Tensor

RNG = np.random.default_rng(11)


def _whole_message(request: InferRequest, result: InferResult) -> bytes:
    """The answer built as one protobuf message and serialized (the reference)."""
    response = service_pb2.ModelInferResponse(
        model_name=request.model, model_version=request.version or "1", id=request.id
    )
    for key, value in result.parameters.items():
        param = response.parameters[key]
        if isinstance(value, bool):
            param.bool_param = value
        elif isinstance(value, int):
            param.int64_param = value
        elif isinstance(value, float):
            param.double_param = value
        else:
            param.string_param = value
    wanted = (
        [o.name for o in request.outputs]
        if request.outputs is not None
        else [t.name for t in result.outputs]
    )
    by_name = {t.name: t for t in result.outputs}
    for name in wanted:
        tensor = by_name[name]
        response.outputs.add(name=name, datatype=tensor.datatype, shape=tensor.array.shape)
        response.raw_output_contents.append(tensor.array.tobytes())
    return response.SerializeToString()


def _tensor(name: str, datatype: str, shape: tuple[int, ...]) -> Tensor:
    dtype = {"FP32": np.float32, "INT64": np.int64, "FP16": np.float16, "UINT8": np.uint8}
    values = RNG.integers(0, 100, size=shape).astype(dtype[datatype])
    return Tensor(name, datatype, values)


CASES = [
    # (request fields, outputs, parameters)
    ({"model": "emb"}, [("OUTPUT0", "FP32", (1, 2048))], {"NumSample": 1, "DeviceID": 0}),
    (
        {"model": "m", "version": "3", "id": "req-7"},
        [("A", "INT64", (2, 3)), ("B", "FP16", (0, 16)), ("C", "UINT8", (5,))],
        {"flag": True, "ratio": 0.25, "note": "ü text", "big": 2**40},
    ),
    ({"model": "m", "outputs": (RequestedOutput("C"), RequestedOutput("A"))}, None, {}),
    ({"model": "m", "id": "x"}, [("OUTPUT0", "FP32", (300, 128))], {}),  # a 2-byte length
]


@pytest.mark.parametrize("fields, outputs, parameters", CASES)
def test_answers_are_the_whole_message_serialized(fields, outputs, parameters):
    outputs = outputs or [("A", "INT64", (2, 3)), ("B", "FP32", (4,)), ("C", "UINT8", (7,))]
    request = InferRequest(**fields)
    for _ in range(3):  # the first builds the kept head, the next reuse it with new values
        result = InferResult([_tensor(*o) for o in outputs], dict(parameters))
        got = encode_response(request, result)
        assert got == _whole_message(request, result)
        parsed = service_pb2.ModelInferResponse.FromString(got)
        assert parsed.raw_output_contents[0] == next(
            t.array.tobytes()
            for t in result.outputs
            if t.name == (request.outputs[0].name if request.outputs else result.outputs[0].name)
        )


def test_a_non_contiguous_output_is_sent_in_its_logical_order():
    request = InferRequest(model="emb")
    array = np.arange(64, dtype=np.float32).reshape(8, 8).T  # a transposed view
    result = InferResult([Tensor("OUTPUT0", "FP32", array)], {})
    parsed = service_pb2.ModelInferResponse.FromString(encode_response(request, result))
    back = np.frombuffer(parsed.raw_output_contents[0], np.float32).reshape(8, 8)
    assert np.array_equal(back, array)


@pytest.mark.parametrize(
    "array",
    [
        np.arange(32, dtype=np.float32)[::2],  # a strided 1-D view
        np.arange(64, dtype=np.float32).reshape(8, 8).T,  # a transposed 2-D view
        np.arange(48, dtype=np.int64).reshape(6, 8)[:, 1:5],  # columns of a 2-D array
    ],
)
def test_a_non_contiguous_http_binary_output_is_sent_in_its_logical_order(array):
    request = InferRequest(model="m", binary_output=True)
    datatype = "FP32" if array.dtype == np.float32 else "INT64"
    result = InferResult([Tensor("OUT", datatype, array)], {})
    header, blobs = encode_infer_response("m", "", request, result)
    size = json.loads(header)["outputs"][0]["parameters"]["binary_data_size"]
    data = b"".join(bytes(b) for b in blobs)
    assert size == len(data) == array.nbytes
    assert np.array_equal(np.frombuffer(data, array.dtype).reshape(array.shape), array)


def test_an_output_in_shared_memory_leaves_its_place_empty_before_raw_outputs():
    outputs = (RequestedOutput("A", shm=ShmRef("r", 16, 24)), RequestedOutput("B"))
    request = InferRequest(model="m", outputs=outputs)
    result = InferResult([_tensor("A", "INT64", (3,)), _tensor("B", "FP32", (4,))], {})
    parsed = service_pb2.ModelInferResponse.FromString(encode_response(request, result))
    assert list(parsed.raw_output_contents) == [b"", result.outputs[1].array.tobytes()]
    shm = parsed.outputs[0].parameters
    assert shm["shared_memory_region"].string_param == "r"
    assert shm["shared_memory_offset"].int64_param == 16
    assert shm["shared_memory_byte_size"].int64_param == 24


def test_kept_heads_stay_bounded_under_unique_request_ids():
    result = InferResult([_tensor("OUTPUT0", "FP32", (1, 4))], {"NumSample": 1})
    for i in range(3 * grpc_server._RESPONSE_HEADS_KEPT):
        request = InferRequest(model="emb", id=f"id-{i}")
        assert encode_response(request, result) == _whole_message(request, result)
        assert len(grpc_server._RESPONSE_HEADS) <= grpc_server._RESPONSE_HEADS_KEPT


# ---------------------------------------------------------------------------------------- HTTP


def _http_reference(request: InferRequest, result: InferResult) -> tuple[dict, list[bytes]]:
    """The JSON header and binary blobs an answer must carry, built from the request."""
    wanted = request.outputs or [RequestedOutput(t.name) for t in result.outputs]
    by_name = {t.name: t for t in result.outputs}
    outputs, blobs = [], []
    for o in wanted:
        tensor = by_name[o.name]
        binary = request.binary_output if o.binary is None else o.binary
        entry = {"name": o.name, "datatype": tensor.datatype, "shape": list(tensor.array.shape)}
        if binary:
            entry["parameters"] = {"binary_data_size": tensor.array.nbytes}
            blobs.append(tensor.array.tobytes())
        else:
            entry["data"] = tensor.array.reshape(-1).tolist()
        outputs.append(entry)
    doc = {"model_name": request.model, "model_version": request.version or "1"}
    if request.id:
        doc["id"] = request.id
    if result.parameters:
        doc["parameters"] = result.parameters
    doc["outputs"] = outputs
    return doc, blobs


@pytest.mark.parametrize("fields, outputs, parameters", CASES)
@pytest.mark.parametrize("binary", [True, False])
def test_http_answers_carry_this_answers_values(fields, outputs, parameters, binary):
    outputs = outputs or [("A", "INT64", (2, 3)), ("B", "FP32", (4,)), ("C", "UINT8", (7,))]
    outputs = [o for o in outputs if o[1] != "FP16" or binary]  # FP16 has no JSON form
    request = InferRequest(**fields, binary_output=binary)
    for _ in range(3):  # the first keeps the header of a binary form, the next reuse it
        result = InferResult([_tensor(*o) for o in outputs], dict(parameters))
        header, blobs = encode_infer_response(request.model, request.version, request, result)
        doc, want_blobs = _http_reference(request, result)
        assert json.loads(header) == json.loads(json.dumps(doc))
        assert [bytes(b) for b in blobs] == want_blobs


def test_http_kept_headers_stay_bounded_under_unique_request_ids():
    result = InferResult([_tensor("OUTPUT0", "FP32", (1, 4))], {"NumSample": 1})
    for i in range(3 * http_codec._BINARY_HEADERS_KEPT):
        request = InferRequest(model="emb", id=f"id-{i}", binary_output=True)
        header, _ = encode_infer_response("emb", "", request, result)
        assert json.loads(header)["id"] == f"id-{i}"
        assert len(http_codec._BINARY_HEADERS) <= http_codec._BINARY_HEADERS_KEPT


def test_answers_with_list_parameter_values_keep_them():
    result = InferResult([_tensor("OUTPUT0", "FP32", (1, 4))], {"shape": [1, 4], "n": 2})
    grpc_answer = service_pb2.ModelInferResponse.FromString(
        encode_response(InferRequest(model="emb"), result)
    )
    assert grpc_answer.parameters["shape"].string_param == "[1, 4]"
    assert grpc_answer.raw_output_contents[0] == result.outputs[0].array.tobytes()
    request = InferRequest(model="emb", binary_output=True)
    header, blobs = encode_infer_response("emb", "", request, result)
    assert json.loads(header)["parameters"] == {"shape": [1, 4], "n": 2}
    assert [bytes(b) for b in blobs] == [result.outputs[0].array.tobytes()]


def test_parameter_values_equal_in_python_but_of_other_types_get_their_own_heads():
    """True == 1 == 1.0 in Python (equal dict keys); as answer parameters they are a bool, an
    int and a double (gRPC), true, 1 and 1.0 (HTTP): an answer never takes another type's kept
    head."""
    request = InferRequest(model="emb", binary_output=True)
    for value in (1, True, 1.0, np.int64(1), 0.0, -0.0, False, 0):
        result = InferResult([_tensor("OUTPUT0", "FP32", (1, 4))], {"f": value})
        reference = result.parameters.copy()
        if not isinstance(value, (bool, int, float)):
            reference["f"] = str(value)  # what protobuf's string parameter holds
        assert encode_response(request, result) == _whole_message(
            request, InferResult(result.outputs, reference)
        )
        header, _ = encode_infer_response("emb", "", request, result)
        got = json.loads(header)["parameters"]["f"]
        assert (type(got), got) == (type(value) if type(value) in (bool, float) else int, value)
        if isinstance(value, float):
            assert str(got) == str(value)  # -0.0 stays -0.0
