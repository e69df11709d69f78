"""A RocksDB in HPS's layout as input ("back out" into HPS tables or .npz).

Tables are the column families named ``hps_et.<model>.<table>``; keys are raw little-endian
int64 (8 bytes) or uint32 (4 bytes, widened), values raw float32 vectors of one size. The row
count comes from our bookkeeping record when it says the load completed, else from counting the
keys. The database is opened read-only (no lock is taken, a running writer is not disturbed).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..runtime.errors import InvalidInputError, NotFoundError
from ..runtime.persistent.rocksdb_bulk import family_rows, first_value_size, iter_family
from ..runtime.persistent.rocksdb_families import (
    family_state,
    journal_is_empty,
    list_families,
    open_db,
    read_table_record,
)
from ..runtime.storage_names import parse_storage_tag
from .base import Chunk, SkippedFile, SourceTable
from .options import OpenOptions

FORMAT = "rocksdb"


def looks_like(path: Path) -> bool:
    return (
        path.is_dir()
        and (path / "CURRENT").exists()
        and any(p.name.startswith("MANIFEST-") for p in path.iterdir())
    )


class RocksDbTable(SourceTable):
    format = FORMAT

    def __init__(self, db, tag: str, name: str, path: Path):
        sizes = first_value_size(db, tag)
        if sizes is None:
            raise InvalidInputError(f"column family '{tag}' is empty", location=str(path))
        key_bytes, value_bytes = sizes
        if key_bytes not in (8, 4) or value_bytes % 4 or not value_bytes:
            raise InvalidInputError(
                f"column family '{tag}' has {key_bytes}-byte keys and {value_bytes}-byte values: "
                "not HPS's layout (8- or 4-byte keys, float32 vectors)",
                location=str(path),
            )
        record = read_table_record(db, tag) or {}
        if record.get("complete") and not journal_is_empty(db, tag):
            record = {}  # updated since it was loaded: the record describes the loaded table
        if record.get("complete") and isinstance(record.get("num_keys"), int):
            rows, counted = record["num_keys"], "from the bookkeeping record"
        else:
            rows, counted = family_rows(db, tag), "counted"
        super().__init__(
            name,
            f"{path}:{tag}",
            rows,
            value_bytes // 4,
            input_bytes=rows * (key_bytes + value_bytes),
            details={"family": tag, "key_bytes": key_bytes, "rows": counted},
        )
        self._db, self._tag, self._key_dtype = db, tag, "<i8" if key_bytes == 8 else "<u4"
        self.checksum = record.get("checksum") if record.get("complete") else None

    def chunks(self, rows=None):
        rows = rows or self.rows_per_chunk()
        start = 0
        for raw_keys, raw_values in iter_family(self._db, self._tag, rows):
            keys = raw_keys.reshape(-1).view(self._key_dtype).astype(np.int64)
            vectors = raw_values.reshape(-1).view("<f4").reshape(len(keys), self.dim).copy()
            if raw_values.shape[1] != 4 * self.dim:
                raise InvalidInputError(
                    "value sizes differ within the family", location=self.location
                )
            yield Chunk(start, keys, vectors, None)
            start += len(keys)
        if start != self.num_rows:
            raise InvalidInputError(
                f"the family holds {start} rows, not the {self.num_rows} its "
                "record says: it changed while being read",
                location=self.location,
            )


def open_tables(path: Path, options: OpenOptions) -> tuple[list[SourceTable], list[SkippedFile]]:
    db = open_db(path, read_only=True)
    tables, skipped, models = [], [], {}
    families = set(list_families(path))
    try:
        for tag in sorted(families):
            parsed = parse_storage_tag(tag)
            if parsed is None:
                if tag != "default":
                    skipped.append(
                        SkippedFile(f"{path}:{tag}", "not an hps_et.<model>.<table> family")
                    )
                continue
            model, table = parsed
            if options.model and model != options.model:
                skipped.append(SkippedFile(f"{path}:{tag}", f"model '{model}' not selected"))
                continue
            if table in models:
                raise InvalidInputError(
                    f"table '{table}' exists for models '{models[table]}' and '{model}'",
                    location=str(path),
                    hint="pass --model to choose one model",
                )
            if not family_state(db, tag, families).holds_a_table:
                skipped.append(
                    SkippedFile(f"{path}:{tag}", "empty: left by a load that was interrupted")
                )
                continue
            models[table] = model
            tables.append(RocksDbTable(db, tag, table, path))
    except BaseException:
        db.close()
        raise
    if not tables:
        db.close()
        raise NotFoundError(
            "the database has no table in HPS's layout"
            + (f" for model '{options.model}'" if options.model else ""),
            location=str(path),
        )
    tables[-1].close = db.close  # closing the last table closes the shared read-only handle
    return tables, skipped
