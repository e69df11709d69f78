"""Replacing a column family's content atomically, keeping HPS's family name.

RocksDB cannot rename a column family, and HPS reads ``hps_et.<model>.<table>`` by that name,
so the new table cannot be built in a family of another name and swapped in. Instead, the new
content replaces the old inside the family in one RocksDB operation: the SST files of the new
table are ingested in one ``IngestExternalFile`` call together with, listed first, a file
holding one range tombstone over every key (sst_writer.write_range_deletion_file). Files of one
call get increasing sequence numbers in list order, so the tombstone deletes every older entry
of the family and none of the new ones; the call is atomic (one MANIFEST write). Readers, HPS
included, see the old table until that write and the new one after it.

The steps, each followed by a ``crash_point`` of its name (crash_points.py):

1. ``rocksdb.built``: the SST files are built beside the database; nothing in it changed.
2. ``rocksdb.marked``: one write batch sets our record to ``complete: false`` (with the new
   checksum) and clears the table's update journal (synced: it must be on disk before the
   family changes). A start-up that finds this state reloads the family.
3. ``rocksdb.created``: the family is created when it did not exist (empty until step 4; an
   empty family whose record is not complete counts as missing everywhere).
4. ``rocksdb.ingested``: the tombstone and the new files are ingested (moved) in one call.
5. ``rocksdb.recorded``: the record says ``complete: true``.

A kill anywhere leaves the family holding the old table or the new one, never a mix and never
an empty family in place of a table. A family that holds no table yet (new, or the empty
leftover of an interrupted first load) gets the files without the tombstone: they do not
overlap, so RocksDB puts them straight into the bottom level, as before. After a replacement
the old table's files are freed by RocksDB's compactions: ``compact=True`` runs one at once
(``hps convert``; it rewrites the new table too, about doubling the time of a replacement),
otherwise the next background compaction of a read-write open does.
"""

from __future__ import annotations

from pathlib import Path

from ..crash_points import crash_point
from .rocksdb_families import (
    encode_record,
    family_state,
    journal_keys,
    record_key,
    rocksdict_module,
)
from .sst_writer import write_range_deletion_file


def replace_family(
    db,
    tag: str,
    files: list[Path | str],
    record: dict,
    *,
    staging: Path,
    family_options,
    compact: bool = False,
) -> None:
    """Make family ``tag`` of the open database ``db`` hold exactly the rows of ``files``
    (sorted, non-overlapping SST files in ``staging``, moved into the database) and record
    ``record`` (plus ``complete``) for it; see the module doc for the steps."""
    rd = rocksdict_module()
    replacing = family_state(db, tag).holds_a_table
    crash_point("rocksdb.built")
    synced = rd.WriteOptions()
    synced.sync = True
    mark = rd.WriteBatch(raw_mode=True)
    mark.put(record_key(tag), encode_record({**record, "complete": False}))
    for key in journal_keys(db, tag):
        mark.delete(key)
    db.write(mark, synced)
    crash_point("rocksdb.marked")
    try:
        handle = db.get_column_family(tag)
    except Exception:  # rocksdict raises a plain Exception for a missing family
        handle = db.create_column_family(tag, family_options)
    crash_point("rocksdb.created")
    ingest = [str(f) for f in files]
    if replacing:
        tombstone = write_range_deletion_file(Path(staging) / "replace-every-key.sst")
        ingest.insert(0, str(tombstone))
    if ingest:
        options = rd.IngestExternalFileOptions()
        options.set_move_files(True)
        handle.ingest_external_file(ingest, options)
    crash_point("rocksdb.ingested")
    done = rd.WriteBatch(raw_mode=True)
    done.put(record_key(tag), encode_record({**record, "complete": True}))
    db.write(done, synced)
    crash_point("rocksdb.recorded")
    if compact and replacing:
        compact_family(db, tag)
    del handle


def compact_family(db, tag: str) -> None:
    """Compact a family now (frees the files of entries that a replacement deleted)."""
    rd = rocksdict_module()
    handle = db.get_column_family(tag)
    handle.compact_range(None, None, rd.CompactOptions())
    del handle
