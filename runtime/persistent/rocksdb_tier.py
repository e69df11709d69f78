"""The persistent tier: RocksDB (through rocksdict) in HPS's layout, tuned for point lookups.

Layout (HPS's, see rocksdb_families.py): one column family per table named
``hps_et.<model>.<table>``, key = raw little-endian key bytes (8, or 4 for uint32 keys), value =
raw float32 vector bytes; plus our bookkeeping record per table in the ``default`` family.

What differs from HPS:

- Start-up does not rewrite a table the database already holds: when the table's record says
  ``complete`` with the table file's checksum and dim, the family is served as is (HPS rewrites
  every key at every start). ``read_only`` databases are never written; a missing family is an
  error at start-up, not a stream of defaults.
- A (re)load is atomic per family: the rows are written as SST files into a hidden folder beside
  the database (sorted, deduplicated: the last row of a repeated key wins, as in HPS), and only
  when all of them are built the old family is dropped, a new one is created, the files are
  ingested in one call and the record is written (``complete`` last). A failed build leaves the
  database untouched; an interrupted swap leaves an incomplete record, so the next start reloads.
- Options for lookups (measured in benchmarks/bench_runtime_cpu.py): a row cache (what makes
  the difference: a get that hits it costs about 1.5 µs through rocksdict, one that reads a
  block about 4-6 µs), a shared LRU block cache, bloom filters and a hashed data-block index in
  the files we write, no compression (float vectors do not compress), mmap reads; keys are
  converted with one ``tobytes()`` and sliced, values joined with one ``b"".join`` and one
  ``np.frombuffer``. rocksdict holds the GIL during gets, so lookups are not spread over
  threads (measured: no gain).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import (
    ConfigError,
    InvalidInputError,
    NotFoundError,
    OutputExistsError,
)
from ..raw_keys import key_bytes, order_key, split_bytes
from ..table.reader import TableReader
from .rocksdb_families import (
    list_families,
    read_table_record,
    rocksdict_module,
    write_table_record,
)

log = logging.getLogger("hps_cli.runtime.rocksdb")

DEFAULT_BLOCK_CACHE_BYTES = 256 << 20
MIN_ROW_CACHE_BYTES = 64 << 20
_SST_FILE_BYTES = 256 << 20
_LOAD_ROWS = 1 << 16


def auto_row_cache_bytes(table_bytes: int) -> int:
    """The default row cache: room for every row of the tables (1.5x their raw bytes: an entry
    carries its key, a handle and allocator overhead besides the value), at most
    1/8 of the machine's memory. It fills only with rows actually looked up."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        memory = 8 << 30
    return int(max(MIN_ROW_CACHE_BYTES, min(1.5 * table_bytes, memory // 8)))


class RocksDbStore:
    """One RocksDB database holding the tables of every model (one column family each).

    Args:
        path: the database folder.
        read_only: open with OpenForReadOnly and never write.
        num_threads: RocksDB background threads (``persistent_db.num_threads``).
        max_batch_size: keys per multi-get and per write batch.
        key_width: 64 for int64 keys, 32 for uint32 keys (``supportlonglong: false``).
        block_cache_bytes / row_cache_bytes: caches shared by all families (0 disables the
            row cache).

    Raises:
        NotFoundError: the database is missing and ``read_only`` is set.
        OutputExistsError: another process holds the database's lock.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        read_only: bool = False,
        num_threads: int = 16,
        max_batch_size: int = 65536,
        key_width: int = 64,
        block_cache_bytes: int = DEFAULT_BLOCK_CACHE_BYTES,
        row_cache_bytes: int = MIN_ROW_CACHE_BYTES,
    ):
        rd = rocksdict_module()
        self.path = Path(path)
        self.read_only = read_only
        self.num_threads = max(1, int(num_threads))
        self.max_batch_size = max(1, int(max_batch_size))
        self.key_width = key_width
        self._block_cache = rd.Cache(int(block_cache_bytes))
        self._row_cache = rd.Cache(int(row_cache_bytes)) if row_cache_bytes else None
        self._lock = threading.Lock()  # guards family creation and drops
        self._tables: dict[str, RocksDbTable] = {}
        self.db = self._open()

    # ------------------------------------------------------------------ options and opening

    def family_options(self):
        """Column-family options: block cache, bloom filter, hashed block index, no compression."""
        rd = rocksdict_module()
        opt = rd.Options(raw_mode=True)
        table = rd.BlockBasedOptions()
        table.set_block_cache(self._block_cache)
        table.set_bloom_filter(10, False)
        table.set_data_block_index_type(rd.DataBlockIndexType.binary_and_hash())
        table.set_data_block_hash_ratio(0.75)
        table.set_format_version(5)
        opt.set_block_based_table_factory(table)
        opt.set_compression_type(rd.DBCompressionType.none())
        return opt

    def _db_options(self, create: bool):
        opt = self.family_options()
        if create:
            opt.create_if_missing(True)
            opt.create_missing_column_families(True)
        opt.increase_parallelism(self.num_threads)
        opt.set_allow_mmap_reads(True)
        if self._row_cache is not None:
            opt.set_row_cache(self._row_cache)
        return opt

    def _open(self):
        rd = rocksdict_module()
        exists = (self.path / "CURRENT").exists()
        if not exists and self.read_only:
            raise NotFoundError(
                "no RocksDB database here (persistent_db.read_only is set)",
                location=str(self.path),
                hint="check persistent_db.path",
            )
        families = {name: self.family_options() for name in list_families(self.path)}
        families.setdefault("default", self.family_options())
        kwargs = {"column_families": families}
        if self.read_only:
            kwargs["access_type"] = rd.AccessType.read_only()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return rd.Rdict(str(self.path), self._db_options(create=not self.read_only), **kwargs)
        except Exception as exc:  # rocksdict raises plain Exceptions carrying RocksDB's text
            text = str(exc)
            if "lock" in text.lower():
                raise OutputExistsError(
                    "the RocksDB database is locked by another process",
                    location=str(self.path),
                    hint="stop the other process, or set persistent_db.read_only",
                ) from None
            if exists and not os.access(self.path, os.R_OK):
                raise NotFoundError(
                    f"cannot read the RocksDB database: {text}", location=str(self.path)
                ) from None
            raise InvalidInputError(
                f"cannot open the RocksDB database: {text}", location=str(self.path)
            ) from None

    def close(self) -> None:
        with self._lock:
            for table in self._tables.values():
                table.detach()  # family handles keep the database (and its lock) alive
            self._tables.clear()
            if self.db is not None:
                try:
                    self.db.close()
                finally:
                    self.db = None

    # ------------------------------------------------------------------ tables

    def families(self) -> list[str]:
        return list_families(self.path)

    def record(self, tag: str) -> dict | None:
        return read_table_record(self.db, tag)

    def table(self, tag: str, dim: int) -> "RocksDbTable":
        """The tier object of one table (its family must exist)."""
        with self._lock:
            table = self._tables.get(tag)
            if table is None:
                try:
                    handle = self.db.get_column_family(tag)
                except Exception:
                    raise NotFoundError(
                        f"the database has no column family '{tag}'", location=str(self.path)
                    ) from None
                table = RocksDbTable(self, tag, dim, handle, self.db.get_column_family_handle(tag))
                self._tables[tag] = table
            return table

    def first_entry_sizes(self, tag: str) -> tuple[int, int] | None:
        """(key bytes, value bytes) of a family's first entry, or None when it is empty."""
        handle = self.db.get_column_family(tag)
        it = handle.iter()
        try:
            it.seek_to_first()
            if not it.valid():
                return None
            return len(it.key()), len(it.value())
        finally:
            del it

    def check_table(self, tag: str, dim: int) -> None:
        """Raise when an existing family's entries do not fit ``dim`` and the key width."""
        sizes = self.first_entry_sizes(tag)
        if sizes is None:
            return
        key_size, value_size = sizes
        if key_size != self.key_width // 8:
            raise ConfigError(
                f"column family '{tag}' stores {key_size}-byte keys, but the config uses "
                f"{self.key_width // 8}-byte keys",
                location=str(self.path),
                hint="supportlonglong must match the database (true: 8-byte keys, false: 4)",
            )
        if value_size != 4 * dim:
            raise ConfigError(
                f"column family '{tag}' stores vectors of {value_size // 4} floats, the config "
                f"says {dim}",
                location=str(self.path),
                hint="fix embedding_vecsize_per_table, or point persistent_db.path elsewhere",
            )

    def is_current(self, tag: str, checksum: str, dim: int) -> bool:
        """True when the family holds exactly the table with this checksum (per our record)."""
        if tag not in self.families():
            return False
        record = self.record(tag)
        return bool(
            record
            and record.get("complete")
            and record.get("checksum") == checksum
            and record.get("dim") == dim
        )

    def load_table(
        self,
        tag: str,
        reader: TableReader,
        checksum: str,
        *,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """(Re)build family ``tag`` from a table atomically (see the module doc); returns keys."""
        if self.read_only:
            raise InvalidInputError("the RocksDB database is read-only", location=str(self.path))
        staging = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.load-", dir=self.path.parent))
        try:
            files, num_keys = self._build_files(reader, staging, progress)
            self._swap_in(
                tag, files, {"checksum": checksum, "num_keys": num_keys, "dim": reader.dim}
            )
            return num_keys
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _build_files(
        self, reader: TableReader, staging: Path, progress: Callable[[int], None] | None
    ) -> tuple[list[str], int]:
        rd = rocksdict_module()
        keys = reader.keys()
        order = order_key(keys, self.key_width)
        by_key = np.argsort(order, kind="stable")
        ordered = order[by_key]
        last = np.ones(by_key.size, dtype=bool)
        last[:-1] = ordered[1:] != ordered[:-1]  # the last row of a repeated key wins
        by_key = by_key[last]
        del order, ordered, last
        vectors = reader.vectors()
        value_bytes = 4 * reader.dim
        files: list[str] = []
        writer = None
        written = 0
        try:
            for first in range(0, by_key.size, _LOAD_ROWS):
                rows = by_key[first : first + _LOAD_ROWS]
                ascending = np.sort(rows)  # gather in file order, then put back in key order
                where = np.searchsorted(ascending, rows)
                chunk_keys = np.take(keys, ascending)[where]
                chunk_vectors = np.take(vectors, ascending, axis=0)[where]
                kl = key_bytes(chunk_keys, self.key_width)
                values = split_bytes(
                    np.ascontiguousarray(chunk_vectors, dtype="<f4").tobytes(), value_bytes
                )
                if writer is None:
                    writer = rd.SstFileWriter(self.family_options())
                    files.append(str(staging / f"{len(files):05d}.sst"))
                    writer.open(files[-1])
                    written = 0
                for key, value in zip(kl, values):
                    writer[key] = value
                written += len(kl) * (value_bytes + len(kl[0]))
                if progress:
                    progress(rows.size * (8 + value_bytes))
                if written >= _SST_FILE_BYTES:
                    writer.finish()
                    writer = None
            if writer is not None:
                writer.finish()
        finally:
            del vectors, keys
        return files, int(by_key.size)

    def _swap_in(self, tag: str, files: list[str], record: dict) -> None:
        rd = rocksdict_module()
        with self._lock:
            # A runtime still serving the old family keeps reading it through its handle
            # (RocksDB keeps a dropped family readable while a handle holds it): a reload by
            # another runtime of the process swaps versions without mixing them.
            self._tables.pop(tag, None)
            write_table_record(self.db, tag, {**record, "complete": False})
            if tag in self.families():
                self.db.drop_column_family(tag)
            handle = self.db.create_column_family(tag, self.family_options())
            if files:
                options = rd.IngestExternalFileOptions()
                options.set_move_files(True)
                handle.ingest_external_file(files, options)
            write_table_record(self.db, tag, {**record, "complete": True})
            self.db.flush()


class RocksDbTable:
    """The persistent tier of one table: batched multi-get, write batches, deletes."""

    def __init__(self, store: RocksDbStore, tag: str, dim: int, handle, write_handle):
        self.store = store
        self.tag = tag
        self.dim = int(dim)
        self.key_width = store.key_width
        self._cf = handle
        self._cf_handle = write_handle  # what WriteBatch.set_default_column_family takes

    @property
    def read_only(self) -> bool:
        """Whether the database was opened read-only (then insert and remove must not come)."""
        return self.store.read_only

    def detach(self) -> None:
        self._cf = self._cf_handle = None

    def get(self, keys: np.ndarray, out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Vectors of ``keys`` (int64): returns ``(out, hit)``; miss rows of ``out`` untouched."""
        n = keys.size
        hit = np.zeros(n, dtype=bool)
        step = self.store.max_batch_size
        for first in range(0, n, step):
            part = keys[first : first + step]
            values = self._get_values(key_bytes(part, self.key_width))
            try:
                data = bytearray().join(values)  # the common case: every key is there
                index = slice(first, first + part.size)
                count = part.size
            except TypeError:  # some are None
                found = [i for i, v in enumerate(values) if v is not None]
                if not found:
                    continue
                data = bytearray().join([values[i] for i in found])
                index = np.asarray(found, dtype=np.int64) + first
                count = len(found)
            if len(data) != count * 4 * self.dim:
                raise InvalidInputError(
                    f"column family '{self.tag}' holds values that are not {self.dim} floats",
                    location=str(self.store.path),
                    hint="the database was written for another embedding_vecsize_per_table",
                )
            rows = np.frombuffer(data, dtype="<f4").reshape(count, self.dim)
            if out is None and count == n:  # one chunk, all found: the joined buffer is the result
                out = rows
            else:
                if out is None:
                    out = np.zeros((n, self.dim), dtype=np.float32)
                out[index] = rows
            hit[index] = True
        if out is None:
            out = np.zeros((n, self.dim), dtype=np.float32)
        return out, hit

    def _get_values(self, keys: tuple[bytes, ...]) -> list:
        # Single gets use RocksDB's row cache; the batched MultiGet does not (measured: with a
        # warm row cache single gets are 2.4-2.8x a MultiGet on default options, see
        # docs/benchmarks.md; a big block cache alone gives 1.2-1.3x).
        return list(map(self._cf.get, keys))

    def insert(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        rd = rocksdict_module()
        raw = np.ascontiguousarray(vectors, dtype="<f4").tobytes()
        value_bytes = 4 * self.dim
        step = self.store.max_batch_size
        kl = key_bytes(keys, self.key_width)
        for first in range(0, len(kl), step):
            batch = rd.WriteBatch(raw_mode=True)
            batch.set_default_column_family(self._cf_handle)
            for i in range(first, min(first + step, len(kl))):
                batch.put(kl[i], raw[i * value_bytes : (i + 1) * value_bytes])
            self.store.db.write(batch)

    def remove(self, keys: np.ndarray) -> None:
        rd = rocksdict_module()
        step = self.store.max_batch_size
        kl = key_bytes(keys, self.key_width)
        for first in range(0, len(kl), step):
            batch = rd.WriteBatch(raw_mode=True)
            batch.set_default_column_family(self._cf_handle)
            for key in kl[first : first + step]:
                batch.delete(key)
            self.store.db.write(batch)
