"""HTTP bodies of the KServe v2 protocol: JSON tensors and the binary tensor data extension.

A request body is a JSON header, optionally followed by raw tensor bytes: when the
``Inference-Header-Content-Length`` header is present, the first that many bytes are the JSON
and each input with ``parameters.binary_data_size`` takes its bytes from what follows, in input
order. Every byte must be accounted for (a truncated or overlong payload is an error). Binary
outputs are sent the same way when the request asks (``parameters.binary_data_output`` or an
output's ``parameters.binary_data``), which is what tritonclient does by default.
"""

from __future__ import annotations

import math

import numpy as np
import orjson

from .protocol import (
    DATATYPES,
    MAX_DIM,
    MAX_DIMS,
    SHM_PARAMS,
    InferRequest,
    InferResult,
    KeptHeads,
    RequestedOutput,
    Tensor,
    answer_form,
    check_datatype,
    check_shape,
    invalid,
    select_outputs,
    shm_ref,
    tensor_from_bytes,
    tensor_from_values,
)
from .shared_memory import enabled

HEADER_LENGTH = "Inference-Header-Content-Length"


MAX_HEADER_DIGITS = 19  # a byte count fits int64


def parse_json(data: bytes, where: str = "body") -> object:
    """KServe JSON is UTF-8 (no BOM sniffing). orjson: integers beyond 64 bits become floats
    (so an oversized number is an ordinary type error later, never an exception here), NaN and
    Infinity are refused, nesting is limited to 1024 levels."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        if "UTF-8" in exc.msg:
            raise invalid("the JSON header is not UTF-8", where) from None
        raise invalid(
            f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", where
        ) from None


def header_length_of(value: str | None, body_size: int | None = None) -> int | None:
    """The ``Inference-Header-Content-Length`` as a number (None when absent)."""
    if value is None:
        return None
    text = value.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > MAX_HEADER_DIGITS:
        raise invalid(
            f"must be a non-negative integer of at most {MAX_HEADER_DIGITS} digits, got "
            f"{value[:40]!r}",
            HEADER_LENGTH,
        )
    length = int(text)
    if body_size is not None and length > body_size:
        raise invalid(f"{length} is larger than the body ({body_size} bytes)", HEADER_LENGTH)
    return length


def parse_infer_request(
    body: bytes, header_length: str | None, model: str, version: str = "", shared_memory=None
) -> InferRequest:
    """Decode an infer request body (binary input data is not copied). ``shared_memory``: the
    server's ``SharedMemoryRegions`` for inputs and outputs in shared memory."""
    if header_length is None:
        json_end = len(body)
    else:
        json_end = header_length_of(header_length, len(body))
        if json_end == 0:
            raise invalid(
                "raw binary requests (a header length of 0) are not supported; send "
                "a JSON header with binary_data_size",
                HEADER_LENGTH,
            )
    head = body[:json_end]
    if header_length is not None:
        layout = _LAYOUTS.get(head)
        if layout is not None:
            request = layout.request(body, json_end, model, version)
            if request is not None:
                return request
    doc = parse_json(head)
    if not isinstance(doc, dict):
        raise invalid("the request must be a JSON object", "body")
    if header_length is not None:
        layout = _binary_layout(doc)
        if layout is not None:
            if len(head) <= _LAYOUT_HEADER_MAX:
                if len(_LAYOUTS) >= _LAYOUTS_MAX:
                    _LAYOUTS.clear()
                _LAYOUTS[head] = layout
            request = layout.request(body, json_end, model, version)
            if request is not None:
                return request
    request = InferRequest(model=model, version=version)
    request.id = _request_id(doc.get("id"))
    params = _parameters(doc.get("parameters"), "parameters")
    request.parameters = params
    request.binary_output = _bool(
        params.get("binary_data_output", False), "parameters.binary_data_output"
    )
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise invalid("must be a non-empty list of input tensors", "inputs")
    offset = json_end
    for i, spec in enumerate(inputs):
        where = f"inputs[{i}]"
        if not isinstance(spec, dict):
            raise invalid("must be an object {name, datatype, shape, data}", where)
        name = spec.get("name")
        if not isinstance(name, str) or not name:
            raise invalid("name must be a non-empty string", f"{where}.name")
        if name in request.inputs:
            raise invalid(f"input '{name}' is given twice", f"{where}.name")
        datatype = spec.get("datatype")
        check_datatype(datatype, f"{where}.datatype")
        shape = check_shape(spec.get("shape"), f"{where}.shape")
        tparams = _parameters(spec.get("parameters"), f"{where}.parameters")
        size = tparams.get("binary_data_size")
        ref = shm_ref(tparams, f"{where}.parameters")
        if ref is not None:
            if size is not None or "data" in spec:
                raise invalid("give one of data, binary_data_size or shared_memory_region", where)
            tensor = enabled(shared_memory).read(name, datatype, shape, ref, where)
        elif size is not None:
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise invalid(
                    "binary_data_size must be a non-negative integer",
                    f"{where}.parameters.binary_data_size",
                )
            if header_length is None:
                raise invalid(
                    f"binary data needs the {HEADER_LENGTH} header",
                    f"{where}.parameters.binary_data_size",
                )
            if "data" in spec:
                raise invalid("give either data or binary_data_size, not both", where)
            if offset + size > len(body):
                raise invalid(
                    f"binary data truncated: input '{name}' needs {size} bytes, "
                    f"{len(body) - offset} are left",
                    f"{where}.parameters.binary_data_size",
                )
            tensor = tensor_from_bytes(name, datatype, shape, body, offset, size, where)
            offset += size
        elif "data" in spec:
            data = spec["data"]
            if not isinstance(data, list):
                raise invalid("data must be a JSON array", f"{where}.data")
            tensor = tensor_from_values(name, datatype, shape, data, f"{where}.data")
        else:
            raise invalid("has neither data nor parameters.binary_data_size", where)
        request.inputs[name] = tensor
    if offset != len(body):
        raise invalid(
            f"{len(body) - offset} bytes of binary data after the last binary input", "body"
        )
    request.outputs = _requested_outputs(doc.get("outputs"), shared_memory)
    return request


class _Layout:
    """What the JSON header of a request in the common binary form says (see
    ``_binary_layout``): everything but the tensors' bytes."""

    __slots__ = ("inputs", "size", "outputs", "id", "parameters", "binary_output")

    def __init__(self, inputs, outputs, rid: str, parameters: dict, binary_output: bool):
        self.inputs = inputs  # (name, datatype, dtype, shape) per input, in body order
        self.size = sum(math.prod(shape) * dtype.itemsize for _, _, dtype, shape in inputs)
        self.outputs = outputs
        self.id = rid
        self.parameters = parameters
        self.binary_output = binary_output

    def request(self, body: bytes, offset: int, model: str, version: str) -> InferRequest | None:
        """The request of ``body`` (its JSON header ends at ``offset``); None when the binary
        part does not hold exactly the inputs' bytes."""
        if offset + self.size != len(body):
            return None
        tensors = {}
        for name, datatype, dtype, shape in self.inputs:
            array = np.ndarray(shape, dtype, body, offset)  # a view, as np.frombuffer's
            tensors[name] = Tensor(name, datatype, array)
            offset += array.nbytes
        return InferRequest(
            model=model,
            version=version,
            id=self.id,
            inputs=tensors,
            outputs=self.outputs,
            binary_output=self.binary_output,
            parameters=dict(self.parameters) if self.parameters else {},
        )


# JSON headers seen lately -> their layout: a client sends the same header for every request
# of the same shapes, so most requests skip parsing and checking it. Small headers only.
_LAYOUTS: dict[bytes, _Layout] = {}
_LAYOUTS_MAX = 256
_LAYOUT_HEADER_MAX = 4096


def _binary_layout(doc: dict) -> _Layout | None:
    """The layout of a request in the common form only: every input in binary
    (``binary_data_size``), no shared memory, no BOOL inputs, outputs named with at most
    ``binary_data``; checked in one pass with fewer calls. The request it makes equals the
    general decoding's (below). None for any other request, valid or not: the general decoding
    then decodes it, or names its error."""
    rid = doc.get("id")
    params = doc.get("parameters")
    inputs = doc.get("inputs")
    outputs = doc.get("outputs")
    if (
        (rid is not None and type(rid) is not str)
        or (params is not None and type(params) is not dict)
        or type(inputs) is not list
        or not inputs
        or (outputs is not None and type(outputs) is not list)
    ):
        return None
    binary_output = False if params is None else params.get("binary_data_output", False)
    if type(binary_output) is not bool:
        return None
    specs, names = [], set()
    for spec in inputs:
        if type(spec) is not dict or "data" in spec:
            return None
        name, datatype, shape = spec.get("name"), spec.get("datatype"), spec.get("shape")
        tparams = spec.get("parameters")
        if (
            type(name) is not str
            or not name
            or name in names
            or type(datatype) is not str
            or datatype == "BOOL"
            or datatype not in DATATYPES
            or type(shape) is not list
            or len(shape) > MAX_DIMS
            or type(tparams) is not dict
            or (len(tparams) > 1 and any(key in tparams for key in SHM_PARAMS))
        ):
            return None
        size = tparams.get("binary_data_size")
        if type(size) is not int or size < 0:
            return None
        for dim in shape:
            if type(dim) is not int or not 0 <= dim <= MAX_DIM:
                return None
        dtype = DATATYPES[datatype]
        if math.prod(shape) * dtype.itemsize != size:
            return None
        names.add(name)
        specs.append((name, datatype, dtype, tuple(shape)))
    wanted = None
    if outputs is not None:
        wanted = []
        for spec in outputs:
            if type(spec) is not dict:
                return None
            name, oparams = spec.get("name"), spec.get("parameters")
            if type(name) is not str or any(o.name == name for o in wanted):
                return None
            binary = None
            if oparams is not None:
                if type(oparams) is not dict or any(key in oparams for key in SHM_PARAMS):
                    return None
                binary = oparams.get("binary_data")
                if binary is not None and type(binary) is not bool:
                    return None
            wanted.append(RequestedOutput(name, binary, None))
        wanted = tuple(wanted)
    return _Layout(tuple(specs), wanted, rid or "", params or {}, binary_output)


def _requested_outputs(outputs: object, shared_memory=None) -> tuple[RequestedOutput, ...] | None:
    if outputs is None:
        return None
    if not isinstance(outputs, list):
        raise invalid("must be a list of {name, parameters}", "outputs")
    wanted, seen = [], set()
    for i, spec in enumerate(outputs):
        where = f"outputs[{i}]"
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise invalid("must be an object with a string name", where)
        if spec["name"] in seen:
            raise invalid(f"output '{spec['name']}' is requested twice", f"{where}.name")
        seen.add(spec["name"])
        params = _parameters(spec.get("parameters"), f"{where}.parameters")
        binary = params.get("binary_data")
        ref = shm_ref(params, f"{where}.parameters")
        if ref is not None:
            enabled(shared_memory)
        wanted.append(
            RequestedOutput(
                spec["name"],
                None if binary is None else _bool(binary, f"{where}.parameters.binary_data"),
                ref,
            )
        )
    return tuple(wanted)


def _request_id(value: object) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise invalid("id must be a string", "id")
    return value


def _parameters(value: object, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid("parameters must be an object", where)
    return value


def _bool(value: object, where: str) -> bool:
    if not isinstance(value, bool):
        raise invalid("must be true or false", where)
    return value


def encode_infer_response(
    model: str, version: str, request: InferRequest, result: InferResult
) -> tuple[bytes, list[memoryview]]:
    """(JSON header, binary output blobs in order); the blobs are views of the outputs (no
    copy). Without blobs the header is the whole body; with blobs it is sent first and its
    length goes in the ``Inference-Header-Content-Length`` header.

    An answer whose outputs are all binary has a header that depends on its form alone (model,
    version, id, parameters, outputs' names, datatypes and shapes): it is made once per form and
    kept (a server sees few forms)."""
    selected = select_outputs(result, request)
    if all(binary and ref is None for _, binary, ref in selected):
        form = answer_form(model, version, request.id, result, selected)
        header = _BINARY_HEADERS.get(
            form, lambda: _header(model, version, request, result, selected)[0]
        )
        return header, [_blob(t.array) for t, _, _ in selected]
    return _header(model, version, request, result, selected)


_BINARY_HEADERS_KEPT = 256
_BINARY_HEADERS = KeptHeads(_BINARY_HEADERS_KEPT)


def _blob(array: np.ndarray) -> memoryview:
    """The bytes of ``array`` in its logical (C) order: its own memory when contiguous, else a
    copy (a strided 1-D view reshapes to itself, and a memoryview of it cannot be cast)."""
    if not array.size:
        return memoryview(b"")
    return memoryview(np.ascontiguousarray(array).reshape(-1)).cast("B")


def _header(
    model: str, version: str, request: InferRequest, result: InferResult, selected
) -> tuple[bytes, list[memoryview]]:
    outputs, blobs = [], []
    for tensor, binary, ref in selected:
        entry = {"name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape}
        if ref is not None:  # written into the region already (ServerCore.write_shared)
            entry["parameters"] = {
                "shared_memory_region": ref.region,
                "shared_memory_offset": ref.offset,
                "shared_memory_byte_size": tensor.array.nbytes,
            }
        elif binary:
            blob = _blob(tensor.array)
            entry["parameters"] = {"binary_data_size": blob.nbytes}
            blobs.append(blob)
        else:
            entry["data"] = tensor.array.reshape(-1).tolist()
        outputs.append(entry)
    doc: dict = {"model_name": model, "model_version": version or "1"}
    if request.id:
        doc["id"] = request.id
    if result.parameters:
        doc["parameters"] = result.parameters
    doc["outputs"] = outputs
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY), blobs
