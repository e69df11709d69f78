"""A minimal protobuf wire-format decoder for the few TensorFlow messages dissect reads.

Why not TensorFlow's generated classes: importing them imports all of TensorFlow (about 3 s and
550 MB of resident memory), which would dominate extracting a table from a checkpoint and would
make TensorFlow a requirement for it. The messages below are small and stable (TensorBundle
format v1, TrackableObjectGraph); tests decode real checkpoints with both this module and TF's
classes and compare.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from ..runtime.errors import InvalidInputError

_VARINT, _FIXED64, _LEN, _FIXED32 = 0, 1, 2, 5


def read_varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    """Decode one base-128 varint at ``pos``; return (value, next position)."""
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")


def fields(buf: bytes | memoryview):
    """Yield (field number, wire type, value) of a serialized message.

    Varints and fixed ints come back as ints, length-delimited fields as bytes.
    """
    pos, end = 0, len(buf)
    while pos < end:
        tag, pos = read_varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == _VARINT:
            value, pos = read_varint(buf, pos)
        elif wire == _LEN:
            size, pos = read_varint(buf, pos)
            if pos + size > end:
                raise ValueError("truncated length-delimited field")
            value = bytes(buf[pos : pos + size])
            pos += size
        elif wire == _FIXED32:
            value = struct.unpack_from("<I", buf, pos)[0]
            pos += 4
        elif wire == _FIXED64:
            value = struct.unpack_from("<Q", buf, pos)[0]
            pos += 8
        else:
            raise ValueError(f"unsupported wire type {wire}")
        yield number, wire, value


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


@dataclass(frozen=True)
class BundleHeader:
    """``tensorflow.BundleHeaderProto``: shard count and byte order of a TensorBundle."""

    num_shards: int = 1
    big_endian: bool = False


@dataclass(frozen=True)
class BundleEntry:
    """``tensorflow.BundleEntryProto``: where one tensor lives in the data files."""

    dtype: int = 0
    shape: tuple[int, ...] = ()
    unknown_rank: bool = False
    shard_id: int = 0
    offset: int = 0
    size: int = 0
    crc32c: int = 0
    slices: tuple[tuple[tuple[int, int], ...], ...] = ()  # per slice: (start, length) per dim

    @property
    def sliced(self) -> bool:
        return bool(self.slices)


@dataclass(frozen=True)
class ObjectReference:
    node_id: int
    local_name: str


@dataclass(frozen=True)
class SerializedTensor:
    name: str
    full_name: str
    checkpoint_key: str


@dataclass(frozen=True)
class SlotReference:
    original_variable_node_id: int
    slot_name: str
    slot_variable_node_id: int


@dataclass
class TrackableNode:
    """One ``TrackableObjectGraph.TrackableObject``."""

    children: list[ObjectReference] = field(default_factory=list)
    attributes: list[SerializedTensor] = field(default_factory=list)
    slot_variables: list[SlotReference] = field(default_factory=list)


def _guard(what: str, location: str):
    class _Guard:
        def __enter__(self):
            return self

        def __exit__(self, exc_type, exc, tb):
            if exc_type in (ValueError, struct.error, UnicodeDecodeError, IndexError):
                raise InvalidInputError(f"corrupt {what}: {exc}", location=location) from exc
            return False

    return _Guard()


def decode_header(buf: bytes, location: str = "") -> BundleHeader:
    num_shards, big = 1, False
    with _guard("TensorBundle header", location):
        for number, _, value in fields(buf):
            if number == 1:
                num_shards = value
            elif number == 2:
                big = value == 1
    return BundleHeader(num_shards, big)


def _decode_shape(buf: bytes) -> tuple[tuple[int, ...], bool]:
    dims: list[int] = []
    unknown = False
    for number, _, value in fields(buf):
        if number == 2:
            size = 0
            for n2, _, v2 in fields(value):
                if n2 == 1:
                    size = _signed64(v2)
            dims.append(size)
        elif number == 3:
            unknown = bool(value)
    return tuple(dims), unknown


def decode_entry(buf: bytes, location: str = "") -> BundleEntry:
    values: dict[str, object] = {}
    with _guard("TensorBundle entry", location):
        for number, _, value in fields(buf):
            if number == 1:
                values["dtype"] = value
            elif number == 2:
                values["shape"], values["unknown_rank"] = _decode_shape(value)
            elif number == 3:
                values["shard_id"] = value
            elif number == 4:
                values["offset"] = _signed64(value)
            elif number == 5:
                values["size"] = _signed64(value)
            elif number == 6:
                values["crc32c"] = value
            elif number == 7:
                values["slices"] = values.get("slices", ()) + (_decode_slice(value),)
    return BundleEntry(**values)


def _decode_slice(buf: bytes) -> tuple[tuple[int, int], ...]:
    """``TensorSliceProto``: one Extent (start 1, length 2; no length = the full extent -1)."""
    extents = []
    for number, _, value in fields(buf):
        if number == 1:
            start, length = 0, -1
            for n2, _, v2 in fields(value):
                if n2 == 1:
                    start = _signed64(v2)
                elif n2 == 2:
                    length = _signed64(v2)
            extents.append((start, length))
    return tuple(extents)


def _text(value: bytes) -> str:
    return value.decode("utf-8")


def decode_object_graph(buf: bytes, location: str = "") -> list[TrackableNode]:
    """Decode a serialized ``tensorflow.TrackableObjectGraph`` into its nodes."""
    nodes: list[TrackableNode] = []
    with _guard("checkpoint object graph", location):
        for number, _, node_buf in fields(buf):
            if number != 1:
                continue
            node = TrackableNode()
            for n2, _, value in fields(node_buf):
                if n2 == 1:
                    parts = {n: v for n, _, v in fields(value)}
                    node.children.append(ObjectReference(parts.get(1, 0), _text(parts.get(2, b""))))
                elif n2 == 2:
                    parts = {n: v for n, _, v in fields(value)}
                    node.attributes.append(
                        SerializedTensor(
                            _text(parts.get(1, b"")),
                            _text(parts.get(2, b"")),
                            _text(parts.get(3, b"")),
                        )
                    )
                elif n2 == 3:
                    parts = {n: v for n, _, v in fields(value)}
                    node.slot_variables.append(
                        SlotReference(parts.get(1, 0), _text(parts.get(2, b"")), parts.get(3, 0))
                    )
            nodes.append(node)
    return nodes
