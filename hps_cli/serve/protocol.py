"""The KServe v2 inference protocol, independent of the transport (HTTP or gRPC).

Requests and responses as plain objects (``InferRequest``, ``Tensor``, ``InferResult``), the
datatypes (KServe names <-> little-endian NumPy dtypes), tensor decoding from raw bytes or from
JSON / protobuf value lists, and the errors every malformed request becomes. An error names the
field (``inputs[1].shape``, ``KEYS``, ...) in its ``location``; ``http_status`` and
``grpc_status`` map it to the status Triton would answer (404 NOT_FOUND, 400 INVALID_ARGUMENT,
503 UNAVAILABLE, ...).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from ..runtime.errors import (
    CapacityError,
    HpsError,
    InvalidInputError,
    NotFoundError,
    ServiceUnavailableError,
)

DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
UNSUPPORTED_DATATYPES = ("BYTES", "BF16")  # valid KServe names no hps model takes
MAX_DIMS = 16
MAX_DIM = 2**31 - 1

# Triton's model-config data types (config.pbtxt's TYPE_*) of each KServe datatype.
CONFIG_TYPES = {name: f"TYPE_{name}" for name in DATATYPES}

_NUMPY_NAMES = {
    "bool": "BOOL",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "float16": "FP16",
    "float32": "FP32",
    "float64": "FP64",
}


def datatype_of(numpy_name: str) -> str:
    """KServe datatype of a NumPy/TensorFlow dtype name (``int64`` -> ``INT64``)."""
    try:
        return _NUMPY_NAMES[numpy_name]
    except KeyError:
        raise InvalidInputError(
            f"dtype {numpy_name!r} has no KServe datatype hps serves", location="dtype"
        ) from None


# ------------------------------------------------------------------------------------- errors


class RequestTooLargeError(InvalidInputError):
    """The request body is larger than the server's limit (HTTP 413)."""

    default_hint = "split the request, or raise the server's --max-request-bytes"


class RequestTimeoutError(InvalidInputError):
    """The request did not arrive within the server's read timeouts (HTTP 408)."""


class UnsupportedEncodingError(InvalidInputError):
    """The body's Content-Encoding is not one the server inflates (HTTP 415)."""


class UnauthorizedError(InvalidInputError):
    """An admin endpoint was called without the right bearer token (HTTP 401)."""

    default_hint = "send 'Authorization: Bearer <token>' with the server's admin token"


class ForbiddenError(InvalidInputError):
    """Admin endpoints are disabled: the server has no admin token (HTTP 403)."""

    default_hint = "start hps serve with --admin-token-file or HPS_ADMIN_TOKEN"


def http_status(exc: BaseException) -> int:
    """The HTTP status of an error, as Triton maps its own (anything unexpected: 500)."""
    if isinstance(exc, RequestTooLargeError):
        return 413
    if isinstance(exc, RequestTimeoutError):
        return 408
    if isinstance(exc, UnsupportedEncodingError):
        return 415
    if isinstance(exc, UnauthorizedError):
        return 401
    if isinstance(exc, ForbiddenError):
        return 403
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, InvalidInputError):
        return 400
    if isinstance(exc, (ServiceUnavailableError, CapacityError)):
        return 503
    return 500


def grpc_status(exc: BaseException) -> str:
    """The name of the ``grpc.StatusCode`` of an error."""
    return {
        413: "RESOURCE_EXHAUSTED",
        408: "DEADLINE_EXCEEDED",
        415: "INVALID_ARGUMENT",
        401: "UNAUTHENTICATED",
        403: "PERMISSION_DENIED",
        404: "NOT_FOUND",
        400: "INVALID_ARGUMENT",
        503: "UNAVAILABLE",
    }.get(http_status(exc), "INTERNAL")


def error_message(exc: BaseException) -> str:
    """One line for the client: ``location: message`` of typed errors (plus the hint)."""
    if isinstance(exc, HpsError):
        text = str(exc)
        return f"{text} (hint: {exc.hint})" if exc.hint else text
    return f"internal error: {type(exc).__name__}"


def invalid(message: str, where: str) -> InvalidInputError:
    return InvalidInputError(message, location=where)


# ------------------------------------------------------------------------------------ objects


@dataclass
class Tensor:
    """A named tensor: KServe datatype, shape and the values (a NumPy array of that shape)."""

    name: str
    datatype: str
    array: np.ndarray

    @property
    def shape(self) -> list[int]:
        return list(self.array.shape)


SHM_PARAMS = ("shared_memory_region", "shared_memory_offset", "shared_memory_byte_size")


@dataclass(frozen=True)
class ShmRef:
    """Where a tensor lives: a region, an offset in it and a byte size."""

    region: str
    offset: int
    byte_size: int


def shm_ref(params: dict, where: str) -> ShmRef | None:
    """The shared-memory parameters of an input or output (None when there are none)."""
    if "shared_memory_region" not in params:
        for name in SHM_PARAMS[1:]:
            if name in params:
                raise invalid(f"{name} needs shared_memory_region", f"{where}.{name}")
        return None
    region = params["shared_memory_region"]
    if not isinstance(region, str) or not region:
        raise invalid("must be a region name", f"{where}.shared_memory_region")
    values = []
    for name in SHM_PARAMS[1:]:
        value = params.get(name, 0 if name == "shared_memory_offset" else None)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise invalid("must be a non-negative integer", f"{where}.{name}")
        values.append(value)
    return ShmRef(region, values[0], values[1])


class RequestedOutput(NamedTuple):  # a tuple: made for every output of every request
    name: str
    binary: bool | None = None  # None: the request's default
    shm: ShmRef | None = None  # written into a shared memory region instead


@dataclass
class InferRequest:
    """One inference request, decoded. ``outputs`` None means every output."""

    model: str
    version: str = ""
    id: str = ""
    inputs: dict[str, Tensor] = field(default_factory=dict)
    outputs: tuple[RequestedOutput, ...] | None = None
    binary_output: bool = False
    parameters: dict = field(default_factory=dict)


@dataclass
class InferResult:
    """What a model answers for one request: output tensors and response parameters."""

    outputs: list[Tensor]
    parameters: dict = field(default_factory=dict)


def wants_shared_memory(request: InferRequest) -> bool:
    """Whether the request places an output in a shared memory region."""
    return request.outputs is not None and any(o.shm is not None for o in request.outputs)


def select_outputs(
    result: InferResult, request: InferRequest
) -> list[tuple[Tensor, bool, ShmRef | None]]:
    """The outputs to send: (tensor, in binary, shared memory target) (names were checked)."""
    if request.outputs is None:
        return [(t, request.binary_output, None) for t in result.outputs]
    by_name = {t.name: t for t in result.outputs}
    return [
        (by_name[o.name], request.binary_output if o.binary is None else o.binary, o.shm)
        for o in request.outputs
    ]


def answer_form(model: str, version: str, request_id: str, result: InferResult, selected) -> tuple:
    """What an answer depends on besides its output values: model, version, id, parameters and
    the outputs' names, datatypes and shapes (``selected``: ``select_outputs``'s list). Each
    parameter counts with its type and repr: True, 1 and 1.0 (and 0.0, -0.0) are equal keys
    but different values."""
    return (
        model,
        version,
        request_id,
        tuple((key, type(value), repr(value)) for key, value in result.parameters.items()),
        tuple((t.name, t.datatype, t.array.shape) for t, _, _ in selected),
    )


class KeptHeads:
    """Serialized answer heads by ``answer_form``, made once per form and kept: a server sees
    few forms. At most ``limit``, all dropped when full (clients that send unique ids)."""

    def __init__(self, limit: int = 256):
        self.limit = limit
        self._heads: dict[tuple, bytes] = {}

    def __len__(self) -> int:
        return len(self._heads)

    def get(self, form: tuple, make) -> bytes:
        """The head of ``form``, made by ``make()`` the first time."""
        head = self._heads.get(form)
        if head is None:
            head = make()
            if len(self._heads) >= self.limit:
                self._heads.clear()
            self._heads[form] = head
        return head


# ---------------------------------------------------------------------------- shape and data


def check_datatype(datatype: object, where: str) -> np.dtype:
    if not isinstance(datatype, str):
        raise invalid(f"datatype must be a string, got {_kind(datatype)}", where)
    if datatype in DATATYPES:
        return DATATYPES[datatype]
    if datatype in UNSUPPORTED_DATATYPES:
        raise invalid(
            f"datatype {datatype} is not supported by hps models (numeric tensors only)", where
        )
    raise invalid(
        f"unknown datatype {datatype!r} (KServe datatypes: {', '.join(DATATYPES)})", where
    )


def check_shape(shape: object, where: str) -> tuple[int, ...]:
    """A shape: a list of at most MAX_DIMS integers in [0, MAX_DIM]."""
    if type(shape) is list and len(shape) <= MAX_DIMS:  # the common case, checked in one pass
        for dim in shape:
            if type(dim) is not int or not 0 <= dim <= MAX_DIM:
                break
        else:
            return tuple(shape)
    if not isinstance(shape, (list, tuple)):
        raise invalid(f"shape must be a list of integers, got {_kind(shape)}", where)
    if len(shape) > MAX_DIMS:
        raise invalid(f"shape has {len(shape)} dimensions (at most {MAX_DIMS})", where)
    dims = []
    for i, dim in enumerate(shape):
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)):
            raise invalid(f"dimension {i} must be an integer, got {_kind(dim)}", where)
        if not 0 <= int(dim) <= MAX_DIM:
            raise invalid(f"dimension {i} is {int(dim)}: it must be in [0, {MAX_DIM}]", where)
        dims.append(int(dim))
    return tuple(dims)


def element_count(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def tensor_from_bytes(
    name: str, datatype: str, shape: tuple[int, ...], buffer, offset: int, size: int, where: str
) -> Tensor:
    """A tensor from ``size`` raw little-endian bytes at ``offset`` of ``buffer`` (no copy)."""
    dtype = DATATYPES[datatype]
    count = math.prod(shape)
    if count * dtype.itemsize != size:
        raise invalid(
            f"{size} bytes of binary data for shape {list(shape)} of {datatype} "
            f"(expected {count} x {dtype.itemsize} = {count * dtype.itemsize})",
            where,
        )
    array = np.frombuffer(buffer, dtype, count, offset).reshape(shape)
    if datatype == "BOOL" and count and np.frombuffer(buffer, np.uint8, count, offset).max() > 1:
        raise invalid("BOOL bytes must be 0 or 1", where)
    return Tensor(name, datatype, array)


def tensor_from_values(
    name: str, datatype: str, shape: tuple[int, ...], values, where: str
) -> Tensor:
    """A tensor from a (possibly nested) list of JSON numbers or a protobuf value list."""
    dtype = DATATYPES[datatype]
    count = element_count(shape)
    if dtype.kind in "iu" and _small_ints(values):  # e.g. NUMKEYS: checked in Python, in µs
        if len(values) != count:
            raise invalid(
                f"data holds {len(values)} values but shape {list(shape)} needs {count}", where
            )
        info = np.iinfo(dtype)
        if values and (min(values) < info.min or max(values) > info.max):
            low, high = min(values), max(values)
            raise invalid(f"{datatype} data out of range: values in [{low}, {high}]", where)
        return Tensor(name, datatype, np.array(values, dtype=dtype).reshape(shape))
    try:
        array = np.array(values)
    except (ValueError, TypeError, OverflowError):
        raise invalid("data must be a flat or evenly nested array of numbers", where) from None
    if array.size != count:
        raise invalid(
            f"data holds {array.size} values but shape {list(shape)} needs {count}", where
        )
    if array.size:
        kind = array.dtype.kind
        if kind not in "biuf":
            raise invalid(
                f"data must hold numbers for {datatype}, got "
                f"{_kind(array.reshape(-1)[0].item() if kind != 'O' else None)} values",
                where,
            )
        if dtype.kind == "b" and kind != "b":
            raise invalid("BOOL data must be true/false", where)
        if dtype.kind in "iu":
            if kind not in "iu":
                raise invalid(f"{datatype} data must be integers", where)
            info = np.iinfo(dtype)
            low, high = int(array.min()), int(array.max())
            if low < info.min or high > info.max:
                raise invalid(f"{datatype} data out of range: values in [{low}, {high}]", where)
        if dtype.kind == "f" and kind == "b":
            raise invalid(f"{datatype} data must be numbers, not true/false", where)
    return Tensor(name, datatype, np.ascontiguousarray(array.astype(dtype)).reshape(shape))


def _small_ints(values) -> bool:
    """A flat list of at most 64 Python ints (not bools)."""
    return (
        isinstance(values, list) and len(values) <= 64 and all(type(v) is int for v in values)  # noqa: E721 - bool is an int subclass
    )


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__
