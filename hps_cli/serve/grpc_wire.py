"""A bound on the typed values of a serialized ``ModelInferRequest``, read from the protobuf
wire format without parsing the message.

Parsing typed ``contents`` builds one Python object per value: a 57 MiB message of packed
varints is tens of millions of them. The scan walks the length-delimited fields (a request
has a handful) and bounds each input's contents by its bytes: packed FP32 values take 4 bytes,
FP64 8, varints (BOOL, INT*, UINT*) at least 1. It costs microseconds, so the server refuses such
a request before anything is allocated for it.
"""

from __future__ import annotations

from .limits import too_many_elements
from .protocol import invalid

MAX_FIELDS = 10_000  # fields a request may hold at its top level and in each input
_INPUTS = 5  # ModelInferRequest.inputs
_CONTENTS = 5  # InferInputTensor.contents
_BYTES_PER_VALUE = {6: 4, 7: 8}  # InferTensorContents.fp32_contents, fp64_contents (packed)
_SCANNED_CONTENT_FIELDS = 64  # beyond: the rest of a contents message is bounded by its size


def _varint(data, at: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= end or shift > 63:
            raise invalid("the protobuf message is malformed (a varint)", "request")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7


def varint_bytes(value: int) -> bytes:
    """The protobuf varint of a non-negative ``value`` (what ``_varint`` reads)."""
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _fields(data, at: int, end: int, limit: int = MAX_FIELDS):
    """(field number, wire type, start, end) of each field in ``data[at:end]``."""
    count = 0
    while at < end:
        count += 1
        if count > limit:
            raise invalid(f"the message holds more than {limit} fields", "request")
        key, at = _varint(data, at, end)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, stop = _varint(data, at, end)
            start = at
        elif wire == 1:
            start, stop = at, at + 8
        elif wire == 2:
            size, start = _varint(data, at, end)
            stop = start + size
        elif wire == 5:
            start, stop = at, at + 4
        else:
            raise invalid(f"the protobuf message is malformed (wire type {wire})", "request")
        if stop > end:
            raise invalid("the protobuf message is truncated", "request")
        yield number, wire, start, stop
        at = stop


def _contents_bound(data, start: int, end: int) -> int:
    values = 0
    for i, (number, wire, at, stop) in enumerate(_fields(data, start, end, limit=end - start)):
        if i >= _SCANNED_CONTENT_FIELDS:
            return values + (end - at)  # at least one byte per value from here on
        if wire == 2 and number != 8:  # packed scalars (8: bytes_contents, one value each)
            values += (stop - at) // _BYTES_PER_VALUE.get(number, 1)
        else:
            values += 1
    return values


def typed_value_bound(data: bytes) -> int:
    """An upper bound of the values in the typed ``contents`` of every input."""
    view = memoryview(data)
    total = 0
    for number, wire, start, stop in _fields(view, 0, len(view)):
        if number != _INPUTS or wire != 2:
            continue
        for inner, inner_wire, at, inner_stop in _fields(view, start, stop):
            if inner == _CONTENTS and inner_wire == 2:
                total += _contents_bound(view, at, inner_stop)
    return total


def check_typed_values(data: bytes, limit: int) -> None:
    if len(data) <= limit:  # every value takes at least one byte: nothing to scan
        return
    bound = typed_value_bound(data)
    if bound > limit:
        raise too_many_elements(bound, limit, "inputs.contents")
