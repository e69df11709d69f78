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
  when all of them are built they replace the family's content in one ingestion
  (rocksdb_replace.py; the family keeps HPS's name throughout). A failed build leaves the
  database untouched; a kill leaves the old table or the new one in the family, and an
  incomplete record, so the next start reloads.
- Runtimes of one process share the open database (rocksdb_shared.py). When one of them
  replaces a family that another is serving, the other keeps reading the version it loaded
  through a RocksDB snapshot taken just before the replacement (its table is *pinned*: updates
  through it are refused), until it closes; a runtime that opens the table afterwards reads
  the new version.
- ``insert`` and ``remove`` also write the table's update journal (rocksdb_families.py) in the
  same write batch; start-up replays it over the volatile tier and the caches it fills from the
  table files, so updates outlive the process.
- A ``read_only`` instance notices when another process changes the database (a new MANIFEST
  state: a replaced family, a flush, a compaction): ``reopen_if_changed`` (run every few
  seconds by rocksdb_watch.py) opens it again, moves every table onto the new instance and logs
  which families' records changed. A family that disappeared or no longer fits keeps the old
  instance serving, with an error in the log.
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
import threading
import weakref
from pathlib import Path
from typing import Callable

import numpy as np

from ..atomic import sweep_stale, temp_sibling
from ..errors import InvalidInputError, NotFoundError, OutputExistsError
from ..raw_keys import key_bytes, order_key, split_bytes
from ..rwlock import RWLock
from ..table.reader import TableReader
from .rocksdb_bulk import first_value_size
from .rocksdb_families import (
    JOURNAL_INSERT,
    JOURNAL_REMOVE,
    FamilyState,
    Journal,
    family_state,
    journal_range,
    list_families,
    read_journal,
    read_table_record,
    rocksdict_module,
)
from .rocksdb_replace import replace_family

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
        # Tables that another runtime's replacement of their family pinned to the old version.
        self._pinned: weakref.WeakSet[RocksDbTable] = weakref.WeakSet()
        self._state = self.manifest_state()
        self.db = self._open()
        if not read_only:  # holding the lock: leftovers of a dead loader beside it can go
            sweep_stale(self.path)

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

    def manifest_state(self) -> tuple:
        """What changes whenever another process changes the database's structure: the
        MANIFEST that CURRENT names, its size and its modification time."""
        try:
            name = (self.path / "CURRENT").read_text().strip()
            st = os.stat(self.path / name)
        except OSError:
            return ()
        return name, st.st_size, st.st_mtime_ns

    def reopen_if_changed(self) -> list[str] | None:
        """Read-only: when the database changed since it was opened, open it again and move
        every table onto the new instance. Returns the tags whose record changed (None when
        nothing happened)."""
        state = self.manifest_state()
        if not self.read_only or state == self._state or self.db is None:
            return None
        with self._lock:
            if state == self._state or self.db is None:  # another watcher of the store did it
                return None
            self._state = state
            try:
                new = self._open()
            except Exception as exc:  # noqa: BLE001 - keep serving what is open
                log.error("read-only RocksDB %s changed and cannot be reopened: %s", self.path, exc)
                return None
            problems = self._misfits(new)
            if problems:
                new.close()
                log.error(
                    "read-only RocksDB %s changed underneath: %s; still serving the state opened "
                    "before (restart to pick up the change)",
                    self.path,
                    "; ".join(problems),
                )
                return None
            changed = [
                tag
                for tag in sorted(self._tables)
                if read_table_record(self.db, tag) != read_table_record(new, tag)
            ]
            for tag, table in self._tables.items():
                table.move_to(new.get_column_family(tag), new.get_column_family_handle(tag))
            old, self.db = self.db, new
            old.close()
        log.warning(
            "read-only RocksDB %s changed underneath and was reopened; families with a new "
            "record: %s (the volatile tier and the caches keep what start-up loaded into "
            "them: restart to reload those)",
            self.path,
            ", ".join(changed) or "none",
        )
        return changed

    def _misfits(self, new) -> list[str]:
        """Why the tables served now cannot move to ``new`` (a family gone or reshaped)."""
        problems = []
        families = set(list_families(self.path))
        for tag, table in self._tables.items():
            if tag not in families or family_state(new, tag, families).empty:
                problems.append(f"family '{tag}' is gone or empty")
                continue
            sizes = first_value_size(new, tag)
            if sizes is not None and sizes != (self.key_width // 8, 4 * table.dim):
                problems.append(f"family '{tag}' now holds {sizes[0]}/{sizes[1]}-byte entries")
        return problems

    def close(self) -> None:
        with self._lock:
            for table in [*self._tables.values(), *self._pinned]:
                # family handles and snapshots keep the database (and its lock) alive
                table.detach()
            self._tables.clear()
            self._pinned.clear()
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

    def state(self, tag: str) -> FamilyState:
        return family_state(self.db, tag, set(self.families()))

    def journal(self, tag: str, dim: int) -> Journal:
        """The updates of a table since it was loaded (see rocksdb_families.py)."""
        return read_journal(self.db, tag, dim, self.key_width)

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

    def load_table(
        self,
        tag: str,
        reader: TableReader,
        checksum: str,
        *,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """(Re)build family ``tag`` from a table atomically (see the module doc); returns keys.
        The staging folder beside the database carries this process's name; a later load
        removes it if this process dies before it does (atomic.sweep_stale)."""
        if self.read_only:
            raise InvalidInputError("the RocksDB database is read-only", location=str(self.path))
        sweep_stale(self.path)
        staging = temp_sibling(self.path)
        staging.mkdir()
        try:
            files, num_keys = self._build_files(reader, staging, progress)
            self._swap_in(
                tag,
                files,
                {"checksum": checksum, "num_keys": num_keys, "dim": reader.dim},
                staging,
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

    def _swap_in(self, tag: str, files: list[str], record: dict, staging: Path) -> None:
        with self._lock:
            serving = self._tables.pop(tag, None)
            if serving is not None:  # another runtime of the process reads this family
                serving.pin()
                self._pinned.add(serving)
            replace_family(
                self.db,
                tag,
                files,
                record,
                staging=staging,
                family_options=self.family_options(),
            )


class RocksDbTable:
    """The persistent tier of one table: batched multi-get, write batches, deletes."""

    def __init__(self, store: RocksDbStore, tag: str, dim: int, handle, write_handle):
        self.store = store
        self.tag = tag
        self.dim = int(dim)
        self.key_width = store.key_width
        self._cf = handle
        self._cf_handle = write_handle  # what WriteBatch.set_default_column_family takes
        self._moving = RWLock()  # gets share it; move_to takes it alone
        self._snapshot = None  # pinned: the family as it was before another runtime replaced it

    def move_to(self, handle, write_handle) -> None:
        """Serve from another instance of the database (a reopened read-only one) from now
        on; waits for the gets in flight, which hold the old instance."""
        with self._moving.write():
            self._cf, self._cf_handle = handle, write_handle

    @property
    def read_only(self) -> bool:
        """Whether the database was opened read-only (then insert and remove must not come)."""
        return self.store.read_only

    def pin(self) -> None:
        """Read the family as it is now from here on (a snapshot), whatever replaces its
        content later; updates through this table are refused from now on."""
        with self._moving.write():
            self._snapshot = self._cf.snapshot()

    @property
    def pinned(self) -> bool:
        return self._snapshot is not None

    def detach(self) -> None:
        self._cf = self._cf_handle = self._snapshot = None

    def get(self, keys: np.ndarray, out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Vectors of ``keys`` (int64): returns ``(out, hit)``; miss rows of ``out`` untouched."""
        with self._moving.read():
            return self._get(keys, out)

    def _get(self, keys: np.ndarray, out: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
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
        if self._snapshot is not None:
            return [_snapshot_get(self._snapshot, key) for key in keys]
        return list(map(self._cf.get, keys))

    def insert(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        """Upsert rows; each batch also journals them (one write: both or neither)."""
        self._check_writable()
        rd = rocksdict_module()
        raw = np.ascontiguousarray(vectors, dtype="<f4").tobytes()
        value_bytes = 4 * self.dim
        step = self.store.max_batch_size
        kl = key_bytes(keys, self.key_width)
        journal = journal_range(self.tag)[0]
        default = self.store.db.get_column_family_handle("default")
        for first in range(0, len(kl), step):
            batch = rd.WriteBatch(raw_mode=True)
            batch.set_default_column_family(self._cf_handle)
            for i in range(first, min(first + step, len(kl))):
                value = raw[i * value_bytes : (i + 1) * value_bytes]
                batch.put(kl[i], value)
                batch.put(journal + kl[i], JOURNAL_INSERT + value, default)
            self.store.db.write(batch)

    def remove(self, keys: np.ndarray) -> None:
        """Delete rows; each batch also journals the removals."""
        self._check_writable()
        rd = rocksdict_module()
        step = self.store.max_batch_size
        kl = key_bytes(keys, self.key_width)
        journal = journal_range(self.tag)[0]
        default = self.store.db.get_column_family_handle("default")
        for first in range(0, len(kl), step):
            batch = rd.WriteBatch(raw_mode=True)
            batch.set_default_column_family(self._cf_handle)
            for key in kl[first : first + step]:
                batch.delete(key)
                batch.put(journal + key, JOURNAL_REMOVE, default)
            self.store.db.write(batch)

    def _check_writable(self) -> None:
        if self._snapshot is not None:
            raise InvalidInputError(
                f"column family '{self.tag}' was reloaded by another runtime of this process: "
                "this one serves the version it loaded and takes no updates",
                location=str(self.store.path),
                hint="reload this runtime (its model) to serve and update the new version",
            )


def _snapshot_get(snapshot, key: bytes):
    """A key's value in a snapshot, None when it holds none (rocksdict's snapshots have no
    ``get``; a missing key raises a plain Exception saying so)."""
    try:
        return snapshot[key]
    except Exception as exc:  # noqa: BLE001 - told apart by RocksDB's text below
        if str(exc) == "key not found":
            return None
        raise
