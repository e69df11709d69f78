"""Verification catches each table defect, one test per defect, in the library and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hps_cli.runtime.table import (
    DuplicateCounter,
    TableReader,
    table_info,
    verify_table,
    write_table,
)
from hps_cli.runtime.table.file_layout import EMPTY_KEY_INT64


def _raw_table(folder, keys, vectors, meta=None):
    """Write a table's files by hand (as any tool might), bypassing the writer's own checks."""
    folder.mkdir(parents=True)
    np.asarray(keys, dtype="<i8").tofile(folder / "key")
    np.asarray(vectors, dtype="<f4").tofile(folder / "emb_vector")
    if meta is not None:
        np.asarray(meta, dtype="<i8").tofile(folder / "meta")
    return folder


def _codes(report):
    return sorted(d.code for d in report.defects)


def test_valid_table_passes(tmp_path):
    t = _raw_table(tmp_path / "t", np.arange(100), np.ones((100, 8)))
    report = verify_table(t, 8, scan_values=True)
    assert report.ok, report.defects
    assert report.num_keys == 100 and report.dim == 8
    assert (
        report.duplicates.extra_rows == 0 and report.sentinel_keys == 0 and report.non_finite == 0
    )


def test_dim_is_inferred_when_unambiguous(tmp_path):
    t = _raw_table(tmp_path / "t", np.arange(10), np.ones((10, 7)))
    assert verify_table(t).dim == 7


def test_truncated_emb_vector(tmp_path):
    t = _raw_table(tmp_path / "t", np.arange(10), np.ones((10, 8)))
    data = (t / "emb_vector").read_bytes()
    (t / "emb_vector").write_bytes(data[: -4 * 5])  # lose the last 5 floats
    report = verify_table(t, 8)
    assert _codes(report) == ["vector_size"]
    assert "10 keys × dim 8" in report.defects[0].message
    report = verify_table(t)  # without a dim: not a whole number of rows
    assert _codes(report) == ["vector_size"]


def test_truncated_emb_vector_mid_float(tmp_path):
    t = _raw_table(tmp_path / "t", np.arange(10), np.ones((10, 8)))
    data = (t / "emb_vector").read_bytes()
    (t / "emb_vector").write_bytes(data[:-3])
    assert _codes(verify_table(t, 8)) == ["vector_size"]


def test_wrong_dim(tmp_path):
    t = _raw_table(tmp_path / "t", np.arange(10), np.ones((10, 8)))
    report = verify_table(t, 16)
    assert _codes(report) == ["dim_mismatch"]
    assert "holds 8 floats per key" in report.defects[0].message


def test_odd_key_size(tmp_path):
    t = _raw_table(tmp_path / "t", np.arange(10), np.ones((10, 4)))
    with open(t / "key", "ab") as handle:
        handle.write(b"\x01\x02\x03")
    assert "key_size" in _codes(verify_table(t, 4))


@pytest.mark.parametrize("which", ["key", "emb_vector"])
def test_empty_files(tmp_path, which):
    t = _raw_table(tmp_path / "t", np.arange(10), np.ones((10, 4)))
    (t / which).write_bytes(b"")
    assert "empty_file" in _codes(verify_table(t, 4))


def test_missing_file_and_missing_folder(tmp_path):
    t = _raw_table(tmp_path / "t", np.arange(10), np.ones((10, 4)))
    (t / "emb_vector").unlink()
    assert "missing_file" in _codes(verify_table(t, 4))
    assert _codes(verify_table(tmp_path / "nope")) == ["not_a_table"]


def test_sentinel_key(tmp_path):
    keys = np.arange(10, dtype=np.int64)
    keys[7] = EMPTY_KEY_INT64
    t = _raw_table(tmp_path / "t", keys, np.ones((10, 4)))
    report = verify_table(t, 4)
    assert _codes(report) == ["sentinel_key"]
    assert report.sentinel_keys == 1 and report.sentinel_rows == (7,)


def test_uint32_key_range(tmp_path):
    keys = np.array([1, 2, 2**32 + 5, -1, 2**32 - 1], dtype=np.int64)
    t = _raw_table(tmp_path / "t", keys, np.ones((5, 4)))
    report = verify_table(t, 4, key_width=32)
    assert _codes(report) == ["key_range", "sentinel_key"]
    assert verify_table(t, 4).ok  # fine as int64 keys


def test_duplicates_counted_and_shown(tmp_path):
    keys = np.array([5, 1, 5, 9, 1, 5, 3], dtype=np.int64)
    t = _raw_table(tmp_path / "t", keys, np.ones((7, 2)))
    report = verify_table(t, 2)
    assert _codes(report) == ["duplicate_keys"]
    assert report.duplicates.extra_rows == 3 and report.duplicates.keys == 2
    assert report.duplicates.examples == (1, 5)


def test_nan_and_inf(tmp_path):
    vectors = np.ones((10, 4), np.float32)
    vectors[2, 1] = np.nan
    vectors[8, 0] = -np.inf
    t = _raw_table(tmp_path / "t", np.arange(10), vectors)
    assert verify_table(t, 4).ok  # values not scanned
    report = verify_table(t, 4, scan_values=True)
    assert _codes(report) == ["non_finite"]
    assert report.non_finite == 2 and report.non_finite_rows == (2, 8)


def test_meta_length(tmp_path):
    t = _raw_table(tmp_path / "t", np.arange(10), np.ones((10, 4)), meta=np.arange(9))
    assert _codes(verify_table(t, 4)) == ["meta_size"]


def test_reader_refuses_invalid_table_with_location(tmp_path):
    from hps_cli.runtime.errors import InvalidInputError

    t = _raw_table(tmp_path / "t", np.arange(10), np.ones((10, 4)))
    with pytest.raises(InvalidInputError) as err:
        TableReader(t, 5)
    assert err.value.location == str(t / "emb_vector")


def test_info_uses_current_sidecar_and_ignores_a_stale_one(tmp_path):
    write_table(tmp_path / "t", np.array([1, 2, 2]), np.ones((3, 4), np.float32))
    info = table_info(tmp_path / "t")
    assert info.from_sidecar and info.duplicates.extra_rows == 1
    np.array([1, 2, 3], dtype="<i8").tofile(tmp_path / "t" / "key")  # changed behind our back
    info = table_info(tmp_path / "t")
    assert not info.from_sidecar and info.duplicates.extra_rows == 0


def test_duplicate_counter_spills_and_agrees_with_numpy(tmp_path, rng):
    keys = rng.integers(-(2**62), 2**62, size=40_000)
    keys[rng.integers(0, 40_000, 3000)] = keys[rng.integers(0, 40_000, 3000)]
    counter = DuplicateCounter(budget_bytes=8 * 1024, tmp_dir=tmp_path)
    for block in np.array_split(keys, 37):
        counter.add(block)
    assert counter._spill_dir is not None  # spilled to disk
    stats = counter.finish()
    uniq, counts = np.unique(keys, return_counts=True)
    assert stats.extra_rows == int((counts - 1).sum())
    assert stats.keys == int((counts > 1).sum())
    assert set(stats.examples) <= set(uniq[counts > 1].tolist())
    assert list(tmp_path.iterdir()) == []  # spill files removed


def test_duplicate_counter_splits_oversized_partitions(tmp_path, rng):
    keys = np.concatenate([rng.integers(0, 2**40, 30_000), np.arange(100)])
    keys = np.concatenate([keys, keys[:50]])
    counter = DuplicateCounter(budget_bytes=1024, tmp_dir=tmp_path)  # forces nested splitting
    counter.add(keys)
    stats = counter.finish()
    _, counts = np.unique(keys, return_counts=True)
    assert stats.extra_rows == int((counts - 1).sum())
    assert list(tmp_path.iterdir()) == []


# --- the CLI on the same defects -------------------------------------------------------------


def test_cli_verify_exit_codes_and_json(tmp_path, hps):
    good = _raw_table(tmp_path / "good", np.arange(10), np.ones((10, 4)))
    keys = np.arange(10)
    keys[3] = EMPTY_KEY_INT64
    bad = _raw_table(tmp_path / "bad", keys, np.ones((10, 4)))
    ok = hps("table", "verify", str(good))
    assert ok.returncode == 0, ok.stderr
    res = hps("table", "verify", "--json", str(good), str(bad))
    assert res.returncode == 3
    doc = json.loads(res.stdout)
    assert doc["ok"] is False
    assert [t["ok"] for t in doc["tables"]] == [True, False]
    assert doc["tables"][1]["defects"][0]["code"] == "sentinel_key"
    text = hps("table", "verify", str(bad))
    assert text.returncode == 3
    assert f"error: {bad / 'key'}: 1 key(s) equal" in text.stderr


def test_cli_info_json(tmp_path, hps):
    t = _raw_table(tmp_path / "t", np.array([3, 3, 4]), np.ones((3, 2)))
    res = hps("--json", "table", "info", str(t))
    assert res.returncode == 0
    doc = json.loads(res.stdout)["tables"][0]
    assert doc["num_keys"] == 3 and doc["dim"] == 2 and doc["duplicates"]["extra_rows"] == 1


def test_cli_generate_then_verify(tmp_path, hps):
    dest = tmp_path / "g"
    res = hps(
        "table", "generate", str(dest), "--keys", "5000", "--dim", "12", "--meta", "--shuffle"
    )
    assert res.returncode == 0, res.stderr
    assert hps("table", "verify", str(dest), "--dim", "12").returncode == 0
    again = hps("table", "generate", str(dest), "--keys", "5", "--dim", "2")
    assert again.returncode == 4 and "already exists" in again.stderr
