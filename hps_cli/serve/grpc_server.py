"""KServe v2 over gRPC: ``inference.GRPCInferenceService`` (grpc.aio), with the stubs that
ship in the tritonclient wheel, as ``tritonclient.grpc`` speaks it.

Implemented: ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata, ModelConfig,
ModelStatistics, ModelInfer (``raw_input_contents`` or typed ``contents``; outputs always in
``raw_output_contents``), and with the admin token (metadata ``authorization: Bearer ...``)
RepositoryIndex, RepositoryModelLoad, RepositoryModelUnload; with ``--allow-shared-memory``
SystemSharedMemoryStatus/Register/Unregister. Other RPCs answer UNIMPLEMENTED.
Errors are gRPC status codes (NOT_FOUND, INVALID_ARGUMENT, UNAVAILABLE, ...) with the same
messages as over HTTP. ModelInfer receives the serialized request: its typed values are bounded
from the wire format first (grpc_wire.py), then it is decoded on the event loop when small, in
a decoder thread otherwise (``ServerCore.decode``). A client that cancels or goes away is logged
at info level (``client_disconnected``) and not counted as an error.
"""

from __future__ import annotations

import asyncio
import logging
import math
from time import perf_counter

import grpc
import numpy as np
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

from .admin import check_token
from .core import ServerCore
from .grpc_forms import RequestForms
from .grpc_wire import check_typed_values, varint_bytes
from .limits import INLINE_BYTES
from .logs import access, access_enabled, event
from .protocol import (
    DATATYPES,
    MAX_DIM,
    MAX_DIMS,
    InferRequest,
    KeptHeads,
    RequestedOutput,
    Tensor,
    answer_form,
    check_datatype,
    check_shape,
    error_message,
    grpc_status,
    invalid,
    select_outputs,
    shm_ref,
    tensor_from_bytes,
    tensor_from_values,
    wants_shared_memory,
)
from .shared_memory import enabled

log = logging.getLogger("hps_cli.serve")

# Typed contents field of each datatype (FP16 travels as raw bytes only).
CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}


def parameters_of(params) -> dict:
    """A protobuf map of InferParameter as plain values."""
    out = {}
    for key, value in params.items():
        kind = value.WhichOneof("parameter_choice")
        out[key] = getattr(value, kind) if kind else None
    return out


def parse_request(message: service_pb2.ModelInferRequest, shared_memory=None) -> InferRequest:
    """Decode a ModelInfer request. As tritonclient sends them, ``raw_input_contents`` holds
    one entry per input that is neither in shared memory nor given as typed contents."""
    request = InferRequest(model=message.model_name, version=message.model_version, id=message.id)
    raw = message.raw_input_contents
    if not message.inputs:
        raise invalid("must be a non-empty list of input tensors", "inputs")
    refs = [
        shm_ref(parameters_of(spec.parameters), f"inputs[{i}].parameters")
        for i, spec in enumerate(message.inputs)
    ]
    wants_raw = sum(ref is None for ref in refs)
    if raw and len(raw) != wants_raw:
        raise invalid(
            f"raw_input_contents has {len(raw)} entries for {wants_raw} inputs (one "
            "per input not in shared memory, in order)",
            "raw_input_contents",
        )
    next_raw = 0
    for i, spec in enumerate(message.inputs):
        where = f"inputs[{i}]"
        if not spec.name:
            raise invalid("name must be a non-empty string", f"{where}.name")
        if spec.name in request.inputs:
            raise invalid(f"input '{spec.name}' is given twice", f"{where}.name")
        check_datatype(spec.datatype, f"{where}.datatype")
        shape = check_shape(list(spec.shape), f"{where}.shape")
        if refs[i] is not None:
            if spec.HasField("contents"):
                raise invalid("typed contents and shared memory cannot be mixed", where)
            tensor = enabled(shared_memory).read(spec.name, spec.datatype, shape, refs[i], where)
        elif raw:
            if spec.HasField("contents"):
                raise invalid("typed contents and raw_input_contents cannot be mixed", where)
            blob = raw[next_raw]
            next_raw += 1
            tensor = tensor_from_bytes(spec.name, spec.datatype, shape, blob, 0, len(blob), where)
        else:
            field = CONTENTS.get(spec.datatype)
            if field is None:
                raise invalid(f"{spec.datatype} needs raw_input_contents", where)
            tensor = tensor_from_values(
                spec.name,
                spec.datatype,
                shape,
                list(getattr(spec.contents, field)),
                f"{where}.contents.{field}",
            )
        request.inputs[spec.name] = tensor
    wanted, seen = [], set()
    for i, out in enumerate(message.outputs):
        if out.name in seen:
            raise invalid(f"output '{out.name}' is requested twice", f"outputs[{i}].name")
        seen.add(out.name)
        ref = shm_ref(parameters_of(out.parameters), f"outputs[{i}].parameters")
        if ref is not None:
            enabled(shared_memory)
        wanted.append(RequestedOutput(out.name, True, ref))
    request.outputs = tuple(wanted) if wanted else None
    return request


def load_parameters(params) -> dict:
    """A RepositoryModelLoad's parameters as plain values (bytes as UTF-8 text)."""
    out = {}
    for key, value in params.items():
        kind = value.WhichOneof("parameter_choice")
        item = getattr(value, kind) if kind else None
        if isinstance(item, bytes):
            try:
                item = item.decode("utf-8")
            except UnicodeDecodeError:
                raise invalid("must be UTF-8 text", f"parameters.{key}") from None
        out[key] = item
    return out


def _raw_request(message: service_pb2.ModelInferRequest) -> InferRequest | None:
    """``parse_request``'s request for the common form only: every input in
    ``raw_input_contents``, no parameters on inputs or outputs (so no shared memory), no BOOL
    inputs; checked in one pass with fewer protobuf accesses. None for any other request,
    valid or not: ``parse_request`` then decodes it, or names its error."""
    inputs, raw = message.inputs, message.raw_input_contents
    if not inputs or len(raw) != len(inputs):
        return None
    tensors: dict[str, Tensor] = {}
    for spec, blob in zip(inputs, raw):
        name, datatype = spec.name, spec.datatype
        if (
            not name
            or name in tensors
            or datatype == "BOOL"
            or datatype not in DATATYPES
            or spec.parameters
            or spec.HasField("contents")
        ):
            return None
        shape = list(spec.shape)
        if len(shape) > MAX_DIMS:
            return None
        for dim in shape:
            if not 0 <= dim <= MAX_DIM:
                return None
        dtype = DATATYPES[datatype]
        count = math.prod(shape)
        if count * dtype.itemsize != len(blob):
            return None
        tensors[name] = Tensor(name, datatype, np.ndarray(shape, dtype, blob))
    wanted = []
    for out in message.outputs:
        if out.parameters or any(o.name == out.name for o in wanted):
            return None
        wanted.append(RequestedOutput(out.name, True, None))
    return InferRequest(
        model=message.model_name,
        version=message.model_version,
        id=message.id,
        inputs=tensors,
        outputs=tuple(wanted) if wanted else None,
    )


_FORMS = RequestForms()  # kept request forms (grpc_forms.py)


def decode_request(data: bytes, shared_memory=None) -> InferRequest:
    """A serialized ModelInferRequest, decoded (the size checks were done): from its kept form
    when it has one, else in full (and the form of a common-form request is kept)."""
    request = _FORMS.decode(data)
    if request is not None:
        return request
    try:
        message = service_pb2.ModelInferRequest.FromString(data)
    except DecodeError:
        raise invalid("the request is not a valid ModelInferRequest message", "request") from None
    request = _raw_request(message)
    if request is None:
        return parse_request(message, shared_memory)
    _FORMS.keep(data, request)
    return request


INLINE_ANSWER_BYTES = 256 << 10  # answers up to this are serialized on the event loop


def answer_bytes(result) -> int:
    return sum(t.array.nbytes for t in result.outputs)


def _parameter(target: service_pb2.InferParameter, value) -> None:
    if isinstance(value, bool):
        target.bool_param = value
    elif isinstance(value, int):
        target.int64_param = value
    elif isinstance(value, float):
        target.double_param = value
    else:
        target.string_param = str(value)


def encode_response(request: InferRequest, result) -> bytes:
    """The serialized ModelInferResponse (outputs in ``raw_output_contents``).

    Everything but the raw contents is serialized by protobuf once per form (model, version,
    id, parameters, outputs' names, datatypes and shapes: a server sees few) and kept; the raw
    contents, the message's last field, are appended to it as protobuf would write them. This
    is the serialization itself, byte for byte, without building a message per answer."""
    selected = select_outputs(result, request)
    raw = [tensor.array for tensor, _, ref in selected if ref is None]
    if len(raw) != len(selected):  # outputs in shared memory: rare, built in full
        return _response_message(request, result, selected, with_raw=True).SerializeToString()
    form = answer_form(request.model, request.version, request.id, result, selected)
    head = _RESPONSE_HEADS.get(
        form,
        lambda: _response_message(request, result, selected, with_raw=False).SerializeToString(),
    )
    parts = [head]
    for array in raw:
        data = memoryview(np.ascontiguousarray(array).reshape(-1)).cast("B") if array.size else b""
        parts += (_RAW_OUTPUT_TAG, varint_bytes(len(data)), data)
    return b"".join(parts)


_RESPONSE_HEADS_KEPT = 256
_RESPONSE_HEADS = KeptHeads(_RESPONSE_HEADS_KEPT)
_RAW_OUTPUT_TAG = bytes([6 << 3 | 2])  # ModelInferResponse.raw_output_contents, length-delimited


def _response_message(request: InferRequest, result, selected, *, with_raw: bool):
    response = service_pb2.ModelInferResponse(
        model_name=request.model, model_version=request.version or "1", id=request.id
    )
    for key, value in result.parameters.items():
        _parameter(response.parameters[key], value)
    # tritonclient finds an output's raw contents by the output's position: an output in
    # shared memory holds an empty place when raw outputs follow it.
    last_raw = max((i for i, (_, _, ref) in enumerate(selected) if ref is None), default=-1)
    for i, (tensor, _, ref) in enumerate(selected):
        output = response.outputs.add(
            name=tensor.name, datatype=tensor.datatype, shape=tensor.shape
        )
        if ref is not None:
            _parameter(output.parameters["shared_memory_region"], ref.region)
            _parameter(output.parameters["shared_memory_offset"], ref.offset)
            _parameter(output.parameters["shared_memory_byte_size"], tensor.array.nbytes)
            if i < last_raw:
                response.raw_output_contents.append(b"")
        elif with_raw:
            response.raw_output_contents.append(tensor.array.tobytes())
    return response


class Servicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, core: ServerCore):
        self.core = core

    async def _call(self, name: str, context, work, model: str | dict = "", forecast=None):
        """Run ``work()``; errors become status codes; access log and metrics. ``model``: the
        model name, or a dict whose "model" ``work`` fills in once it has decoded the request.
        ``forecast``: the ConcurrencyForecast that counts the calls inside (arrivals.py)."""
        started = perf_counter()
        core = self.core
        if forecast is not None:
            forecast.arrived(started)
        core.begin()
        code = "OK"
        try:
            try:
                return await work()
            except asyncio.CancelledError:  # the client cancelled or went away
                code = "CANCELLED"
                core.metrics.client_disconnects.labels("grpc").inc()
                event(log, "client_disconnected", protocol="grpc", method=name, peer=context.peer())
                raise
            except Exception as exc:  # noqa: BLE001 - every RPC gets an answer
                code = grpc_status(exc)
                if code == "INTERNAL":
                    log.exception("unexpected error in %s", name)
                message = error_message(exc)
            status = getattr(grpc.StatusCode, code)
            if name == "ModelInfer":
                # A status set and an empty answer, not context.abort: abort raises through
                # grpc.aio's handler, and that traceback keeps the request's bytes alive in a
                # reference cycle until the garbage collector runs; a client looping on refused
                # 2 MB requests grew the server by 100+ MB that way (tests/test_serve_hostile.py).
                context.set_code(status)
                context.set_details(message)
                return b""
            await context.abort(status, message)
        finally:
            core.end()
            done = perf_counter()
            if forecast is not None:
                forecast.answered(done)
            if isinstance(model, dict):
                model = model["model"]
            if name == "ModelInfer" and code != "CANCELLED":
                core.metrics.observe(core.model_label(model), "grpc", code, done - started)
            if access_enabled():
                access(
                    protocol="grpc",
                    method=name,
                    model=model,
                    status=code,
                    ms=round((done - started) * 1000, 3),
                    peer=context.peer(),
                )

    def _admin(self, context) -> None:
        metadata = dict(context.invocation_metadata() or ())
        check_token(self.core.options.admin_token, metadata.get("authorization"))

    async def ServerLive(self, request, context):
        async def work():
            return service_pb2.ServerLiveResponse(live=True)

        return await self._call("ServerLive", context, work)

    async def ServerReady(self, request, context):
        async def work():
            return service_pb2.ServerReadyResponse(ready=self.core.ready)

        return await self._call("ServerReady", context, work)

    async def ModelReady(self, request, context):
        async def work():
            return service_pb2.ModelReadyResponse(
                ready=self.core.is_model_ready(request.name, request.version)
            )

        return await self._call("ModelReady", context, work, request.name)

    async def ServerMetadata(self, request, context):
        async def work():
            meta = self.core.server_metadata()
            return service_pb2.ServerMetadataResponse(
                name=meta["name"], version=meta["version"], extensions=meta["extensions"]
            )

        return await self._call("ServerMetadata", context, work)

    async def ModelMetadata(self, request, context):
        async def work():
            meta = self.core.entry(request.name, request.version).model.metadata()
            response = service_pb2.ModelMetadataResponse(
                name=meta["name"], versions=meta["versions"], platform=meta["platform"]
            )
            for key, target in (("inputs", response.inputs), ("outputs", response.outputs)):
                for t in meta[key]:
                    target.add(name=t["name"], datatype=t["datatype"], shape=t["shape"])
            return response

        return await self._call("ModelMetadata", context, work, request.name)

    async def ModelConfig(self, request, context):
        async def work():
            doc = self.core.model_config(self.core.entry(request.name, request.version))
            config = json_format.ParseDict(doc, model_config_pb2.ModelConfig())
            return service_pb2.ModelConfigResponse(config=config)

        return await self._call("ModelConfig", context, work, request.name)

    async def ModelStatistics(self, request, context):
        async def work():
            doc = self.core.statistics(request.name, request.version)
            return json_format.ParseDict(doc, service_pb2.ModelStatisticsResponse())

        return await self._call("ModelStatistics", context, work, request.name)

    async def ModelInfer(self, request: bytes, context):
        names = {"model": ""}
        core = self.core

        async def work():
            core.check_ready()
            check_typed_values(request, core.limits.max_elements)
            if len(request) <= INLINE_BYTES:  # decoded right here (core.decode would, later)
                parsed = decode_request(request, core.shared_memory)
            else:
                parsed = await core.decode(
                    len(request), decode_request, request, core.shared_memory
                )
            names["model"] = parsed.model
            result = await core.infer(parsed)
            if wants_shared_memory(parsed):
                await core.write_shared(parsed, result)
            if answer_bytes(result) <= INLINE_ANSWER_BYTES:
                return encode_response(parsed, result)
            # Built and serialized in a worker thread: 8 MiB of vectors never stall the loop.
            return await asyncio.get_running_loop().run_in_executor(
                core.executor, encode_response, parsed, result
            )

        return await self._call("ModelInfer", context, work, names, core.arrivals.grpc)

    async def RepositoryIndex(self, request, context):
        async def work():
            self._admin(context)
            response = service_pb2.RepositoryIndexResponse()
            for entry in self.core.repository_index():
                response.models.add(**entry)
            return response

        return await self._call("RepositoryIndex", context, work)

    async def RepositoryModelLoad(self, request, context):
        async def work():
            self._admin(context)
            await self.core.load_model(request.model_name, load_parameters(request.parameters))
            return service_pb2.RepositoryModelLoadResponse()

        return await self._call("RepositoryModelLoad", context, work, request.model_name)

    async def RepositoryModelUnload(self, request, context):
        async def work():
            self._admin(context)
            await self.core.unload_model(request.model_name)
            return service_pb2.RepositoryModelUnloadResponse()

        return await self._call("RepositoryModelUnload", context, work, request.model_name)

    async def SystemSharedMemoryStatus(self, request, context):
        async def work():
            response = service_pb2.SystemSharedMemoryStatusResponse()
            for region in self.core.shared_memory.status(request.name or None):
                response.regions[region["name"]].CopyFrom(
                    service_pb2.SystemSharedMemoryStatusResponse.RegionStatus(**region)
                )
            return response

        return await self._call("SystemSharedMemoryStatus", context, work)

    async def SystemSharedMemoryRegister(self, request, context):
        async def work():
            self.core.shared_memory.register(
                request.name, request.key, request.offset, request.byte_size
            )
            return service_pb2.SystemSharedMemoryRegisterResponse()

        return await self._call("SystemSharedMemoryRegister", context, work)

    async def SystemSharedMemoryUnregister(self, request, context):
        async def work():
            self.core.shared_memory.unregister(request.name or None)
            return service_pb2.SystemSharedMemoryUnregisterResponse()

        return await self._call("SystemSharedMemoryUnregister", context, work)


def _serialized(response) -> bytes:
    return response if isinstance(response, bytes) else response.SerializeToString()


def build_server(core: ServerCore) -> grpc.aio.Server:
    """The service's unary RPCs that ``Servicer`` implements (the others answer UNIMPLEMENTED);
    ModelInfer takes and answers serialized bytes. gRPC refuses messages above the request limit
    from their length prefix, before it buffers them; a connection must finish its handshake
    within the header timeout."""
    limits = core.limits
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", limits.max_request_bytes),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 1 if core.options.reuse_port else 0),
            ("grpc.server_handshake_timeout_ms", int(limits.header_timeout_s * 1000)),
            # No flow-control window growth (BDP probing): with it, a client sending a message
            # far above the limit at the same time as other big transfers got a large share of
            # it buffered before the refusal, and the server's RSS grew from 83 to 318-365 MiB
            # and stayed there; without it the window stays at 64 KiB per stream (87 MiB). Small
            # requests are as fast on loopback; multi-MB requests over high-latency links pay a
            # round trip per window.
            ("grpc.http2.bdp_probe", 0),
        ]
    )
    servicer = Servicer(core)
    service = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    handlers = {}
    for method in service.methods:
        if (
            method.client_streaming
            or method.server_streaming
            or method.name not in Servicer.__dict__
        ):
            continue
        request_type = getattr(service_pb2, method.input_type.name)
        response_type = getattr(service_pb2, method.output_type.name)
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            getattr(servicer, method.name),
            # ModelInfer decodes its request itself, within the limits.
            request_deserializer=None if method.name == "ModelInfer" else request_type.FromString,
            response_serializer=_serialized
            if method.name == "ModelInfer"
            else response_type.SerializeToString,
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
    return server
