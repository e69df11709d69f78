"""HTTP bodies of the KServe v2 protocol: JSON tensors and the binary tensor data extension.

A request body is a JSON header, optionally followed by raw tensor bytes: when the
``Inference-Header-Content-Length`` header is present, the first that many bytes are the JSON
and each input with ``parameters.binary_data_size`` takes its bytes from what follows, in input
order. Every byte must be accounted for (a truncated or overlong payload is an error). Binary
outputs are sent the same way when the request asks (``parameters.binary_data_output`` or an
output's ``parameters.binary_data``), which is what tritonclient does by default.
"""

from __future__ import annotations

import json

from ..common import finite_json
from .protocol import (
    InferRequest,
    InferResult,
    RequestedOutput,
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


def parse_json(data: bytes, where: str = "body") -> object:
    try:
        return json.loads(bytes(data).decode("utf-8"))  # KServe JSON is UTF-8 (no BOM sniffing)
    except UnicodeDecodeError:
        raise invalid("the JSON header is not UTF-8", where) from None
    except json.JSONDecodeError as exc:
        raise invalid(
            f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", where
        ) from None
    except RecursionError:
        raise invalid("invalid JSON: nested too deeply", where) from None


def parse_infer_request(
    body: bytes, header_length: str | None, model: str, version: str = "", shared_memory=None
) -> InferRequest:
    """Decode an infer request body (binary input data is not copied). ``shared_memory``: the
    server's ``SharedMemoryRegions`` for inputs and outputs in shared memory."""
    if header_length is None:
        json_end = len(body)
    else:
        text = header_length.strip()
        if not text.isdigit():
            raise invalid(f"must be a non-negative integer, got {header_length!r}", HEADER_LENGTH)
        json_end = int(text)
        if json_end > len(body):
            raise invalid(f"{json_end} is larger than the body ({len(body)} bytes)", HEADER_LENGTH)
        if json_end == 0:
            raise invalid(
                "raw binary requests (a header length of 0) are not supported; send "
                "a JSON header with binary_data_size",
                HEADER_LENGTH,
            )
    doc = parse_json(body[:json_end])
    if not isinstance(doc, dict):
        raise invalid("the request must be a JSON object", "body")
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
    length goes in the ``Inference-Header-Content-Length`` header."""
    outputs, blobs = [], []
    for tensor, binary, ref in select_outputs(result, request):
        entry = {"name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape}
        if ref is not None:  # written into the region already (ServerCore.write_shared)
            entry["parameters"] = {
                "shared_memory_region": ref.region,
                "shared_memory_offset": ref.offset,
                "shared_memory_byte_size": tensor.array.nbytes,
            }
        elif binary:
            blob = (
                memoryview(tensor.array.reshape(-1)).cast("B")
                if tensor.array.size
                else memoryview(b"")
            )
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
    return finite_json.dumps(doc, separators=(",", ":")).encode(), blobs
