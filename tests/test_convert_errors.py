"""Bad inputs to `hps convert`: one-line errors naming the file, documented exit codes, nothing
left behind; and Hypothesis fuzzing of the header parsers."""

from __future__ import annotations

import os
import struct

import numpy as np
import pytest
from helpers.convert_builders import (
    embedding_collection,
    keras2_h5,
    leftovers,
    sok_v1_dump,
    sok_v2_dump,
    sok_v2_header,
)
from hps_cli.runtime.errors import ExitCode, InvalidInputError
from hps_cli.runtime.table import write_table
from hypothesis import given, settings
from hypothesis import strategies as st

from hps_cli.formats.hugectr import check_head, parse_meta
from hps_cli.formats.sok_v2 import HEADER_BYTES, SokHeader, parse_header


def _sok(tmp_path, rows=100, dim=4):
    sok_v2_dump(
        tmp_path / "dump",
        {"t:0": (np.arange(rows, dtype=np.int64), np.ones((rows, dim), np.float32))},
    )
    return tmp_path / "dump"


def _fails(hps, tmp_path, src, code, *needles, extra=()):
    res = hps("convert", str(src), str(tmp_path / "out"), *extra)
    assert res.returncode == code, (res.returncode, res.stderr)
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in res.stderr, res.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    assert not (tmp_path / "out").exists() and not leftovers(tmp_path)
    return errors[0]


def _patch(path, offset, data):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def test_sok_v2_wrong_dtype_index(tmp_path, hps):
    src = _sok(tmp_path)
    _patch(src / "t_0-weight", 292, struct.pack(">I", 9))
    _fails(hps, tmp_path, src, ExitCode.INVALID, "t_0-weight", "dtype index is 9")


def test_sok_v2_key_dtype_in_weight_file(tmp_path, hps):
    src = _sok(tmp_path)
    _patch(src / "t_0-weight", 292, struct.pack(">I", 1))
    _fails(hps, tmp_path, src, ExitCode.INVALID, "t_0-weight", "not a float type")


def test_sok_v2_wrong_file_type(tmp_path, hps):
    src = _sok(tmp_path)
    _patch(src / "t_0-key", 256, struct.pack(">I", 1))
    _fails(hps, tmp_path, src, ExitCode.INVALID, "t_0-key", "file type 0")


def test_sok_v2_header_names_disagree(tmp_path, hps):
    src = _sok(tmp_path)
    _patch(src / "t_0-key", 0, "t:0".rjust(256).encode())
    _fails(hps, tmp_path, src, ExitCode.INVALID, "t_0-weight", "names")


def test_sok_v2_truncated_weight_file(tmp_path, hps):
    src = _sok(tmp_path)
    size = os.path.getsize(src / "t_0-weight")
    os.truncate(src / "t_0-weight", size - 6)
    _fails(hps, tmp_path, src, ExitCode.INVALID, "t_0-weight", "truncated")


def test_sok_v2_row_counts_disagree(tmp_path, hps):
    src = _sok(tmp_path, rows=100, dim=4)
    with open(src / "t_0-key", "ab") as f:
        np.arange(3, dtype=np.int64).tofile(f)  # 103 keys for 100 rows × 4
    _fails(hps, tmp_path, src, ExitCode.INVALID, "t_0-weight", "row counts disagree")


def test_sok_v2_shorter_than_header(tmp_path, hps):
    src = _sok(tmp_path)
    os.truncate(src / "t_0-key", 100)
    _fails(hps, tmp_path, src, ExitCode.INVALID, "t_0-key", "296-byte")


def test_sok_v1_dim_does_not_divide(tmp_path, hps):
    sok_v1_dump(
        tmp_path / "d", {"v": (np.arange(10, dtype=np.int64), np.ones((10, 6), np.float32))}
    )
    _fails(
        hps,
        tmp_path,
        tmp_path / "d",
        ExitCode.INVALID,
        "v_values.file",
        "not a whole number of rows of dim 7",
        extra=("--dim", "7"),
    )


def test_sok_v1_missing_values_file(tmp_path, hps):
    sok_v1_dump(
        tmp_path / "d", {"v": (np.arange(10, dtype=np.int64), np.ones((10, 2), np.float32))}
    )
    (tmp_path / "d" / "v_values.file").unlink()
    _fails(hps, tmp_path, tmp_path / "d", ExitCode.INVALID, "v_keys.file", "missing")


def test_hps_table_truncated_vectors(tmp_path, hps):
    write_table(tmp_path / "t", np.arange(10), np.ones((10, 4), np.float32), sidecar=False)
    os.truncate(tmp_path / "t" / "emb_vector", 150)
    _fails(hps, tmp_path, tmp_path / "t", ExitCode.INVALID, "emb_vector")


def test_embedding_collection_bad_header(tmp_path, hps):
    path = embedding_collection(tmp_path / "ckpt", 0, [(np.arange(5), np.ones((5, 2), np.float32))])
    _patch(path / "weight0", 0, struct.pack("<i", 1))
    _fails(hps, tmp_path, tmp_path / "ckpt", ExitCode.INVALID, "weight0", "file type is 1")


def test_npy_keys_count_mismatch(tmp_path, hps):
    np.save(tmp_path / "m.npy", np.ones((10, 3), np.float32))
    np.save(tmp_path / "k.npy", np.arange(9))
    _fails(
        hps,
        tmp_path,
        tmp_path / "m.npy",
        ExitCode.INVALID,
        "k.npy",
        "disagree",
        extra=("--keys", str(tmp_path / "k.npy")),
    )


def test_corrupt_npz(tmp_path, hps):
    (tmp_path / "x.npz").write_bytes(b"PK\x03\x04" + b"\0" * 50)
    _fails(hps, tmp_path, tmp_path / "x.npz", ExitCode.INVALID, "x.npz")


def test_keras2_h5_listing_a_weight_it_does_not_hold(tmp_path, rng, hps):
    """convert and dissect read Keras 2 files with one reader: a listed weight that the file
    lacks is one error naming it in both (exit 3, nothing written)."""
    import h5py

    src = tmp_path / "model.h5"
    keras2_h5(
        src,
        {"user_emb": rng.standard_normal((10, 4)).astype(np.float32)},
        {"dense": rng.standard_normal((4, 1)).astype(np.float32)},
    )
    with h5py.File(src, "a") as f:
        del f["model_weights/dense/dense/kernel:0"]
    needles = ("model.h5", "'dense/kernel:0' is listed in weight_names of /model_weights/dense")
    _fails(hps, tmp_path, src, ExitCode.INVALID, *needles)
    res = hps("dissect", str(src), str(tmp_path / "out"))
    assert res.returncode == ExitCode.INVALID, (res.returncode, res.stderr)
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in res.stderr, res.stderr
    assert all(needle in errors[0] for needle in needles), errors[0]
    assert not (tmp_path / "out").exists() and not leftovers(tmp_path)


def test_missing_and_unknown_inputs(tmp_path, hps):
    _fails(hps, tmp_path, tmp_path / "nope", ExitCode.INVALID, "nope", "does not exist")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "readme.txt").write_text("hi")
    _fails(hps, tmp_path, tmp_path / "junk", ExitCode.INVALID, "junk", "cannot tell the format")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads everything")
def test_unreadable_input(tmp_path, hps):
    src = _sok(tmp_path)
    os.chmod(src / "t_0-weight", 0)
    _fails(hps, tmp_path, src, ExitCode.INVALID, "t_0-weight", "permission")


def test_input_file_that_cannot_be_read(tmp_path, hps):
    """(Permission bits do not stop root, who runs CI: a folder where a file must be does.)"""
    src = _sok(tmp_path)
    (src / "t_0-weight").unlink()
    (src / "t_0-weight").mkdir()
    _fails(hps, tmp_path, src, ExitCode.INVALID, "t_0-weight", "cannot read")


def test_existing_destination_without_overwrite(tmp_path, hps):
    src = _sok(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    res = hps("convert", str(src), str(tmp_path / "out"))
    assert res.returncode == ExitCode.CONFLICT and "already exists" in res.stderr
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    res = hps("convert", str(src), str(tmp_path / "out"), "--overwrite")
    assert res.returncode == 0 and sorted(p.name for p in (tmp_path / "out").iterdir()) == ["t_0"]
    assert not leftovers(tmp_path)


def test_failure_on_second_table_leaves_nothing(tmp_path, hps):
    """The first table converts fine; the second fails mid-way: no DST, no temp folders."""
    for name in ("a", "b"):
        write_table(tmp_path / "src" / name, np.arange(100), np.ones((100, 2), np.float32))
    with open(tmp_path / "src" / "b" / "key", "r+b") as f:
        f.seek(8 * 50)
        f.write(np.int64(2**63 - 1).tobytes())  # the GPU cache's empty-slot key
    res = hps("convert", str(tmp_path / "src"), str(tmp_path / "out"))
    assert res.returncode == ExitCode.INVALID and "row 50" in res.stderr
    assert not (tmp_path / "out").exists() and not leftovers(tmp_path)


# --- Hypothesis: header parsers never crash and accept exactly the valid headers -------------


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=400))
def test_sok_header_parser_fuzz(raw):
    try:
        header = parse_header(raw, "fuzz")
    except InvalidInputError:
        return
    assert len(raw) >= HEADER_BYTES and header.file_type in (0, 1, 2)
    assert 0 <= header.dtype_index <= 6


@settings(max_examples=200, deadline=None)
@given(
    st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=40),
    st.integers(0, 2),
    st.text(alphabet="abcdefgh_", max_size=20),
    st.integers(0, 6),
)
def test_sok_header_round_trip(name, file_type, slot, dtype_index):
    raw = sok_v2_header(file_type, dtype_index, name, slot)
    assert len(raw) == HEADER_BYTES
    header = parse_header(raw + b"payload")
    assert header == SokHeader(name, file_type, slot, dtype_index)
    assert header.to_bytes() == raw


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_sok_header_rejects_bad_type_and_dtype(file_type, dtype_index):
    raw = " " * 256 + "x" * 0
    raw = raw.encode() + struct.pack(">I", file_type) + b" " * 32 + struct.pack(">I", dtype_index)
    if file_type <= 2 and dtype_index <= 6:
        assert parse_header(raw).file_type == file_type
    else:
        with pytest.raises(InvalidInputError):
            parse_header(raw)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_collection_meta_parser_fuzz(raw):
    try:
        meta = parse_meta(raw, "fuzz")
    except InvalidInputError:
        return
    assert len(meta["tables"]) == struct.unpack("<i", raw[:4])[0]


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=0, max_size=200), st.sampled_from([1, 2]), st.integers(0, 3))
def test_collection_head_checker_fuzz(tmp_path_factory, raw, kind, table_id):
    path = tmp_path_factory.mktemp("head") / "f"
    path.write_bytes(raw)
    try:
        check_head(path, kind, table_id)
    except InvalidInputError:
        return
    head = np.frombuffer(raw[:128], dtype="<i4")
    assert head[0] == kind and head[1] == table_id and not head[2:].any()


def test_options_that_do_not_apply_are_errors(tmp_path, hps):
    src = _sok(tmp_path, dim=4)
    _fails(hps, tmp_path, src, ExitCode.INVALID, "--dataset", extra=("--dataset", "/x"))
    _fails(hps, tmp_path, src, ExitCode.INVALID, "--dim 8", "dim 4", extra=("--dim", "8"))
    np.save(tmp_path / "m.npy", np.ones((5, 3), np.float32))
    _fails(
        hps, tmp_path, tmp_path / "m.npy", ExitCode.INVALID, "m.npy", "dim 3", extra=("--dim", "2")
    )


def test_npz_output_dedupe_error(tmp_path, hps):
    write_table(tmp_path / "t", np.array([1, 2, 1]), np.ones((3, 2), np.float32))
    _fails(
        hps,
        tmp_path,
        tmp_path / "t",
        ExitCode.INVALID,
        "duplicate",
        extra=("--to", "npz", "--dedupe", "error"),
    )


def _hps_table(path, keys=100, dim=4, value=1.0):
    write_table(path, np.arange(keys), np.full((keys, dim), value, np.float32))
    return path


@pytest.mark.parametrize(
    "layout, relation",
    [
        (("t/a", "t"), "contains the input"),  # DST is SRC's parent: would delete t/b
        (("t", "t/a/x"), "lies inside the input"),
        (("t/a", "t/a"), "is the input"),
        (("link/a", "t"), "contains the input"),  # through a symbolic link
    ],
)
def test_destination_that_is_contains_or_lies_inside_the_input(tmp_path, hps, layout, relation):
    _hps_table(tmp_path / "t" / "a")
    _hps_table(tmp_path / "t" / "b", value=2.0)
    (tmp_path / "link").symlink_to(tmp_path / "t")
    before = {p: p.read_bytes() for p in (tmp_path / "t").rglob("*") if p.is_file()}
    src, dst = layout
    for extra in ((), ("--overwrite",), ("--to", "rocksdb", "--model", "m", "--overwrite")):
        res = hps("convert", str(tmp_path / src), str(tmp_path / dst), *extra)
        assert res.returncode == ExitCode.INVALID, res.stderr
        assert relation in res.stderr and "hint:" in res.stderr
    after = {p: p.read_bytes() for p in (tmp_path / "t").rglob("*") if p.is_file()}
    assert after == before and not leftovers(tmp_path)


def test_overwrite_replaces_exactly_the_destination(tmp_path, hps):
    _hps_table(tmp_path / "in" / "a")
    _hps_table(tmp_path / "out" / "old")
    (tmp_path / "sibling").write_text("untouched")
    res = hps("convert", str(tmp_path / "in" / "a"), str(tmp_path / "out"), "--overwrite")
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a"]
    assert (tmp_path / "sibling").read_text() == "untouched"
    assert not leftovers(tmp_path)


@pytest.mark.parametrize("target", ["hps", "npz", "rocksdb"])
@pytest.mark.parametrize("kind", ["npy", "hps"])
def test_non_finite_vectors_are_refused_naming_row_and_key(tmp_path, hps, target, kind):
    vectors = np.ones((50, 4), np.float32)
    vectors[17, 2] = np.nan
    if kind == "npy":
        src = tmp_path / "m.npy"
        np.save(src, vectors)
    else:
        src = tmp_path / "t"
        write_table(src, np.arange(1000, 1050), vectors, allow_non_finite=True)
    extra = ("--to", target, "--model", "m") if target == "rocksdb" else ("--to", target)
    key = 17 if kind == "npy" else 1017
    _fails(hps, tmp_path, src, ExitCode.INVALID, f"key {key} (row 17)", "NaN", extra=extra)
    res = hps("convert", str(src), str(tmp_path / "out"), *extra, "--allow-non-finite")
    assert res.returncode == 0, res.stderr
