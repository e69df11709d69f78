"""How TableWriter puts bytes on disk: preallocation, O_DIRECT for large announced files (with
aligned pass-through, staging of unaligned pieces, a padded and trimmed last block), the
buffered fallback where O_DIRECT is refused, and a full disk caught before any copying."""

from __future__ import annotations

import errno
import os
import zlib
from pathlib import Path

import hps_cli.runtime.direct_io as direct_io
import hps_cli.runtime.table.writer as writer_module
import numpy as np
import pytest
from hps_cli.runtime.errors import HpsError
from hps_cli.runtime.table import TableReader, TableWriter, read_sidecar


def _supports_direct_io(folder: Path) -> bool:
    probe = folder / ".direct-probe"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | getattr(os, "O_DIRECT", 0))
    except OSError:
        return False
    os.close(fd)
    probe.unlink()
    return hasattr(os, "O_DIRECT")


@pytest.fixture
def direct_dir(tmp_path):
    """A folder on a file system that takes O_DIRECT (tmp, else beside the tests: tmpfs
    refuses it)."""
    import shutil
    import tempfile

    if _supports_direct_io(tmp_path):
        yield tmp_path
        return
    folder = Path(tempfile.mkdtemp(prefix=".direct-", dir=Path(__file__).parent))
    try:
        if not _supports_direct_io(folder):
            pytest.skip("no file system here takes O_DIRECT")
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _unaligned_copy(array: np.ndarray, shift: int) -> np.ndarray:
    """The same values in memory that starts `shift` bytes past a 4 KiB boundary."""
    raw = np.empty(array.nbytes + 8192, np.uint8)
    start = (-raw.ctypes.data % 4096) + shift
    out = raw[start : start + array.nbytes].view(array.dtype).reshape(array.shape)
    out[...] = array
    return out


@pytest.mark.parametrize("dim", [1, 3, 16, 129])
def test_direct_writes_are_bit_exact_for_any_chunking_and_alignment(direct_dir, monkeypatch, dim):
    monkeypatch.setattr(writer_module, "_DIRECT_MIN_BYTES", 1)  # every file goes O_DIRECT
    monkeypatch.setattr(direct_io, "STAGE_BYTES", 64 << 10)  # small: exercise its flushes
    rng = np.random.default_rng(dim)
    n = 9_000
    keys = rng.permutation(n).astype(np.int64) * 7 + 1
    vectors = rng.standard_normal((n, dim), dtype=np.float32)
    sizes = [1, 1024, 1000, 4096, 7, 2048]
    dest = direct_dir / "t"
    with TableWriter(dest, dim, expected_rows=n + 500) as w:  # more announced than written
        assert w._vectors.file.is_direct
        first, i = 0, 0
        while first < n:
            count = min(sizes[i % len(sizes)], n - first)
            shift = (0, 8, 4, 3000)[i % 4]
            w.append(
                _unaligned_copy(keys[first : first + count], shift),
                _unaligned_copy(vectors[first : first + count], shift),
            )
            first, i = first + count, i + 1
    assert (dest / "emb_vector").stat().st_size == n * dim * 4  # trimmed to what was written
    with TableReader(dest) as r:
        assert np.array_equal(r.keys(), keys)
        assert np.array_equal(r.vectors(), vectors)
    side = read_sidecar(dest)
    assert side.files["emb_vector"].crc32 == f"{zlib.crc32(vectors.tobytes()):08x}"
    assert side.files["key"].crc32 == f"{zlib.crc32(keys.tobytes()):08x}"


def test_page_aligned_whole_blocks_skip_the_staging_copy(direct_dir, monkeypatch):
    monkeypatch.setattr(writer_module, "_DIRECT_MIN_BYTES", 1)
    dim, n = 8, 4096  # 4096 rows x 32 bytes: whole 4 KiB blocks
    vectors = _unaligned_copy(np.arange(n * dim, dtype=np.float32).reshape(n, dim), 0)
    with TableWriter(direct_dir / "t", dim, expected_rows=n) as w:
        w.append(np.arange(n, dtype=np.int64), vectors)
        assert not w._vectors.file.staged  # never needed
        assert w._vectors.file.bytes_on_disk == vectors.nbytes


def test_buffered_fallback_where_o_direct_is_refused(tmp_path, monkeypatch):
    real_open = os.open

    def refuse_direct(path, flags, *args):
        if flags & getattr(os, "O_DIRECT", 0):
            raise OSError(errno.EINVAL, "O_DIRECT not supported")  # what tmpfs answers
        return real_open(path, flags, *args)

    monkeypatch.setattr(writer_module, "_DIRECT_MIN_BYTES", 1)
    monkeypatch.setattr(direct_io.os, "open", refuse_direct)
    vectors = np.ones((100, 5), np.float32)
    with TableWriter(tmp_path / "t", 5, expected_rows=100) as w:
        assert not w._vectors.file.is_direct
        w.append(np.arange(100), vectors)
    with TableReader(tmp_path / "t") as r:
        assert r.num_keys == 100


def test_a_full_disk_fails_before_copying_and_leaves_nothing(direct_dir, monkeypatch):
    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer_module, "_DIRECT_MIN_BYTES", 1)
    monkeypatch.setattr(direct_io.os, "posix_fallocate", no_space)
    with pytest.raises(HpsError, match="not enough free space"):
        TableWriter(direct_dir / "t", 4, expected_rows=1000)
    assert list(direct_dir.iterdir()) == []


def test_unreservable_file_systems_still_get_the_table(direct_dir, monkeypatch):
    def unsupported(fd, offset, length):
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(writer_module, "_DIRECT_MIN_BYTES", 1)
    monkeypatch.setattr(direct_io.os, "posix_fallocate", unsupported)
    with TableWriter(direct_dir / "t", 4, expected_rows=10) as w:
        w.append(np.arange(10), np.zeros((10, 4), np.float32))
    assert (direct_dir / "t" / "emb_vector").stat().st_size == 160


def test_buffered_files_are_not_reserved(tmp_path, monkeypatch):
    """Small or buffered files skip posix_fallocate (on tmpfs it zero-fills memory first)."""
    calls = []
    monkeypatch.setattr(direct_io.os, "posix_fallocate", lambda *a: calls.append(a))
    with TableWriter(tmp_path / "t", 4, expected_rows=10) as w:  # far below the O_DIRECT size
        w.append(np.arange(10), np.zeros((10, 4), np.float32))
    assert calls == []


def test_aborting_a_direct_write_leaves_nothing(direct_dir, monkeypatch):
    monkeypatch.setattr(writer_module, "_DIRECT_MIN_BYTES", 1)
    w = TableWriter(direct_dir / "t", 4, expected_rows=10_000)
    assert w._vectors.file.is_direct
    w.append(np.arange(3), np.zeros((3, 4), np.float32))
    w.abort()
    assert not Path(direct_dir / "t").exists()
    assert [p.name for p in direct_dir.iterdir()] == []


def test_direct_io_can_be_turned_off(tmp_path, monkeypatch):
    monkeypatch.setattr(writer_module, "_DIRECT_MIN_BYTES", 1)
    monkeypatch.setenv("HPS_DIRECT_IO", "0")
    with TableWriter(tmp_path / "t", 4, expected_rows=10) as w:
        assert not w._vectors.file.is_direct
        w.append(np.arange(10), np.zeros((10, 4), np.float32))


def test_o_direct_writes_refused_after_open_fall_back_to_buffered(direct_dir, monkeypatch):
    """Some file systems open O_DIRECT but refuse the writes: nothing is lost."""
    monkeypatch.setattr(writer_module, "_DIRECT_MIN_BYTES", 1)
    monkeypatch.setattr(direct_io, "STAGE_BYTES", 8192)
    real_pwrite = os.pwrite
    refused = []

    def refuse_first(fd, data, offset):
        if not refused:
            refused.append(offset)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(direct_io.os, "pwrite", refuse_first)
    rng = np.random.default_rng(5)
    keys = np.arange(3000, dtype=np.int64)
    vectors = rng.standard_normal((3000, 3), dtype=np.float32)
    with TableWriter(direct_dir / "t", 3, expected_rows=3000) as w:
        for start in range(0, 3000, 700):  # 8400-byte chunks: the stage fills mid-chunk
            w.append(keys[start : start + 700], vectors[start : start + 700])
        assert not w._vectors.file.is_direct
    assert refused
    with TableReader(direct_dir / "t") as r:
        assert np.array_equal(r.keys(), keys) and np.array_equal(r.vectors(), vectors)


def test_refused_o_direct_writes_at_close_fall_back_too(direct_dir, monkeypatch):
    """Everything still staged when the file closes: the padded last write is the first one."""
    real_pwrite = os.pwrite
    direct_fds = []

    def refuse_direct(fd, data, offset):
        if fd in direct_fds:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(direct_io.os, "pwrite", refuse_direct)
    f = direct_io.DirectFile(direct_dir / "f", expected_bytes=20000)
    assert f.is_direct
    direct_fds.append(f._direct)
    payload = bytes(range(256)) * 39 + b"tail"
    f.write(payload)
    f.write(payload)
    f.close(sync=True)
    assert (direct_dir / "f").read_bytes() == payload * 2
