"""Opening RocksDB databases in HPS's layout, and the bookkeeping our tools add to them.

HPS's layout (HugeCTR v24.06 rocksdb_backend): one column family per table named by its storage
tag ``hps_et.<model>.<table>``; key = raw little-endian key bytes (8 for int64, 4 for uint32);
value = raw float32 vector bytes. HPS opens every family it finds (plus ``default``) and reads
only the tagged ones.

Our addition: in the ``default`` family, one record per table under ``hps_cli/table/<tag>``
holding JSON ``{"checksum", "num_keys", "dim", "complete"}``. It lets the runtime skip reloading
a table the database already holds unchanged, and lets ``convert`` tell a finished bulk load
from an interrupted one. HPS ignores it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import DependencyMissingError, InvalidInputError, NotFoundError, OutputExistsError

META_PREFIX = b"hps_cli/table/"


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


def read_table_record(db, tag: str) -> dict | None:
    """Our bookkeeping record of a table, or None."""
    raw = db.get(META_PREFIX + tag.encode())
    if raw is None:
        return None
    try:
        return json.loads(raw.decode())
    except ValueError:
        return None


def write_table_record(db, tag: str, record: dict) -> None:
    db.put(META_PREFIX + tag.encode(), json.dumps(record, sort_keys=True).encode())


def delete_table_record(db, tag: str) -> None:
    db.delete(META_PREFIX + tag.encode())
