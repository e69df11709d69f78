"""Kept forms of gRPC ModelInfer requests (hps_cli/serve/grpc_forms.py): a request decoded from
its kept form is exactly what the full protobuf decode makes of it, and anything that is not
exactly the form (other tails, extra fields, ids, fields out of order, truncation) is decoded
in full."""

from __future__ import annotations

import numpy as np
import pytest
from hps_cli.runtime.errors import InvalidInputError
from tritonclient.grpc import service_pb2

from hps_cli.serve import grpc_server
from hps_cli.serve.grpc_forms import RequestForms
from hps_cli.serve.grpc_server import _raw_request, decode_request, parse_request

RNG = np.random.default_rng(5)
DTYPES = {"INT64": np.int64, "INT32": np.int32, "FP32": np.float32, "FP16": np.float16}


def _message(inputs, *, model="m", version="", outputs=(), request_id=""):
    message = service_pb2.ModelInferRequest(model_name=model, model_version=version, id=request_id)
    for name, datatype, shape in inputs:
        array = RNG.integers(-1000, 1000, size=shape).astype(DTYPES[datatype])
        message.inputs.add(name=name, datatype=datatype, shape=list(shape))
        message.raw_input_contents.append(array.tobytes())
    for name in outputs:
        message.outputs.add(name=name)
    return message


def _full(data: bytes):
    """The full decode (no kept forms)."""
    message = service_pb2.ModelInferRequest.FromString(data)
    return _raw_request(message) or parse_request(message)


def _assert_same(got, want):
    assert (got.model, got.version, got.id, got.outputs) == (
        want.model,
        want.version,
        want.id,
        want.outputs,
    )
    assert list(got.inputs) == list(want.inputs)
    for name, tensor in want.inputs.items():
        other = got.inputs[name]
        assert other.datatype == tensor.datatype
        assert other.array.dtype == tensor.array.dtype
        assert other.array.shape == tensor.array.shape
        assert np.array_equal(other.array, tensor.array)


FORMS = [
    dict(inputs=[("KEYS", "INT64", (1, 128)), ("NUMKEYS", "INT32", (1, 1))]),
    dict(inputs=[("KEYS", "INT64", (300,)), ("NUMKEYS", "INT32", (3,))], version="1"),
    dict(inputs=[("A", "FP16", (2, 3)), ("B", "FP32", (0, 4))], outputs=("Y", "X")),
    dict(inputs=[("KEYS", "INT64", (1, 20_000)), ("NUMKEYS", "INT32", (1, 2))], model="big"),
]


@pytest.mark.parametrize("form", FORMS)
def test_requests_of_a_kept_form_decode_as_in_full(form):
    forms = RequestForms()
    first = _message(**form).SerializeToString()
    assert forms.decode(first) is None
    forms.keep(first, _full(first))
    assert len(forms) == 1
    for _ in range(5):  # new values, same form
        data = _message(**form).SerializeToString()
        got = forms.decode(data)
        assert got is not None
        _assert_same(got, _full(data))


def test_requests_that_are_not_exactly_the_form_are_decoded_in_full():
    forms = RequestForms()
    form = FORMS[0]
    first = _message(**form).SerializeToString()
    forms.keep(first, _full(first))
    data = _message(**form).SerializeToString()
    # an extra field after the raw contents (a parameter, written out of order)
    extra = service_pb2.ModelInferRequest()
    extra.parameters["x"].int64_param = 1
    assert forms.decode(data + extra.SerializeToString()) is None
    # one more raw content, a raw content of another size, a truncated message
    assert forms.decode(data + b"\x3a\x01\x00") is None
    longer = _message(inputs=[("KEYS", "INT64", (1, 129)), ("NUMKEYS", "INT32", (1, 1))])
    assert forms.decode(longer.SerializeToString()) is None
    assert forms.decode(data[:-1]) is None
    # the same size but another head (another model name of the same length)
    assert forms.decode(_message(**form, model="n").SerializeToString()) is None
    # the same head and size, a tail whose first length is not the form's
    tampered = bytearray(data)
    at = len(data) - (1 + 2 + 128 * 8) - (1 + 1 + 4)
    assert tampered[at] == 0x3A
    tampered[at + 1] ^= 0x01  # 1024 as a varint is 0x80 0x08: now another count
    assert forms.decode(bytes(tampered)) is None


def test_requests_with_an_id_are_not_kept_and_still_decode():
    forms = RequestForms()
    data = _message(**FORMS[0], request_id="req-1").SerializeToString()
    forms.keep(data, _full(data))
    assert len(forms) == 0


def test_a_head_holding_raw_contents_is_not_kept():
    """Fields out of number order (raw contents before the inputs): the bytes before the last
    raw contents are not a head of whole non-raw fields, so nothing is kept; the server's
    decoder answers such a request in full."""
    message = _message(**FORMS[0])
    raw = service_pb2.ModelInferRequest(raw_input_contents=message.raw_input_contents)
    rest = service_pb2.ModelInferRequest()
    rest.CopyFrom(message)
    del rest.raw_input_contents[:]
    data = raw.SerializeToString() + rest.SerializeToString()  # raw contents first
    request = _full(data)
    forms = RequestForms()
    forms.keep(data, request)
    assert len(forms) == 0
    _assert_same(decode_request(data), request)


def test_big_heads_are_not_kept():
    """A client cannot make the server keep big heads (a long model name, say)."""
    forms = RequestForms()
    data = _message(**FORMS[0], model="m" * 5000).SerializeToString()
    forms.keep(data, _full(data))
    assert len(forms) == 0


def test_kept_forms_stay_bounded():
    forms = RequestForms(limit=4)
    for n in range(1, 11):
        data = _message(inputs=[("KEYS", "INT64", (1, n))]).SerializeToString()
        forms.keep(data, _full(data))
        assert 1 <= len(forms) <= 4


def test_the_servers_decoder_uses_kept_forms_and_still_refuses_bad_messages(monkeypatch):
    monkeypatch.setattr(grpc_server, "_FORMS", RequestForms())
    data = _message(**FORMS[0]).SerializeToString()
    first = decode_request(data)
    assert len(grpc_server._FORMS) == 1
    again = _message(**FORMS[0]).SerializeToString()
    _assert_same(decode_request(again), _full(again))
    with pytest.raises(InvalidInputError, match="not a valid ModelInferRequest"):
        decode_request(again[:-1] + b"\xff\xff")  # a bad tail: decoded in full, refused
    _assert_same(first, _full(data))
