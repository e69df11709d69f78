"""The decoders' fast paths for the common request forms (HTTP: a binary request whose JSON
header was seen before is not parsed again; gRPC: every input in raw_input_contents) give the
request the general decoding gives, and leave every other request, valid or not, to it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hps_cli.runtime.errors import HpsError
from tritonclient.grpc import service_pb2

from hps_cli.serve import http_codec
from hps_cli.serve.grpc_server import decode_request, parse_request
from hps_cli.serve.http_codec import parse_infer_request
from hps_cli.serve.protocol import InferRequest, http_status

RNG = np.random.default_rng(3)

# (datatype, shape) per input; outputs; request id; request parameters
HTTP_CASES = [
    ([("INT64", [1, 128]), ("INT32", [1, 1])], None, None, None),
    (
        [("INT64", [128]), ("INT32", [1])],
        [{"name": "OUTPUT0"}],
        "r-1",
        {"binary_data_output": True},
    ),
    ([("FP32", [2, 3, 4]), ("UINT8", [5]), ("FP64", [0, 7])], [], "", {"x": [1, {"y": 2}]}),
    (
        [("INT16", [3]), ("UINT64", [2, 2]), ("FP16", [4])],
        [
            {"name": "A", "parameters": {"binary_data": False}},
            {"name": "B", "parameters": {"binary_data": True}},
            {"name": "C", "parameters": {}},
        ],
        "id with, commas",
        {"binary_data_output": False},
    ),
]


def _array(datatype: str, shape: list[int]) -> np.ndarray:
    dtype = {"INT64": "<i8", "INT32": "<i4", "INT16": "<i2", "UINT8": "u1", "UINT64": "<u8"}
    dtype.update({"FP16": "<f2", "FP32": "<f4", "FP64": "<f8"})
    values = RNG.integers(0, 100, int(np.prod(shape)))
    return values.astype(dtype[datatype]).reshape(shape)


def _binary_body(inputs, outputs, rid, params) -> tuple[bytes, str, list[np.ndarray]]:
    arrays = [_array(datatype, shape) for datatype, shape in inputs]
    doc: dict = {
        "inputs": [
            {
                "name": f"IN{i}",
                "datatype": datatype,
                "shape": shape,
                "parameters": {"binary_data_size": array.nbytes},
            }
            for i, ((datatype, shape), array) in enumerate(zip(inputs, arrays))
        ]
    }
    if outputs is not None:
        doc["outputs"] = outputs
    if rid is not None:
        doc["id"] = rid
    if params is not None:
        doc["parameters"] = params
    header = json.dumps(doc).encode()
    return header + b"".join(a.tobytes() for a in arrays), str(len(header)), arrays


def _same(a: InferRequest, b: InferRequest) -> None:
    assert (a.model, a.version, a.id, a.binary_output) == (
        b.model,
        b.version,
        b.id,
        b.binary_output,
    )
    assert a.parameters == b.parameters
    assert a.outputs == b.outputs
    assert list(a.inputs) == list(b.inputs)
    for name, tensor in a.inputs.items():
        other = b.inputs[name]
        assert (tensor.name, tensor.datatype) == (other.name, other.datatype)
        assert tensor.array.dtype == other.array.dtype and tensor.array.shape == other.array.shape
        np.testing.assert_array_equal(tensor.array, other.array)


def _general(body: bytes, header_length: str, monkeypatch) -> InferRequest:
    with monkeypatch.context() as patch:
        patch.setattr(http_codec, "_binary_layout", lambda doc: None)
        patch.setattr(http_codec, "_LAYOUTS", {})
        return parse_infer_request(body, header_length, "m", "2")


@pytest.mark.parametrize("case", HTTP_CASES, ids=range(len(HTTP_CASES)))
def test_http_binary_requests_decode_as_the_general_decoding(case, monkeypatch):
    monkeypatch.setattr(http_codec, "_LAYOUTS", {})
    body, header_length, arrays = _binary_body(*case)
    expected = _general(body, header_length, monkeypatch)
    first = parse_infer_request(body, header_length, "m", "2")  # the header is new
    assert http_codec._LAYOUTS  # ... and now known
    again = parse_infer_request(body, header_length, "m", "2")  # decoded from the known one
    for got in (first, again):
        _same(got, expected)
    for array, tensor in zip(arrays, again.inputs.values()):
        np.testing.assert_array_equal(tensor.array, array)
    # The same header over other bytes gives their values, not the first request's.
    other = body[: int(header_length)] + bytes(len(body) - int(header_length))
    zeros = parse_infer_request(other, header_length, "m", "2")
    assert all(not t.array.any() for t in zeros.inputs.values())


def test_a_known_header_over_a_body_of_another_size_is_the_general_error(monkeypatch):
    monkeypatch.setattr(http_codec, "_LAYOUTS", {})
    body, header_length, _ = _binary_body(*HTTP_CASES[0])
    parse_infer_request(body, header_length, "m")
    for wrong in (body[:-1], body + b"\0"):
        with pytest.raises(HpsError) as known:
            parse_infer_request(wrong, header_length, "m")
        with pytest.raises(HpsError) as general:
            _general(wrong, header_length, monkeypatch)
        assert str(known.value) == str(general.value)
        assert http_status(known.value) == 400


@pytest.mark.parametrize(
    "change",
    [
        lambda doc: doc["inputs"][0].update(datatype="BOOL"),
        lambda doc: doc["inputs"][0].update(shape=[1, -128]),
        lambda doc: doc["inputs"][0].update(shape=[1, True]),
        lambda doc: doc["inputs"][1].update(name=doc["inputs"][0]["name"]),
        lambda doc: doc["inputs"][0]["parameters"].update(binary_data_size=1023),
        lambda doc: doc["inputs"][0]["parameters"].update(shared_memory_region="r"),
        lambda doc: doc.update(parameters={"binary_data_output": 1}),
        lambda doc: doc.update(outputs=[{"name": "O", "parameters": {"binary_data": "yes"}}]),
        lambda doc: doc.update(outputs=[{"name": "O"}, {"name": "O"}]),
        lambda doc: doc.update(id=7),
    ],
    ids=range(10),
)
def test_http_odd_binary_headers_get_the_general_errors(change, monkeypatch):
    monkeypatch.setattr(http_codec, "_LAYOUTS", {})
    body, header_length, _ = _binary_body(*HTTP_CASES[0])
    doc = json.loads(body[: int(header_length)])
    change(doc)
    header = json.dumps(doc).encode()
    body = header + body[int(header_length) :]
    with pytest.raises(HpsError) as fast:
        parse_infer_request(body, str(len(header)), "m")
    with pytest.raises(HpsError) as general:
        _general(body, str(len(header)), monkeypatch)
    assert str(fast.value) == str(general.value)
    assert 400 <= http_status(fast.value) < 500


def _grpc_message(inputs, outputs=()) -> service_pb2.ModelInferRequest:
    message = service_pb2.ModelInferRequest(model_name="m", model_version="1", id="x")
    for i, (datatype, shape) in enumerate(inputs):
        message.inputs.add(name=f"IN{i}", datatype=datatype, shape=shape)
        message.raw_input_contents.append(_array(datatype, shape).tobytes())
    for name in outputs:
        message.outputs.add(name=name)
    return message


@pytest.mark.parametrize(
    "inputs, outputs",
    [
        ([("INT64", [1, 128]), ("INT32", [1, 1])], ()),
        ([("INT64", [128]), ("INT32", [1])], ("OUTPUT0",)),
        ([("FP32", [2, 3, 4]), ("UINT8", [5]), ("FP64", [0, 7])], ("A", "B")),
    ],
)
def test_grpc_raw_requests_decode_as_the_general_decoding(inputs, outputs):
    message = _grpc_message(inputs, outputs)
    _same(decode_request(message.SerializeToString()), parse_request(message))


@pytest.mark.parametrize(
    "change",
    [
        lambda m: setattr(m.inputs[0], "datatype", "BOOL"),
        lambda m: m.inputs[0].shape.__setitem__(1, -128),
        lambda m: setattr(m.inputs[1], "name", m.inputs[0].name),
        lambda m: m.raw_input_contents.__setitem__(0, b"\0" * 1023),
        lambda m: m.raw_input_contents.append(b""),
        lambda m: (
            m.inputs[0]
            .parameters["shared_memory_region"]
            .CopyFrom(service_pb2.InferParameter(string_param="r"))
        ),
        lambda m: (
            m.outputs.add(name="O")
            .parameters["x"]
            .CopyFrom(service_pb2.InferParameter(bool_param=True))
        ),
        lambda m: [m.outputs.add(name="O"), m.outputs.add(name="O")],
        lambda m: m.inputs[0].contents.int64_contents.append(1),
    ],
    ids=range(9),
)
def test_grpc_odd_requests_get_the_general_answer(change):
    message = _grpc_message([("INT64", [1, 128]), ("INT32", [1, 1])])
    change(message)
    data = message.SerializeToString()
    try:
        expected = parse_request(service_pb2.ModelInferRequest.FromString(data))
    except HpsError as exc:
        with pytest.raises(HpsError) as fast:
            decode_request(data)
        assert str(fast.value) == str(exc)
        return
    _same(decode_request(data), expected)
