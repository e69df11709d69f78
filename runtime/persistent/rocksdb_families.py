"""Opening RocksDB databases in HPS's layout, and the bookkeeping our tools add to them.

HPS's layout (HugeCTR v24.06 rocksdb_backend): one column family per table named by its storage
tag ``hps_et.<model>.<table>``; key = raw little-endian key bytes (8 for int64, 4 for uint32);
value = raw float32 vector bytes. HPS opens every family it finds (plus ``default``) and reads
only the tagged ones.

Our additions, in the ``default`` family, which HPS ignores:

- one record per table under ``hps_cli/table/<tag>`` holding JSON ``{"checksum", "num_keys",
  "dim", "complete"}``. It lets the runtime skip reloading a table the database already holds
  unchanged, and tells a finished load (``complete: true``) from one that was interrupted
  (rocksdb_replace.py writes ``complete: false`` before it touches the family);
- the update journal of each table under ``hps_cli/update/<tag>/<raw key>``: ``+`` and the
  vector for an insert, ``-`` for a remove, written in the same write batch as the change of
  the family itself (rocksdb_tier.py). Start-up replays it over what it loads from the table
  files, so that updates survive restarts; replacing the family's content clears it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DependencyMissingError, InvalidInputError, NotFoundError, OutputExistsError

META_PREFIX = b"hps_cli/table/"
JOURNAL_PREFIX = b"hps_cli/update/"
JOURNAL_INSERT = b"+"
JOURNAL_REMOVE = b"-"


def rocksdict_module():
    """``rocksdict``, imported on first use (importing the runtime must not load it)."""
    try:
        import rocksdict
    except ImportError as exc:  # pragma: no cover - rocksdict is a core dependency
        raise DependencyMissingError("rocksdict", "all", "the RocksDB tier") from exc
    return rocksdict


def raw_options(num_threads: int | None = None, *, create: bool = False, point_lookup: bool = True):
    """Options as HPS sets them: raw bytes, point-lookup tuning, parallel background work."""
    rd = rocksdict_module()
    opt = rd.Options(raw_mode=True)
    if create:
        opt.create_if_missing(True)
        opt.create_missing_column_families(True)
    if point_lookup:
        opt.optimize_for_point_lookup(8)  # MiB of block cache, HPS's value
    if num_threads:
        opt.increase_parallelism(int(num_threads))
    return opt


def list_families(path: Path | str) -> list[str]:
    """Column family names of an existing database ([] when there is none)."""
    rd = rocksdict_module()
    path = Path(path)
    if not (path / "CURRENT").exists():
        return []
    return list(rd.Rdict.list_cf(str(path), rd.Options(raw_mode=True)))


def open_db(
    path: Path | str,
    *,
    read_only: bool = False,
    create: bool = False,
    num_threads: int | None = None,
):
    """Open a database with all its column families.

    Raises:
        NotFoundError: the database does not exist and ``create`` is false (or read-only).
        OutputExistsError: another process holds the database's lock.
    """
    rd = rocksdict_module()
    path = Path(path)
    exists = (path / "CURRENT").exists()
    if not exists and (read_only or not create):
        raise NotFoundError(
            "no RocksDB database here",
            location=str(path),
            hint="check persistent_db.path" if read_only else None,
        )
    families = {name: raw_options(num_threads) for name in list_families(path) if name != "default"}
    options = raw_options(num_threads, create=create)
    kwargs = {"column_families": families} if families else {}
    if read_only:
        kwargs["access_type"] = rd.AccessType.read_only()
    try:
        return rd.Rdict(str(path), options, **kwargs)
    except Exception as exc:  # rocksdict raises plain Exception subclasses with RocksDB's text
        text = str(exc)
        if "lock" in text.lower():
            raise OutputExistsError(
                "the RocksDB database is locked by another process",
                location=str(path),
                hint="stop the other process, or open it read-only",
            ) from None
        if not os.access(path, os.R_OK):
            raise NotFoundError(
                f"cannot read the RocksDB database: {text}", location=str(path)
            ) from None
        raise InvalidInputError(
            f"cannot open the RocksDB database: {text}", location=str(path)
        ) from None


def family(db, tag: str, *, create: bool = False, num_threads: int | None = None):
    """The column family of a table (created when asked and missing)."""
    try:
        return db.get_column_family(tag)
    except Exception:
        if not create:
            raise NotFoundError(
                f"the database has no column family '{tag}'", location=db.path()
            ) from None
        return db.create_column_family(tag, raw_options(num_threads))


def record_key(tag: str) -> bytes:
    return META_PREFIX + tag.encode()


def encode_record(record: dict) -> bytes:
    return json.dumps(record, sort_keys=True).encode()


def read_table_record(db, tag: str) -> dict | None:
    """Our bookkeeping record of a table, or None."""
    raw = db.get(record_key(tag))
    if raw is None:
        return None
    try:
        return json.loads(raw.decode())
    except ValueError:
        return None


def write_table_record(db, tag: str, record: dict) -> None:
    db.put(record_key(tag), encode_record(record))


def journal_range(tag: str) -> tuple[bytes, bytes]:
    """[begin, end) of a table's journal keys in the ``default`` family (tags hold no '/')."""
    prefix = JOURNAL_PREFIX + tag.encode() + b"/"
    return prefix, prefix[:-1] + b"0"  # '0' follows '/'


@dataclass(frozen=True)
class Journal:
    """A table's journal: the keys whose last update was an insert (with their vectors) and
    those whose last update was a remove."""

    inserted: np.ndarray  # int64 keys
    vectors: np.ndarray  # float32 (n, dim)
    removed: np.ndarray  # int64 keys

    def __len__(self) -> int:
        return self.inserted.size + self.removed.size


def read_journal(db, tag: str, dim: int, key_width: int) -> Journal:
    """Every journal entry of a table (in key-byte order)."""
    begin, end = journal_range(tag)
    inserted, vectors, removed = [], [], []
    it = db.iter()
    try:
        it.seek(begin)
        while it.valid():
            key = it.key()
            if key >= end:
                break
            raw, value = key[len(begin) :], it.value()
            if value[:1] == JOURNAL_INSERT and len(value) == 1 + 4 * dim:
                inserted.append(raw)
                vectors.append(value[1:])
            elif value[:1] == JOURNAL_REMOVE:
                removed.append(raw)
            it.next()
    finally:
        del it
    dtype = "<i8" if key_width == 64 else "<u4"

    def keys(raws: list[bytes]) -> np.ndarray:
        good = [r for r in raws if len(r) == key_width // 8]
        return np.frombuffer(b"".join(good), dtype=dtype).astype(np.int64)

    return Journal(
        keys(inserted),
        np.frombuffer(b"".join(vectors), dtype="<f4").reshape(len(vectors), dim).copy(),
        keys(removed),
    )


def journal_keys(db, tag: str) -> list[bytes]:
    """The keys of a table's journal entries in the ``default`` family (to delete them: a range
    delete is refused by a database with a row cache)."""
    begin, end = journal_range(tag)
    found = []
    it = db.iter()
    try:
        it.seek(begin)
        while it.valid() and it.key() < end:
            found.append(it.key())
            it.next()
    finally:
        del it
    return found


def journal_is_empty(db, tag: str) -> bool:
    begin, end = journal_range(tag)
    it = db.iter()
    try:
        it.seek(begin)
        return not (it.valid() and it.key() < end)
    finally:
        del it


@dataclass(frozen=True)
class FamilyState:
    """What a database holds for one table: whether its family exists, our record of it, and
    whether the family has no entries at all (None when it does not exist)."""

    tag: str
    exists: bool
    record: dict | None
    empty: bool | None

    @property
    def complete(self) -> bool:
        return bool(self.record and self.record.get("complete"))

    @property
    def interrupted(self) -> bool:
        """A load of this family started and never finished (the family holds the old or the
        new table, or nothing when it was being created)."""
        return self.record is not None and not self.complete

    @property
    def holds_a_table(self) -> bool:
        """False when the family is missing, or is an empty leftover of an interrupted load:
        then there is nothing in it to lose or to serve."""
        return self.exists and not (self.empty and not self.complete)

    def holds_table_file(self, checksum: str, dim: int) -> bool:
        """True when the family holds exactly the table file with this checksum and dim (by
        our record: a complete load of it, and no load started since)."""
        record = self.record or {}
        return (
            self.holds_a_table
            and self.complete
            and record.get("checksum") == checksum
            and record.get("dim") == dim
        )


def family_state(db, tag: str, families: set[str] | None = None) -> FamilyState:
    """The state of table ``tag`` in an open database (``families``: its family names)."""
    names = families if families is not None else set(list_families(db.path()))
    record = read_table_record(db, tag)
    if tag not in names:
        return FamilyState(tag, False, record, None)
    return FamilyState(tag, True, record, family_is_empty(db, tag))


def family_is_empty(db, tag: str) -> bool:
    it = db.get_column_family(tag).iter()
    try:
        it.seek_to_first()
        return not it.valid()
    finally:
        del it
