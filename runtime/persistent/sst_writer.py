"""Writing RocksDB SST files of fixed-size records with NumPy, for bulk loading.

Why not RocksDB's own ``SstFileWriter``: through Python it costs one call per row (about 1 M
rows/s here), the same order as a ``WriteBatch`` loop. Our rows all have the same size (8-byte
key, ``4 * dim``-byte vector), so every data block holds the same number of same-sized entries
and whole blocks can be laid out as one 3-D byte array; only the per-block CRC32C is a loop.

The files follow RocksDB's block-based table format, version 5, the same that ``SstFileWriter``
writes with ``format_version=5`` and ``checksum=kCRC32c`` (both readable by every RocksDB since
6.6 and by HPS's):

- data blocks: entries ``varint32 shared=0 | varint32 16 | varint32 len(value) | internal key |
  value`` where the internal key is the raw user key plus the 8-byte trailer ``seq << 8 | type``
  with ``seq = 0`` and ``type = 1`` (a value; ingestion assigns the real sequence number), one
  restart point every 16 entries, then ``uint32 restarts[] | uint32 count``; each block is
  followed by a 5-byte trailer ``compression type 0 | masked CRC32C of block + type byte``.
- an index block (restart interval 1) whose key for each data block is that block's last
  internal key and whose value is the block handle ``varint64 offset | varint64 size``
  (classic encoding: the properties say ``index.key.is.user.key = 0`` and
  ``index.value.is.delta.encoded = 0``).
- a properties block (with ``rocksdb.external_sst_file.version = 2`` and ``global_seqno = 0``,
  what ingestion checks), a metaindex block pointing to it, and the 53-byte footer
  ``checksum type | metaindex handle | index handle | zero padding to 40 | uint32 version |
  uint64 magic``.

There is no filter block: HPS's lookups still find each key with one index search per file.
Keys must arrive sorted by their bytes (RocksDB's default bytewise comparator) and unique.

``write_range_deletion_file`` writes the other kind of file this package ingests: no data, one
range tombstone over every key (a ``rocksdb.range_del`` meta block), which replaces a column
family's content atomically when it is ingested first in the same call as the new data
(rocksdb_replace.py).
"""

from __future__ import annotations

import os
import secrets
import struct
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..direct_io import DirectFile, aligned_empty
from ..errors import DependencyMissingError

MAGIC = 0x88E241B785F4CFF7  # kBlockBasedTableMagicNumber
FORMAT_VERSION = 5
CHECKSUM_CRC32C = 1
VALUE_TRAILER = (0 << 8) | 1  # sequence number 0, kTypeValue
RANGE_DELETION_TRAILER = (0 << 8) | 0x0F  # sequence number 0, kTypeRangeDeletion
# The tombstone [b"", b"\xff" * 9) covers every key of 8 bytes or fewer (HPS's 8- and 4-byte
# raw keys) in the bytewise order.
EVERY_KEY = (b"", b"\xff" * 9)
DATA_RESTART_INTERVAL = 16
DEFAULT_BLOCK_BYTES = 4096
DEFAULT_FILE_BYTES = 256 << 20
_MASK_DELTA = 0xA282EAD8


def _crc32c():
    try:
        import crc32c
    except ImportError as exc:  # pragma: no cover - crc32c is a core dependency
        raise DependencyMissingError("crc32c", "all", "writing RocksDB SST files") from exc
    return crc32c.crc32c


def _mask(crc: int) -> int:
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


def _masked(crcs: np.ndarray) -> np.ndarray:
    """``_mask`` of many CRCs at once (uint32 arithmetic wraps as RocksDB's does)."""
    crcs = crcs.astype(np.uint32)
    return ((crcs >> np.uint32(15)) | (crcs << np.uint32(17))) + np.uint32(_MASK_DELTA)


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def varints(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Varint encodings of many unsigned values: (bytes (n, 10) uint8, lengths (n,))."""
    values = np.asarray(values, dtype=np.uint64)
    groups = np.empty((values.size, 10), dtype=np.uint8)
    rest = values.copy()
    lengths = np.ones(values.size, dtype=np.int64)
    for i in range(10):
        groups[:, i] = (rest & np.uint64(0x7F)).astype(np.uint8)
        rest >>= np.uint64(7)
        more = rest > 0
        groups[more, i] |= 0x80
        lengths += more
    return groups, lengths


def _ragged(parts: list[tuple[np.ndarray, np.ndarray]]) -> bytes:
    """Concatenate per-row byte fields of varying length: [(bytes (n, w), lengths (n,)), ...]."""
    n = parts[0][0].shape[0]
    width = sum(p[0].shape[1] for p in parts)
    matrix = np.zeros((n, width), dtype=np.uint8)
    mask = np.zeros((n, width), dtype=bool)
    col = 0
    cols = np.arange(max(p[0].shape[1] for p in parts))
    for data, lengths in parts:
        w = data.shape[1]
        matrix[:, col : col + w] = data
        mask[:, col : col + w] = cols[None, :w] < lengths[:, None]
        col += w
    return matrix[mask].tobytes()


def _simple_block(entries: list[tuple[bytes, bytes]]) -> bytes:
    """A block of a few entries, restart interval 1 (metaindex and properties blocks)."""
    body, restarts = bytearray(), []
    for key, value in entries:
        restarts.append(len(body))
        body += varint(0) + varint(len(key)) + varint(len(value)) + key + value
    for offset in restarts:
        body += struct.pack("<I", offset)
    body += struct.pack("<I", len(restarts))
    return bytes(body)


class SstFileBuilder:
    """Write one SST file from sorted batches of (keys, vectors); ``finish`` closes it.

    Args:
        path: the file to create.
        value_bytes: bytes per value (``4 * dim``).
        block_bytes: target size of a data block (RocksDB's default is 4 KiB).
        sync: fsync at ``finish``. Not needed before ingestion: RocksDB syncs every file it
            ingests.
    """

    def __init__(
        self,
        path: Path | str,
        value_bytes: int,
        block_bytes: int = DEFAULT_BLOCK_BYTES,
        *,
        sync: bool = False,
    ):
        self.path = Path(path)
        self.sync = sync
        self.value_bytes = int(value_bytes)
        self._crc = _crc32c()
        self._vlen = varint(self.value_bytes)
        self.entry_bytes = 2 + len(self._vlen) + 16 + self.value_bytes
        self.rows_per_block = max(1, block_bytes // self.entry_bytes)
        # Straight to the disk (runtime/direct_io.py): RocksDB moves the file in and syncs it, so
        # page-cache copies would only cost. Data blocks are written by a helper thread (file
        # writes release the GIL), so building
        # the next batch overlaps writing this one; at most one write is in flight.
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="sst-write")
        self._in_flight: Future | None = None
        self._buffers: list[np.ndarray | None] = [None, None]
        self._handle = DirectFile(self.path)
        self._turn = 0
        self.offset = 0
        self.num_entries = 0
        self._index_last_keys: list[np.ndarray] = []
        self._index_offsets: list[np.ndarray] = []
        self._index_sizes: list[np.ndarray] = []
        self._pending_keys: np.ndarray | None = None
        self._pending_values: np.ndarray | None = None

    def _layout(self, rows: int) -> tuple[np.ndarray, int]:
        restarts = np.arange(0, rows, DATA_RESTART_INTERVAL, dtype=np.uint32) * self.entry_bytes
        tail = np.concatenate([restarts, np.array([restarts.size], dtype=np.uint32)])
        return tail.astype("<u4").view(np.uint8), rows * self.entry_bytes + tail.size * 4

    def _write_blocks(
        self, keys: np.ndarray, values: np.ndarray, rows: int, take: np.ndarray | None = None
    ) -> None:
        """Write ``keys.size / rows`` blocks of ``rows`` entries each; with ``take``, entry i's
        value is ``values[take[i]]`` (gathered straight into the blocks, no extra copy)."""
        count = keys.size // rows
        if not count:
            return
        tail, payload = self._layout(rows)
        block = payload + 5
        buf = self._buffer(count * block).reshape(count, block)
        lv = len(self._vlen)
        k0 = 2 + lv

        def field(offset: int, width: int) -> np.ndarray:
            # One void item per entry and field: NumPy copies whole fields, not single bytes.
            return np.ndarray(
                (count, rows),
                dtype=f"V{width}",
                buffer=buf,
                offset=offset,
                strides=(block, self.entry_bytes),
            )

        field(0, k0)[...] = np.frombuffer(b"\x00\x10" + self._vlen, dtype=f"V{k0}")[0]
        field(k0, 8)[...] = keys.view("V8").reshape(count, rows)
        field(k0 + 8, 8)[...] = np.frombuffer(struct.pack("<Q", VALUE_TRAILER), dtype="V8")[0]
        if take is None:
            field(k0 + 16, self.value_bytes)[...] = values.view(f"V{self.value_bytes}").reshape(
                count, rows
            )
        else:  # gathered straight into the blocks; indices are checked by the caller, and
            # mode="clip" avoids a buffered copy
            np.take(
                values.view(f"V{self.value_bytes}").reshape(-1),
                take.reshape(count, rows),
                out=field(k0 + 16, self.value_bytes),
                mode="clip",
            )
        buf[:, rows * self.entry_bytes : payload] = tail
        buf[:, payload] = 0  # no compression
        crc, flat, span = self._crc, memoryview(buf.reshape(-1)), payload + 1
        sums = np.fromiter(
            (crc(flat[o : o + span]) for o in range(0, count * block, block)),
            dtype=np.uint32,
            count=count,
        )
        buf[:, payload + 1 :] = _masked(sums).astype("<u4").view(np.uint8).reshape(count, 4)
        self._wait()
        self._in_flight = self._writer.submit(self._handle.write, memoryview(buf).cast("B"))
        self._index_last_keys.append(keys[rows - 1 :: rows].copy())
        self._index_offsets.append(self.offset + np.arange(count, dtype=np.uint64) * block)
        self._index_sizes.append(np.full(count, payload, dtype=np.uint64))
        self.offset += count * block
        self.num_entries += count * rows

    def add(self, keys: np.ndarray, values: np.ndarray, order: np.ndarray | None = None) -> None:
        """Append rows; ``keys`` are int64 sorted by their little-endian bytes, ``values``
        (n, value_bytes) uint8 or any C-contiguous array of that many bytes per row. With
        ``order``, the i-th key's value is ``values[order[i]]``."""
        keys = np.ascontiguousarray(keys, dtype="<i8")
        values = np.ascontiguousarray(values).view(np.uint8)
        values = values.reshape(values.size // self.value_bytes, self.value_bytes)
        if order is None:
            order = np.arange(keys.size)
        elif order.size != keys.size or (
            order.size and (order.min() < 0 or order.max() >= values.shape[0])
        ):
            raise ValueError("order must hold one valid row of values per key")
        if self._pending_keys is not None:  # complete the pending block first
            need = min(self.rows_per_block - self._pending_keys.size, keys.size)
            head_keys = np.concatenate([self._pending_keys, keys[:need]])
            head_values = np.concatenate([self._pending_values, values[order[:need]]])
            self._pending_keys = self._pending_values = None
            keys, order = keys[need:], order[need:]
            if head_keys.size < self.rows_per_block:
                self._pending_keys, self._pending_values = head_keys, head_values
                return
            self._write_blocks(head_keys, head_values, self.rows_per_block)
        whole = keys.size - keys.size % self.rows_per_block
        self._write_blocks(keys[:whole], values, self.rows_per_block, take=order[:whole])
        if whole < keys.size:
            self._pending_keys = keys[whole:].copy()
            self._pending_values = values[order[whole:]]

    def _buffer(self, nbytes: int) -> np.ndarray:
        """One of two reused block buffers (the other may be being written): fresh large
        arrays would cost a page fault and a zeroed page per 4 KiB every time."""
        self._turn ^= 1
        current = self._buffers[self._turn]
        if current is None or current.size < nbytes:
            current = self._buffers[self._turn] = aligned_empty(nbytes)
        return current[:nbytes]

    def _wait(self) -> None:
        if self._in_flight is not None:
            future, self._in_flight = self._in_flight, None
            future.result()

    @property
    def file_bytes(self) -> int:
        return self.offset

    def finish(self) -> int:
        """Write the last block, the index, properties and footer; returns the entry count."""
        if self._pending_keys is not None:
            rows = self._pending_keys.size
            self._write_blocks(self._pending_keys, self._pending_values, rows)
            self._pending_keys = self._pending_values = None
        self._wait()
        self._writer.shutdown()
        if not self.num_entries:
            self._handle.discard()
            raise ValueError("an SST file needs at least one entry")
        data_size = self.offset
        index = self._index_block()
        index_handle = self._append_block(index)
        props = self._properties(data_size, len(index) + 5)
        props_handle = self._append_block(props)
        meta = _simple_block([(b"rocksdb.properties", props_handle)])
        meta_handle = self._append_block(meta)
        footer = (
            bytes([CHECKSUM_CRC32C])
            + (meta_handle + index_handle).ljust(40, b"\0")
            + struct.pack("<IQ", FORMAT_VERSION, MAGIC)
        )
        self._handle.write(footer)
        self._handle.close(sync=self.sync)
        return self.num_entries

    def abort(self) -> None:
        try:
            self._wait()
        except OSError:
            pass
        self._writer.shutdown()
        self._handle.discard()
        self.path.unlink(missing_ok=True)

    def _append_block(self, body: bytes) -> bytes:
        trailer = bytes([0])
        checksum = _mask(self._crc(body + trailer))
        handle = varint(self.offset) + varint(len(body))
        self._handle.write(body + trailer + struct.pack("<I", checksum))
        self.offset += len(body) + 5
        return handle

    def _index_block(self) -> bytes:
        last = np.concatenate(self._index_last_keys)
        offsets = np.concatenate(self._index_offsets)
        sizes = np.concatenate(self._index_sizes)
        n = last.size
        off_bytes, off_len = varints(offsets)
        size_bytes, size_len = varints(sizes)
        value_len = off_len + size_len
        vl_bytes, vl_len = varints(value_len.astype(np.uint64))
        head = np.zeros((n, 2), dtype=np.uint8)
        head[:, 1] = 16
        key = np.empty((n, 16), dtype=np.uint8)
        key[:, :8] = last.astype("<i8").view(np.uint8).reshape(n, 8)
        key[:, 8:] = np.frombuffer(struct.pack("<Q", VALUE_TRAILER), np.uint8)
        two, sixteen = np.full(n, 2), np.full(n, 16)
        body = _ragged(
            [
                (head, two),
                (vl_bytes, vl_len),
                (key, sixteen),
                (off_bytes, off_len),
                (size_bytes, size_len),
            ]
        )
        entry_len = 2 + vl_len + 16 + value_len
        restarts = np.concatenate([[0], np.cumsum(entry_len)[:-1]]).astype("<u4")
        return body + restarts.tobytes() + struct.pack("<I", n)

    def _properties(self, data_size: int, index_size: int) -> bytes:
        num_blocks = int(sum(a.size for a in self._index_offsets))
        return _properties_block(
            data_size=data_size,
            index_size=index_size,
            num_blocks=num_blocks,
            num_entries=self.num_entries,
            raw_key_size=self.num_entries * 16,
            raw_value_size=self.num_entries * self.value_bytes,
        )


def _properties_block(
    *,
    data_size: int,
    index_size: int,
    num_blocks: int,
    num_entries: int,
    raw_key_size: int,
    raw_value_size: int,
    range_deletions: int = 0,
) -> bytes:
    """The properties block RocksDB's SstFileWriter writes (what ingestion reads and checks).
    ``num_entries`` counts range deletions too, as RocksDB's table builder does."""
    session = "".join(secrets.choice("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(20))
    v = varint
    props = {
        b"rocksdb.block.based.table.index.type": struct.pack("<I", 0),
        b"rocksdb.block.based.table.prefix.filtering": b"0",
        b"rocksdb.block.based.table.whole.key.filtering": b"0",
        b"rocksdb.column.family.id": v(0x7FFFFFFF),
        b"rocksdb.comparator": b"leveldb.BytewiseComparator",
        b"rocksdb.compression": b"NoCompression",
        b"rocksdb.creating.db.identity": b"SST Writer",
        b"rocksdb.creating.host.identity": b"hps",
        b"rocksdb.creating.session.identity": session.encode(),
        b"rocksdb.creation.time": v(0),
        b"rocksdb.data.size": v(data_size),
        b"rocksdb.deleted.keys": v(range_deletions),
        b"rocksdb.external_sst_file.global_seqno": struct.pack("<Q", 0),
        b"rocksdb.external_sst_file.version": struct.pack("<I", 2),
        b"rocksdb.filter.size": v(0),
        b"rocksdb.fixed.key.length": v(0),
        b"rocksdb.format.version": v(FORMAT_VERSION),
        b"rocksdb.index.key.is.user.key": v(0),
        b"rocksdb.index.size": v(index_size),
        b"rocksdb.index.value.is.delta.encoded": v(0),
        b"rocksdb.merge.operands": v(0),
        b"rocksdb.merge.operator": b"nullptr",
        b"rocksdb.num.data.blocks": v(num_blocks),
        b"rocksdb.num.entries": v(num_entries),
        b"rocksdb.num.filter_entries": v(0),
        b"rocksdb.num.range-deletions": v(range_deletions),
        b"rocksdb.oldest.key.time": v(0),
        b"rocksdb.original.file.number": v(1),
        b"rocksdb.prefix.extractor.name": b"nullptr",
        b"rocksdb.property.collectors": b"[]",
        b"rocksdb.raw.key.size": v(raw_key_size),
        b"rocksdb.raw.value.size": v(raw_value_size),
        b"rocksdb.tail.start.offset": v(data_size),
    }
    return _simple_block(sorted(props.items()))


def write_range_deletion_file(path: Path | str) -> Path:
    """An SST file holding nothing but the range tombstone ``EVERY_KEY`` (sequence number 0,
    as ingestion requires): an empty index block, the tombstone in a ``rocksdb.range_del``
    block (restart interval 1, internal key = start + trailer, value = end), properties,
    metaindex and footer."""
    crc = _crc32c()
    out = bytearray()

    def append(body: bytes) -> bytes:
        handle = varint(len(out)) + varint(len(body))
        out.extend(body + b"\0" + struct.pack("<I", _mask(crc(body + b"\0"))))
        return handle

    start, end = EVERY_KEY
    index = struct.pack("<II", 0, 1)  # no entries: one restart point at 0
    index_handle = append(index)
    tombstone_key = start + struct.pack("<Q", RANGE_DELETION_TRAILER)
    range_del_handle = append(_simple_block([(tombstone_key, end)]))
    props_handle = append(
        _properties_block(
            data_size=0,
            index_size=len(index) + 5,
            num_blocks=0,
            num_entries=1,
            raw_key_size=len(tombstone_key),
            raw_value_size=len(end),
            range_deletions=1,
        )
    )
    meta_handle = append(
        _simple_block(
            [(b"rocksdb.properties", props_handle), (b"rocksdb.range_del", range_del_handle)]
        )
    )
    out.extend(
        bytes([CHECKSUM_CRC32C])
        + (meta_handle + index_handle).ljust(40, b"\0")
        + struct.pack("<IQ", FORMAT_VERSION, MAGIC)
    )
    path = Path(path)
    with open(path, "wb") as handle:
        handle.write(out)
        handle.flush()
        os.fsync(handle.fileno())
    return path


def bytewise_order_key(keys: np.ndarray) -> np.ndarray:
    """A uint64 whose numeric order is the bytewise order of the keys' little-endian bytes."""
    return np.ascontiguousarray(keys, dtype="<i8").view("<u8").byteswap()
