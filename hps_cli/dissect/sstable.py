"""Reading a LevelDB-format table (SSTable): the ``.index`` file of a TensorFlow checkpoint.

Layout (tensorflow/core/lib/io/format.h, table_builder.cc, block_builder.cc):

- a 48-byte footer at the end: the metaindex and index ``BlockHandle``s (two varint64 each:
  offset, size), zero padding to 40 bytes, then the magic number 0xdb4775248b80fb57 (fixed64);
- each block is followed by a 5-byte trailer: compression type (0 = none) and a masked CRC32C;
- a block holds prefix-compressed entries ``varint32 shared, varint32 non_shared,
  varint32 value_length, key suffix, value`` and ends with the restart array (uint32 each) and
  its length (uint32);
- the index block maps the last key of each data block to that data block's handle.

TensorFlow's bundle writer stores the index uncompressed, so compressed blocks are reported as
unsupported rather than decoded.
"""

from __future__ import annotations

import struct
from typing import Iterator

from ..runtime.errors import InvalidInputError
from .protowire import read_varint

MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48
TRAILER_SIZE = 5


def _handle(buf: bytes, pos: int) -> tuple[int, int, int]:
    offset, pos = read_varint(buf, pos)
    size, pos = read_varint(buf, pos)
    return offset, size, pos


def _block(data: bytes, offset: int, size: int, location: str) -> bytes:
    end = offset + size
    if offset < 0 or end + TRAILER_SIZE > len(data):
        raise InvalidInputError(
            f"block at byte {offset} (size {size}) lies past the end of the file", location=location
        )
    kind = data[end]
    if kind != 0:
        raise InvalidInputError(
            f"block at byte {offset} is compressed (type {kind}); TensorFlow writes checkpoint "
            "indexes uncompressed and dissect reads only those",
            location=location,
        )
    return data[offset:end]


def _entries(block: bytes, location: str) -> Iterator[tuple[bytes, bytes]]:
    if len(block) < 4:
        raise InvalidInputError("block too short for its restart array", location=location)
    num_restarts = struct.unpack_from("<I", block, len(block) - 4)[0]
    limit = len(block) - 4 - 4 * num_restarts
    if limit < 0:
        raise InvalidInputError("block restart array longer than the block", location=location)
    pos, key = 0, b""
    while pos < limit:
        shared, pos = read_varint(block, pos)
        non_shared, pos = read_varint(block, pos)
        value_len, pos = read_varint(block, pos)
        if shared > len(key) or pos + non_shared + value_len > limit:
            raise InvalidInputError(f"corrupt block entry at byte {pos}", location=location)
        key = key[:shared] + block[pos : pos + non_shared]
        pos += non_shared
        yield key, block[pos : pos + value_len]
        pos += value_len


def read_table(data: bytes, location: str = "") -> Iterator[tuple[bytes, bytes]]:
    """Yield every (key, value) of an SSTable held in ``data``, in key order."""
    if len(data) < FOOTER_SIZE:
        raise InvalidInputError(
            f"{len(data)} bytes is too short for a checkpoint index", location=location
        )
    footer = data[-FOOTER_SIZE:]
    if struct.unpack_from("<Q", footer, 40)[0] != MAGIC:
        raise InvalidInputError(
            "not a TensorFlow checkpoint index (bad SSTable magic number)", location=location
        )
    try:
        _, _, pos = _handle(footer, 0)  # metaindex: empty in bundles, not needed
        index_offset, index_size, _ = _handle(footer, pos)
        index = _block(data, index_offset, index_size, location)
        for _, handle in _entries(index, location):
            offset, size, _ = _handle(handle, 0)
            yield from _entries(_block(data, offset, size, location), location)
    except (ValueError, struct.error) as exc:
        raise InvalidInputError(f"corrupt checkpoint index: {exc}", location=location) from exc
