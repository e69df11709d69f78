"""`hps convert --to rocksdb`: SST bulk loading in HPS's layout, read back by an independent
reader that knows only that layout; and backing out of RocksDB into HPS tables and .npz."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from helpers.convert_builders import leftovers, read_hps, sok_v2_dump
from hps_cli.runtime.errors import ExitCode
from hps_cli.runtime.persistent.sst_writer import SstFileBuilder, bytewise_order_key, varints
from hps_cli.runtime.table import current_sidecar, write_table

from hps_cli.convert import ConvertOptions, convert


def independent_read(db_path, family_name):
    """Only HPS's layout: column family by name; key = 8 raw LE bytes; value = raw float32."""
    import rocksdict

    opts = rocksdict.Options(raw_mode=True)
    names = rocksdict.Rdict.list_cf(str(db_path), opts)
    assert family_name in names
    db = rocksdict.Rdict(
        str(db_path),
        opts,
        column_families={n: rocksdict.Options(raw_mode=True) for n in names if n != "default"},
        access_type=rocksdict.AccessType.read_only(),
    )
    try:
        cf = db.get_column_family(family_name)
        items = {
            struct.unpack("<q", k)[0]: np.frombuffer(v, dtype="<f4").copy() for k, v in cf.items()
        }
        record = db.get(b"hps_cli/table/" + family_name.encode())
        del cf
    finally:
        db.close()
    return items, None if record is None else json.loads(record)


def test_bulk_load_read_back_by_layout_only(tmp_path, rng, hps):
    keys = rng.choice(np.arange(-(10**12), 10**12, 7919), 20000, replace=False).astype(np.int64)
    vectors = rng.standard_normal((20000, 64)).astype(np.float32)
    write_table(tmp_path / "src" / "users", keys, vectors)
    res = hps(
        "convert",
        str(tmp_path / "src"),
        str(tmp_path / "db"),
        "--to",
        "rocksdb",
        "--model",
        "rec",
        "--json",
    )
    assert res.returncode == 0, res.stderr
    items, record = independent_read(tmp_path / "db", "hps_et.rec.users")
    assert len(items) == 20000
    for i in rng.choice(20000, 500, replace=False):
        assert items[int(keys[i])].tobytes() == vectors[i].tobytes()
    # The bookkeeping record lets the runtime skip an unchanged table.
    sidecar = current_sidecar(tmp_path / "src" / "users")
    assert record == {
        "checksum": sidecar.checksum(),
        "num_keys": 20000,
        "dim": 64,
        "complete": True,
    }
    assert not leftovers(tmp_path)


def test_many_key_ranges_and_files_with_duplicates(tmp_path, rng):
    keys = rng.integers(0, 30000, 40000).astype(np.int64) * 256  # low byte 0: skewed first byte
    vectors = rng.standard_normal((40000, 8)).astype(np.float32)
    write_table(tmp_path / "t", keys, vectors)
    result = convert(
        ConvertOptions(
            src=tmp_path / "t",
            dst=tmp_path / "db",
            target="rocksdb",
            model="m",
            dedupe="first",
            budget_bytes=64 << 10,
        )
    )
    items, record = independent_read(tmp_path / "db", "hps_et.m.t")
    first = {}
    for i, k in enumerate(keys):
        first.setdefault(int(k), i)
    assert len(items) == len(first) == record["num_keys"] == result.tables[0].rows_out
    assert result.tables[0].duplicates == len(keys) - len(first)
    for k, i in list(first.items())[:2000]:
        assert items[k].tobytes() == vectors[i].tobytes()


def test_existing_family_needs_overwrite(tmp_path, rng, hps):
    write_table(tmp_path / "src" / "t", np.arange(100), np.ones((100, 4), np.float32))
    args = [str(tmp_path / "src"), str(tmp_path / "db"), "--to", "rocksdb", "--model", "m"]
    assert hps("convert", *args).returncode == 0
    write_table(tmp_path / "src2" / "t", np.arange(50) + 1000, np.full((50, 4), 2, np.float32))
    args[0] = str(tmp_path / "src2")
    res = hps("convert", *args)
    assert res.returncode == ExitCode.CONFLICT and "hps_et.m.t" in res.stderr
    assert "--overwrite" in res.stderr
    assert len(independent_read(tmp_path / "db", "hps_et.m.t")[0]) == 100
    res = hps("convert", *args, "--overwrite")
    assert res.returncode == 0, res.stderr
    items, record = independent_read(tmp_path / "db", "hps_et.m.t")
    assert sorted(items) == list(range(1000, 1050)) and record["num_keys"] == 50
    assert not leftovers(tmp_path)


def test_dedupe_error_in_rocksdb_leaves_no_family(tmp_path, hps):
    write_table(tmp_path / "src" / "t", np.array([5, 6, 5]), np.ones((3, 2), np.float32))
    res = hps(
        "convert",
        str(tmp_path / "src"),
        str(tmp_path / "db"),
        "--to",
        "rocksdb",
        "--model",
        "m",
        "--dedupe",
        "error",
    )
    assert res.returncode == ExitCode.INVALID and "key 5 appears more than once" in res.stderr
    assert not (tmp_path / "db").exists() and not leftovers(tmp_path)


def test_default_rocksdb_dedupe_keeps_last(tmp_path):
    write_table(
        tmp_path / "src" / "t", np.array([5, 6, 5]), np.array([[1, 1], [2, 2], [3, 3]], np.float32)
    )
    convert(ConvertOptions(src=tmp_path / "src", dst=tmp_path / "db", target="rocksdb", model="m"))
    items, _ = independent_read(tmp_path / "db", "hps_et.m.t")
    assert items[5].tolist() == [3, 3] and items[6].tolist() == [2, 2]


def test_sok_dump_to_rocksdb_and_back_out(tmp_path, rng):
    k0 = rng.choice(10**9, 3000, replace=False).astype(np.uint64)
    w0 = rng.standard_normal((3000, 16)).astype(np.float64)
    k1 = np.arange(100, dtype=np.int64)
    w1 = rng.standard_normal((100, 4)).astype(np.float32)
    sok_v2_dump(tmp_path / "dump", {"a:0": (k0, w0), "b:0": (k1, w1)}, "SGD", ("accum",))
    convert(
        ConvertOptions(src=tmp_path / "dump", dst=tmp_path / "db", target="rocksdb", model="ctr")
    )
    items, record = independent_read(tmp_path / "db", "hps_et.ctr.a_0")
    assert len(items) == 3000 and record["complete"] is True
    assert items[int(k0[17])].tobytes() == w0[17].astype(np.float32).tobytes()
    # Back out: the families come out in key-byte order, as HPS tables and as .npz.
    result = convert(ConvertOptions(src=tmp_path / "db", dst=tmp_path / "tables", model="ctr"))
    assert result.format == "rocksdb" and sorted(t.name for t in result.tables) == ["a_0", "b_0"]
    k, v, _ = read_hps(tmp_path / "tables" / "a_0")
    order = np.argsort(bytewise_order_key(k0.astype(np.int64)))
    assert np.array_equal(k, k0.astype(np.int64)[order])
    assert v.tobytes() == w0.astype(np.float32)[order].tobytes()
    convert(
        ConvertOptions(src=tmp_path / "db", dst=tmp_path / "npz", target="npz", tables=("b_0",))
    )
    with np.load(tmp_path / "npz" / "b_0.npz") as data:
        order = np.argsort(bytewise_order_key(k1))
        assert np.array_equal(data["keys"], k1[order])
        assert data["vectors"].tobytes() == w1[order].tobytes()


def test_rocksdb_to_rocksdb_copy_between_models(tmp_path, rng):
    keys = rng.permutation(500).astype(np.int64)
    vectors = rng.standard_normal((500, 3)).astype(np.float32)
    write_table(tmp_path / "src" / "t", keys, vectors)
    convert(ConvertOptions(src=tmp_path / "src", dst=tmp_path / "db1", target="rocksdb", model="a"))
    convert(
        ConvertOptions(
            src=tmp_path / "db1",
            dst=tmp_path / "db2",
            target="rocksdb",
            model="b",
            budget_bytes=16 << 10,
        )
    )  # keys sampled from chunks, spilled ranges
    items, record = independent_read(tmp_path / "db2", "hps_et.b.t")
    assert len(items) == 500 and items[int(keys[3])].tobytes() == vectors[3].tobytes()


@pytest.mark.parametrize("rows,dim", [(1, 1), (15, 64), (16, 64), (17, 3), (1000, 33)])
def test_sst_files_survive_compaction_and_checksums(tmp_path, rng, rows, dim):
    """RocksDB itself rewrites our blocks during compaction: every checksum and entry is read."""
    import rocksdict

    keys = rng.choice(np.arange(-(10**6), 10**6), rows, replace=False).astype(np.int64)
    vectors = rng.standard_normal((rows, dim)).astype(np.float32)
    order = np.argsort(bytewise_order_key(keys))
    builder = SstFileBuilder(tmp_path / "x.sst", 4 * dim, block_bytes=512)
    half = rows // 2
    builder.add(keys[order][:half], vectors[order][:half])
    builder.add(keys[order][half:], vectors[order][half:])
    assert builder.finish() == rows
    opts = rocksdict.Options(raw_mode=True)
    opts.create_if_missing(True)
    db = rocksdict.Rdict(str(tmp_path / "db"), opts)
    try:
        ingest = rocksdict.IngestExternalFileOptions()
        db.ingest_external_file([str(tmp_path / "x.sst")], ingest)
        db.compact_range(None, None)
        got = {struct.unpack("<q", k)[0]: v for k, v in db.items()}
        assert list(got) == [int(k) for k in keys[order]]  # bytewise order
        assert all(got[int(k)] == vectors[i].tobytes() for i, k in enumerate(keys))
        assert db.get(struct.pack("<q", 10**7)) is None
    finally:
        db.close()


def test_varints_match_the_protobuf_encoding():
    values = np.array([0, 1, 127, 128, 300, 2**32, 2**63 - 1], dtype=np.uint64)
    encoded, lengths = varints(values)

    def ref(v):
        out = bytearray()
        while True:
            b = v & 0x7F
            v >>= 7
            out.append(b | (0x80 if v else 0))
            if not v:
                return bytes(out)

    for i, v in enumerate(values.tolist()):
        assert bytes(encoded[i, : lengths[i]]) == ref(v)


def test_families_split_into_many_sst_files(tmp_path, rng):
    """Rolling over to new SST files mid-table gives non-overlapping files RocksDB ingests."""
    from hps_cli.runtime.persistent.rocksdb_bulk import BulkSource, build_family, ingest_families

    keys = rng.choice(10**9, 30000, replace=False).astype(np.int64)
    vectors = rng.standard_normal((30000, 16)).astype(np.float32)
    chunks = lambda: ((keys[i : i + 4096], vectors[i : i + 4096]) for i in range(0, 30000, 4096))  # noqa: E731
    source = BulkSource("hps_et.m.t", 16, 30000, chunks, "test", "memory")
    built = build_family(source, tmp_path / "work", budget_bytes=256 << 10, file_bytes=128 << 10)
    assert len(built.files) > 5 and built.num_keys == 30000
    ingest_families(tmp_path / "db", [built], overwrite=False, staging=tmp_path / "work")
    items, record = independent_read(tmp_path / "db", "hps_et.m.t")
    assert record == {"checksum": "test", "num_keys": 30000, "dim": 16, "complete": True}
    assert all(items[int(k)].tobytes() == vectors[i].tobytes() for i, k in enumerate(keys))


def test_a_replaced_table_keeps_its_files_until_compaction(tmp_path, rng, hps):
    """--overwrite swaps the family's content atomically (the old rows are deleted by a range
    tombstone, their files stay until a compaction, which RocksDB may start in the background
    at any time); --compact frees them before exiting."""

    def sst_bytes(db):
        return sum(p.stat().st_size for p in db.glob("*.sst"))

    write_table(tmp_path / "t", np.arange(20000), rng.standard_normal((20000, 64)))
    db = tmp_path / "db"
    args = ("convert", str(tmp_path / "t"), str(db), "--to", "rocksdb", "--model", "m")
    assert hps(*args).returncode == 0
    one = sst_bytes(db)
    assert hps(*args, "--overwrite").returncode == 0
    items, record = independent_read(db, "hps_et.m.t")
    assert len(items) == 20000 and record["complete"]
    assert hps(*args, "--overwrite", "--compact").returncode == 0
    assert sst_bytes(db) < 1.2 * one
    assert len(independent_read(db, "hps_et.m.t")[0]) == 20000
    res = hps("convert", str(tmp_path / "t"), str(tmp_path / "out"), "--compact")
    assert res.returncode == 3 and "--compact applies to --to rocksdb" in res.stderr
