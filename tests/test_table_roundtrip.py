"""Writer → reader round trips of HPS tables are bit-exact, whatever the shape and chunking."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest
from hps_cli.runtime.errors import InvalidInputError
from hps_cli.runtime.table import (
    KEY_FILE,
    SIDECAR_FILE,
    VECTOR_FILE,
    TableReader,
    TableWriter,
    read_sidecar,
    write_table,
)
from hps_cli.runtime.table.file_layout import EMPTY_KEY_INT64
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

keys_strategy = st.integers(min_value=-(2**63), max_value=2**63 - 2)


@st.composite
def table_data(draw):
    n = draw(st.integers(min_value=1, max_value=200))
    dim = draw(st.integers(min_value=1, max_value=48))
    keys = np.array(draw(st.lists(keys_strategy, min_size=n, max_size=n)), dtype=np.int64)
    raw = draw(st.binary(min_size=n * dim * 4, max_size=n * dim * 4))
    vectors = np.frombuffer(raw, dtype="<f4").reshape(n, dim)  # any bit pattern, NaNs included
    with_meta = draw(st.booleans())
    meta = (
        np.array(draw(st.lists(st.integers(0, 2**40), min_size=n, max_size=n)), dtype=np.int64)
        if with_meta
        else None
    )
    append_rows = draw(st.integers(min_value=1, max_value=n))
    read_rows = draw(st.integers(min_value=1, max_value=n + 5))
    return keys, vectors, meta, append_rows, read_rows


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=table_data())
def test_round_trip_is_bit_exact(tmp_path_factory, data):
    keys, vectors, meta, append_rows, read_rows = data
    dest = tmp_path_factory.mktemp("rt") / "table"
    # any float32 bit pattern round-trips, NaN and Inf included when allowed
    writer = TableWriter(dest, vectors.shape[1], with_meta=meta is not None, allow_non_finite=True)
    for start in range(0, keys.size, append_rows):
        stop = start + append_rows
        writer.append(
            keys[start:stop], vectors[start:stop], None if meta is None else meta[start:stop]
        )
    summary = writer.commit()
    assert summary.num_keys == keys.size and summary.dim == vectors.shape[1]

    # The files are exactly what HPS reads: raw little-endian arrays, no header.
    assert (dest / KEY_FILE).read_bytes() == keys.astype("<i8").tobytes()
    assert (dest / VECTOR_FILE).read_bytes() == vectors.astype("<f4").tobytes()

    with TableReader(dest) as reader:
        assert reader.num_keys == keys.size and reader.dim == vectors.shape[1]
        got_keys, got_vecs, got_meta = [], [], []
        for chunk in reader.chunks(read_rows):
            got_keys.append(chunk.keys.copy())
            got_vecs.append(chunk.vectors.copy())
            if chunk.meta is not None:
                got_meta.append(chunk.meta.copy())
        np.testing.assert_array_equal(np.concatenate(got_keys), keys)
        np.testing.assert_array_equal(
            np.concatenate(got_vecs).view(np.uint32), vectors.view(np.uint32)
        )
        if meta is not None:
            np.testing.assert_array_equal(np.concatenate(got_meta), meta)
        else:
            assert reader.meta() is None


def test_sidecar_records_sizes_and_checksums(tmp_path, rng):
    keys = rng.permutation(1000).astype(np.int64)
    vectors = rng.standard_normal((1000, 8)).astype(np.float32)
    vectors[3, 2] = np.nan
    keys[10] = keys[11]  # one duplicate
    summary = write_table(
        tmp_path / "t", keys, vectors, source={"from": "test"}, allow_non_finite=True
    )
    side = read_sidecar(tmp_path / "t")
    assert side is not None
    assert side.dim == 8 and side.num_keys == 1000
    assert side.duplicates == 1 and summary.duplicates.extra_rows == 1
    assert side.non_finite == 1
    assert side.files["key"].crc32 == f"{zlib.crc32(keys.tobytes()):08x}"
    assert side.files["emb_vector"].bytes == 1000 * 8 * 4
    doc = json.loads((tmp_path / "t" / SIDECAR_FILE).read_text())
    assert doc["format"] == "hps-table" and doc["source"] == {"from": "test"}


def test_writer_converts_dtypes(tmp_path):
    keys = np.array([1, 2, 3], dtype=np.uint32)
    vectors = np.arange(6, dtype=np.float64).reshape(3, 2)
    write_table(tmp_path / "t", keys, vectors)
    with TableReader(tmp_path / "t") as reader:
        assert reader.keys().dtype == np.int64
        np.testing.assert_array_equal(reader.vectors(), vectors.astype(np.float32))


@pytest.mark.parametrize(
    "bad_keys, message",
    [
        (np.array([1, EMPTY_KEY_INT64]), "empty-slot marker"),
        (np.array([1, 2**63 + 5], dtype=np.uint64), "does not fit int64"),
        (np.array([[1, 2]]), "1-D"),
        (np.array([1.0, 2.0]), "integers"),
    ],
)
def test_writer_rejects_bad_keys_and_leaves_nothing(tmp_path, bad_keys, message):
    from hps_cli.runtime.errors import InvalidInputError

    dest = tmp_path / "t"
    with pytest.raises(InvalidInputError, match=message):
        write_table(
            dest,
            bad_keys,
            np.zeros((bad_keys.shape[-1] if bad_keys.ndim == 2 else bad_keys.size, 4), np.float32),
        )
    assert not dest.exists()
    assert list(tmp_path.iterdir()) == []  # no hidden temporary folder either


def test_writer_rejects_wrong_vector_shape(tmp_path):
    from hps_cli.runtime.errors import InvalidInputError

    writer = TableWriter(tmp_path / "t", 4)
    with pytest.raises(InvalidInputError, match=r"expected \(2, 4\)"):
        writer.append(np.array([1, 2]), np.zeros((2, 5), np.float32))
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_empty_table_is_refused(tmp_path):
    from hps_cli.runtime.errors import InvalidInputError

    writer = TableWriter(tmp_path / "t", 4)
    with pytest.raises(InvalidInputError, match="empty table"):
        writer.commit()
    assert list(tmp_path.iterdir()) == []


def test_exception_mid_write_leaves_no_table(tmp_path):
    dest = tmp_path / "t"
    with pytest.raises(RuntimeError, match="boom"):
        with TableWriter(dest, 4) as writer:
            writer.append(np.arange(10), np.zeros((10, 4), np.float32))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_overwrite_replaces_and_refuses_without_flag(tmp_path):
    from hps_cli.runtime.errors import OutputExistsError

    dest = tmp_path / "t"
    write_table(dest, np.arange(3), np.ones((3, 2), np.float32))
    with pytest.raises(OutputExistsError):
        write_table(dest, np.arange(5), np.ones((5, 2), np.float32))
    with TableReader(dest) as reader:
        assert reader.num_keys == 3  # untouched
    write_table(dest, np.arange(5), np.ones((5, 2), np.float32), overwrite=True)
    with TableReader(dest) as reader:
        assert reader.num_keys == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]


def test_reader_chunks_release_pages_but_stay_correct(tmp_path, rng):
    keys = rng.permutation(50_000).astype(np.int64)
    vectors = rng.standard_normal((50_000, 16)).astype(np.float32)
    write_table(tmp_path / "t", keys, vectors)
    with TableReader(tmp_path / "t") as reader:
        seen = 0
        for chunk in reader.chunks(777):
            np.testing.assert_array_equal(
                chunk.keys, keys[chunk.start : chunk.start + chunk.keys.size]
            )
            np.testing.assert_array_equal(
                chunk.vectors, vectors[chunk.start : chunk.start + chunk.keys.size]
            )
            seen += chunk.keys.size
        assert seen == 50_000
        rows = reader.read_rows(49_990, 100)
        assert rows.keys.size == 10


def test_non_finite_vectors_are_refused_by_default_naming_row_and_key(tmp_path):
    vectors = np.ones((6, 4), np.float32)
    vectors[4, 1] = np.inf
    keys = np.arange(100, 106)
    with pytest.raises(InvalidInputError, match=r"key 104 \(row 4\) holds Inf"):
        write_table(tmp_path / "t", keys, vectors)
    assert not list(tmp_path.iterdir())  # nothing left behind
