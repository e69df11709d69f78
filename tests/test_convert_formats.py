"""`hps convert` from every input format into HPS tables: bit-exact round trips."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers.convert_builders import (
    embedding_collection,
    hugectr_snapshot,
    keras2_h5,
    read_hps,
    sok_v1_dump,
    sok_v2_dump,
)
from hps_cli.runtime.errors import ExitCode
from hps_cli.runtime.table import verify_table, write_table

from hps_cli.convert import ConvertOptions, convert
from hps_cli.formats import OpenOptions


def _convert(src, dst, **kw):
    opts = kw.pop("open_options", None) or OpenOptions(
        **{k: kw.pop(k) for k in ("dim", "keys", "dataset") if k in kw}
    )
    return convert(ConvertOptions(src=src, dst=dst, open_options=opts, **kw))


def test_sok_v1_int64_round_trip_and_detection(tmp_path, rng, hps):
    keys = rng.permutation(5000).astype(np.int64) * 7 - 100
    values = rng.standard_normal((5000, 16)).astype(np.float32)
    sok_v1_dump(tmp_path / "dump", {"EmbeddingVariable": (keys, values)})
    res = hps("convert", str(tmp_path / "dump"), str(tmp_path / "out"), "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["format"] == "sok-v1" and doc["format_detected"] is True
    assert doc["totals"]["rows"] == 5000 and doc["tables"][0]["dim"] == 16
    got_k, got_v, _ = read_hps(tmp_path / "out" / "EmbeddingVariable")
    assert got_k.tobytes() == keys.tobytes() and got_v.tobytes() == values.tobytes()
    assert verify_table(tmp_path / "out" / "EmbeddingVariable").ok


def test_sok_v1_uint32_keys_are_widened(tmp_path, rng):
    keys = (rng.permutation(3000) + 4_000_000_000).astype(np.uint32)
    values = rng.standard_normal((3000, 8)).astype(np.float32)
    sok_v1_dump(tmp_path / "dump", {"EmbeddingVariable_1": (keys, values)})
    # 4-byte keys with dim 8 read the same bytes as 8-byte keys with dim 16: --dim decides.
    result = _convert(tmp_path / "dump", tmp_path / "out", dim=8)
    assert result.tables[0].details["key_dtype"] == "uint32"
    got_k, got_v, _ = read_hps(tmp_path / "out" / "EmbeddingVariable_1")
    assert got_k.dtype == np.int64 and np.array_equal(got_k, keys.astype(np.int64))
    assert got_v.tobytes() == values.tobytes()


def test_sok_v1_ambiguous_width_needs_dim(tmp_path, rng, hps):
    keys = (rng.permutation(100) + 7).astype(np.uint32)
    sok_v1_dump(tmp_path / "dump", {"v": (keys, np.ones((100, 4), np.float32))})
    res = hps("convert", str(tmp_path / "dump"), str(tmp_path / "out"))
    assert res.returncode == ExitCode.INVALID
    assert "ambiguous" in res.stderr and "v_keys.file" in res.stderr and "--dim" in res.stderr
    assert not (tmp_path / "out").exists()


def test_sok_v1_int64_width_inferred_without_dim(tmp_path, rng):
    keys = rng.permutation(500).astype(np.int64)
    values = rng.standard_normal((500, 6)).astype(np.float32)
    sok_v1_dump(tmp_path / "dump", {"v": (keys, values)})
    result = _convert(tmp_path / "dump", tmp_path / "out")
    assert result.tables[0].dim == 6 and result.tables[0].details["key_dtype"] == "int64"
    assert read_hps(tmp_path / "out" / "v")[0].tobytes() == keys.tobytes()


def test_sok_v2_multi_variable_with_optimizer_slots(tmp_path, rng, hps):
    k0 = np.sort(rng.choice(10**12, 4000, replace=False)).astype(np.int64)
    w0 = rng.standard_normal((4000, 16)).astype(np.float32)
    k1 = np.arange(300, dtype=np.uint64)  # a localized variable's keys (dtype index 3)
    w1 = rng.standard_normal((300, 4)).astype(np.float64)  # cast to float32
    k2 = np.arange(50, dtype=np.int32) * 3
    w2 = rng.standard_normal((50, 2)).astype(np.float16)
    sok_v2_dump(
        tmp_path / "dump",
        {"table0:0": (k0, w0), "user/emb:0": (k1, w1), "small:0": (k2, w2)},
        optimizer="Adam",
        slots=("m", "v"),
    )
    res = hps("convert", str(tmp_path / "dump"), str(tmp_path / "out"), "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["format"] == "sok-v2"
    assert sorted(t["name"] for t in doc["tables"]) == ["small_0", "table0_0", "user_emb_0"]
    skipped = [s for s in doc["skipped"] if "optimizer state" in s["reason"]]
    assert len(skipped) == 6 and all("Adam" in s["reason"] for s in skipped)
    k, w, _ = read_hps(tmp_path / "out" / "table0_0")
    assert k.tobytes() == k0.tobytes() and w.tobytes() == w0.tobytes()
    k, w, _ = read_hps(tmp_path / "out" / "user_emb_0")
    assert np.array_equal(k, k1.astype(np.int64)) and w.tobytes() == w1.astype(np.float32).tobytes()
    k, w, _ = read_hps(tmp_path / "out" / "small_0")
    assert np.array_equal(k, k2) and w.tobytes() == w2.astype(np.float32).tobytes()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "small_0",
        "table0_0",
        "user_emb_0",
    ]


def test_sok_v2_select_and_rename_one_table(tmp_path, rng):
    sok_v2_dump(
        tmp_path / "dump",
        {
            "a:0": (np.arange(10, dtype=np.int64), np.ones((10, 2), np.float32)),
            "b:0": (np.arange(5, dtype=np.int64), np.ones((5, 3), np.float32)),
        },
    )
    result = _convert(tmp_path / "dump", tmp_path / "out", tables=("b_0",))
    assert [t.name for t in result.tables] == ["b_0"]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["b_0"]


def test_hugectr_snapshot_drops_slot_id(tmp_path, rng):
    keys = rng.choice(10**9, 2000, replace=False).astype(np.int64)
    vectors = rng.standard_normal((2000, 32)).astype(np.float32)
    src = tmp_path / "snap" / "0_sparse_10000.model"
    hugectr_snapshot(src, keys, vectors, slot_ids=rng.integers(0, 26, 2000).astype(np.uint64))
    result = _convert(tmp_path / "snap", tmp_path / "out")
    assert result.format == "hugectr" and result.tables[0].name == "0_sparse_10000"
    assert any("slot_id" in s["path"] for s in result.skipped)
    k, v, _ = read_hps(tmp_path / "out" / "0_sparse_10000")
    assert k.tobytes() == keys.tobytes() and v.tobytes() == vectors.tobytes()
    assert not (tmp_path / "out" / "0_sparse_10000" / "slot_id").exists()


def test_hugectr_embedding_collection(tmp_path, rng):
    t0 = (rng.choice(10**6, 700, replace=False).astype(np.uint32), rng.random((700, 8), np.float32))
    t1 = (np.arange(90, dtype=np.uint32), rng.random((90, 4), np.float32))
    embedding_collection(tmp_path / "ckpt", 0, [t0, t1], key_dtype=np.uint32)
    result = _convert(tmp_path / "ckpt", tmp_path / "out")
    assert sorted(t.name for t in result.tables) == [
        "embedding_collection_0_table0",
        "embedding_collection_0_table1",
    ]
    k, v, _ = read_hps(tmp_path / "out" / "embedding_collection_0_table0")
    assert np.array_equal(k, t0[0].astype(np.int64)) and v.tobytes() == t0[1].tobytes()
    k, v, _ = read_hps(tmp_path / "out" / "embedding_collection_0_table1")
    assert np.array_equal(k, t1[0].astype(np.int64)) and v.tobytes() == t1[1].tobytes()


def test_embedding_collection_of_a_table_subset(tmp_path, rng):
    """Dumping tables [3, 7] writes key0/key1 whose headers carry the file index."""
    tables = [
        (np.arange(20, dtype=np.int64), rng.random((20, 2), np.float32)),
        (np.arange(30, dtype=np.int64) + 100, rng.random((30, 4), np.float32)),
    ]
    path = embedding_collection(tmp_path / "ckpt", 1, tables, table_ids=[3, 7])
    for t in range(2):  # as HugeCTR writes them: the index, not meta_data's id
        for name in (f"key{t}", f"weight{t}"):
            raw = bytearray((path / name).read_bytes())
            raw[4:8] = np.int32(t).tobytes()
            (path / name).write_bytes(bytes(raw))
    result = _convert(tmp_path / "ckpt", tmp_path / "out")
    assert sorted(t.name for t in result.tables) == [
        "embedding_collection_1_table3",
        "embedding_collection_1_table7",
    ]
    k, v, _ = read_hps(tmp_path / "out" / "embedding_collection_1_table7")
    assert np.array_equal(k, tables[1][0]) and v.tobytes() == tables[1][1].tobytes()


def test_npy_with_row_and_explicit_keys(tmp_path, rng):
    matrix = rng.standard_normal((1234, 5)).astype(np.float32)
    np.save(tmp_path / "emb.npy", matrix)
    _convert(tmp_path / "emb.npy", tmp_path / "a")
    k, v, _ = read_hps(tmp_path / "a" / "emb")
    assert np.array_equal(k, np.arange(1234)) and v.tobytes() == matrix.tobytes()
    keys = rng.choice(10**9, 1234, replace=False).astype(np.uint32)
    np.save(tmp_path / "ids.npy", keys)
    _convert(tmp_path / "emb.npy", tmp_path / "b", keys=tmp_path / "ids.npy", tables=("items",))
    k, v, _ = read_hps(tmp_path / "b" / "items")
    assert np.array_equal(k, keys.astype(np.int64)) and v.tobytes() == matrix.tobytes()
    np.save(tmp_path / "ft.npy", np.asfortranarray(matrix.astype(np.float64)))
    _convert(tmp_path / "ft.npy", tmp_path / "c")
    assert read_hps(tmp_path / "c" / "ft")[1].tobytes() == matrix.tobytes()


def test_npz_keys_values_meta(tmp_path, rng):
    keys = rng.choice(10**9, 999, replace=False).astype(np.int64)
    values = rng.standard_normal((999, 3)).astype(np.float32)
    meta = rng.integers(0, 1000, 999).astype(np.int64)
    np.savez(tmp_path / "t.npz", keys=keys, values=values, meta=meta)
    _convert(tmp_path / "t.npz", tmp_path / "out", hot_first=False)
    k, v, m = read_hps(tmp_path / "out" / "t")
    assert k.tobytes() == keys.tobytes() and v.tobytes() == values.tobytes()
    assert m.tobytes() == meta.tobytes()


def test_hdf5_dataset(tmp_path, rng):
    import h5py

    matrix = rng.standard_normal((600, 12)).astype(np.float32)
    with h5py.File(tmp_path / "w.h5", "w") as f:
        f.create_dataset("a/b/item_table", data=matrix, chunks=(64, 12), compression="gzip")
    result = _convert(tmp_path / "w.h5", tmp_path / "out", dataset="/a/b/item_table")
    assert result.format == "hdf5" and result.tables[0].name == "item_table"
    k, v, _ = read_hps(tmp_path / "out" / "item_table")
    assert np.array_equal(k, np.arange(600)) and v.tobytes() == matrix.tobytes()


def test_keras2_h5_two_embedding_layers(tmp_path, rng, hps):
    user = rng.standard_normal((1000, 8)).astype(np.float32)
    item = rng.standard_normal((250, 16)).astype(np.float32)
    keras2_h5(
        tmp_path / "model.h5",
        {"user_emb": user, "item_emb": item},
        {"dense": rng.standard_normal((24, 1)).astype(np.float32)},
    )
    res = hps("convert", str(tmp_path / "model.h5"), "--list", "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert [(t["name"], t["rows"], t["dim"]) for t in doc["tables"]] == [
        ("user_emb", 1000, 8),
        ("item_emb", 250, 16),
    ]
    assert any("dense" in s["path"] for s in doc["skipped"])
    res = hps("convert", str(tmp_path / "model.h5"), str(tmp_path / "one"), "--table", "item_emb")
    assert res.returncode == 0, res.stderr
    assert [p.name for p in (tmp_path / "one").iterdir()] == ["item_emb"]
    assert read_hps(tmp_path / "one" / "item_emb")[1].tobytes() == item.tobytes()
    _convert(tmp_path / "model.h5", tmp_path / "all")
    for name, matrix in (("user_emb", user), ("item_emb", item)):
        k, v, _ = read_hps(tmp_path / "all" / name)
        assert np.array_equal(k, np.arange(len(matrix))) and v.tobytes() == matrix.tobytes()


def _table_with_dups(path, rng, rows=3000, dim=4):
    keys = rng.integers(0, rows // 2, rows).astype(np.int64)  # many repeats
    vectors = rng.standard_normal((rows, dim)).astype(np.float32)
    meta = rng.integers(0, 50, rows).astype(np.int64)
    write_table(path, keys, vectors, meta)
    return keys, vectors, meta


def _expected_dedupe(keys, mode):
    seen, order = {}, []
    for i, k in enumerate(keys):
        if k not in seen:
            order.append(k)
            seen[k] = i
        elif mode == "last":
            seen[k] = i
    return sorted(seen.values())


@pytest.mark.parametrize("mode", ["first", "last"])
@pytest.mark.parametrize("budget", [1 << 30, 4096])  # one key range, or many
def test_hps_table_dedupe_keeps_input_order(tmp_path, rng, mode, budget):
    keys, vectors, meta = _table_with_dups(tmp_path / "src", rng)
    result = convert(
        ConvertOptions(
            src=tmp_path / "src",
            dst=tmp_path / "out",
            dedupe=mode,
            hot_first=False,
            budget_bytes=budget,
        )
    )
    rows = _expected_dedupe(keys, mode)
    k, v, m = read_hps(tmp_path / "out" / "src")
    assert np.array_equal(k, keys[rows]) and v.tobytes() == vectors[rows].tobytes()
    assert np.array_equal(m, meta[rows])
    assert result.tables[0].duplicates == len(keys) - len(rows) == result.tables[0].dropped


def test_hps_table_dedupe_error_leaves_nothing(tmp_path, rng, hps):
    _table_with_dups(tmp_path / "src", rng)
    res = hps("convert", str(tmp_path / "src"), str(tmp_path / "out"), "--dedupe", "error")
    assert res.returncode == ExitCode.INVALID and "duplicate" in res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "src" in errors[0] and "Traceback" not in res.stderr
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_hps_table_default_keeps_duplicates_counted(tmp_path, rng):
    keys, vectors, _ = _table_with_dups(tmp_path / "src", rng)
    result = convert(ConvertOptions(src=tmp_path / "src", dst=tmp_path / "out", hot_first=False))
    assert result.tables[0].duplicates == len(keys) - len(np.unique(keys))
    assert read_hps(tmp_path / "out" / "src")[0].tobytes() == keys.tobytes()


@pytest.mark.parametrize("budget", [1 << 30, 8192])
def test_hps_table_hot_first_by_meta(tmp_path, rng, budget):
    keys = rng.permutation(5000).astype(np.int64)
    vectors = rng.standard_normal((5000, 3)).astype(np.float32)
    meta = (rng.zipf(1.3, 5000) % 10_000).astype(np.int64)
    meta[:1500] = 7  # a heavy tie: ties keep input order
    write_table(tmp_path / "src", keys, vectors, meta)
    result = convert(
        ConvertOptions(src=tmp_path / "src", dst=tmp_path / "out", budget_bytes=budget)
    )
    assert result.tables[0].reordered
    order = np.argsort(-meta, kind="stable")
    k, v, m = read_hps(tmp_path / "out" / "src")
    assert np.array_equal(k, keys[order]) and v.tobytes() == vectors[order].tobytes()
    assert np.array_equal(m, meta[order])
    convert(ConvertOptions(src=tmp_path / "src", dst=tmp_path / "kept", hot_first=False))
    assert read_hps(tmp_path / "kept" / "src")[0].tobytes() == keys.tobytes()


def test_hps_tables_folder_rechunk_and_dry_run(tmp_path, rng, hps):
    for name in ("a", "b"):
        write_table(
            tmp_path / "src" / name,
            np.arange(100) + (0 if name == "a" else 1000),
            rng.standard_normal((100, 2)).astype(np.float32),
        )
    res = hps("convert", str(tmp_path / "src"), str(tmp_path / "out"), "--dry-run", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["dry_run"] is True and not (tmp_path / "out").exists()
    res = hps("convert", str(tmp_path / "src"), str(tmp_path / "out"))
    assert res.returncode == 0 and "wrote 2 table(s), 200 rows" in res.stdout
    assert "hps (detected)" in res.stdout
    for name in ("a", "b"):
        assert (
            read_hps(tmp_path / "out" / name)[0].tobytes()
            == read_hps(tmp_path / "src" / name)[0].tobytes()
        )


def test_npz_export_and_reimport(tmp_path, rng):
    keys = rng.permutation(800).astype(np.int64)
    vectors = rng.standard_normal((800, 6)).astype(np.float32)
    write_table(tmp_path / "src" / "t", keys, vectors)
    convert(ConvertOptions(src=tmp_path / "src", dst=tmp_path / "npz", target="npz"))
    with np.load(tmp_path / "npz" / "t.npz") as data:
        assert data["keys"].tobytes() == keys.tobytes()
        assert data["vectors"].tobytes() == vectors.tobytes()
    convert(ConvertOptions(src=tmp_path / "npz" / "t.npz", dst=tmp_path / "back"))
    assert read_hps(tmp_path / "back" / "t")[1].tobytes() == vectors.tobytes()


def test_table_json_of_converted_tables_is_current_and_correct(tmp_path, rng):
    """The sidecar of a converted table describes its files (checksums computed independently),
    counts duplicates and non-finite rows, and is identical whatever the input dtypes."""
    from hps_cli.runtime.table import current_sidecar

    from hps_cli.formats.hps_table import sidecar_checksum

    keys = rng.integers(0, 4000, 5000).astype(np.int64)  # with duplicates
    weights = rng.standard_normal((5000, 8)).astype(np.float32)
    weights[7, 3] = np.nan
    sok_v2_dump(tmp_path / "f32", {"t:0": (keys, weights)})
    sok_v2_dump(tmp_path / "f64", {"t:0": (keys, weights.astype(np.float64))})
    for name in ("f32", "f64"):
        convert(
            ConvertOptions(src=tmp_path / name, dst=tmp_path / f"out_{name}", allow_non_finite=True)
        )
    a, b = tmp_path / "out_f32" / "t_0", tmp_path / "out_f64" / "t_0"
    for file in ("key", "emb_vector"):
        assert (a / file).read_bytes() == (b / file).read_bytes()
    side_a, side_b = current_sidecar(a), current_sidecar(b)
    assert side_a is not None and side_a.checksum() == side_b.checksum() == sidecar_checksum(a, 8)
    assert (
        side_a.duplicates
        == len(keys) - len(np.unique(keys))
        == verify_table(a).duplicates.extra_rows
    )
    assert side_a.non_finite == 1
