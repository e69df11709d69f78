"""Where converted rows go: HPS table folders, RocksDB column families, or .npz files.

The HPS and .npz sinks write into a folder that is being built atomically by the caller; the
RocksDB sink turns a stream into a ``BulkSource`` for the bulk loader. Every sink reads its
chunks through ``prefetched``, which also refuses a vector holding NaN or Inf (naming the input
and the key) unless the conversion allows them.
"""

from __future__ import annotations

import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from ..formats.base import Chunk, as_keys
from ..runtime.persistent.rocksdb_bulk import BulkSource
from ..runtime.table.duplicates import DuplicateCounter, DuplicateStats
from ..runtime.table.finite import check_finite
from ..runtime.table.writer import TableSummary, TableWriter
from .transforms import Stream

Progress = Callable[[int], None]


def prefetched(chunks: Iterable[Chunk], finite_at: str | None = None) -> Iterator[Chunk]:
    """The same chunks, the next one read by a helper thread while this one is written (reads
    release the GIL). Safe because no reader reuses a chunk's arrays for the next chunk.
    ``finite_at``: refuse a chunk holding NaN or Inf (checked on the helper thread too),
    naming this location."""
    it = iter(chunks)

    def read() -> Chunk | None:
        chunk = next(it, None)
        if chunk is not None and finite_at is not None:
            check_finite(chunk.keys, chunk.vectors, finite_at, first_row=chunk.start)
        return chunk

    with ThreadPoolExecutor(1, thread_name_prefix="convert-read") as pool:
        ahead = pool.submit(read)
        while (chunk := ahead.result()) is not None:
            ahead = pool.submit(read)
            yield chunk


def finite_location(stream: Stream, allow_non_finite: bool) -> str | None:
    """Where ``prefetched`` names a non-finite vector; None when they are allowed."""
    return None if allow_non_finite else stream.table.location


def write_hps(
    stream: Stream, dest: Path, source: dict, progress: Progress, allow_non_finite: bool = False
) -> TableSummary:
    writer = TableWriter(
        dest,
        stream.dim,
        with_meta=stream.has_meta,
        source=source,
        atomic=False,
        expected_rows=stream.num_rows,
        allow_non_finite=True,  # prefetched refuses them, naming the input instead of DST
    )
    try:
        for chunk in prefetched(stream.chunks(), finite_location(stream, allow_non_finite)):
            writer.append(chunk.keys, chunk.vectors, chunk.meta if stream.has_meta else None)
            progress(chunk.keys.size * (8 + 4 * stream.dim))
    except BaseException:
        writer.abort()
        raise
    return writer.commit()


def _npy_header(dtype: str, shape: tuple) -> bytes:
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_2_0(
        buf, {"descr": dtype, "fortran_order": False, "shape": shape}
    )
    return buf.getvalue()


def write_npz(
    stream: Stream, dest: Path, tmp: Path, progress: Progress, allow_non_finite: bool = False
) -> tuple[int, int, DuplicateStats]:
    """``keys`` (int64), ``vectors`` (float32) [and ``meta``] streamed into one .npz."""
    n, dim = stream.num_rows, stream.dim
    side_keys, side_meta = tmp / "keys.bin", tmp / "meta.bin"
    rows = 0
    dups = DuplicateCounter(tmp_dir=tmp)
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        with (
            archive.open("vectors.npy", "w", force_zip64=True) as member,
            open(side_keys, "wb") as keys_out,
            open(side_meta, "wb") as meta_out,
        ):
            member.write(_npy_header("<f4", (n, dim)))
            for chunk in prefetched(stream.chunks(), finite_location(stream, allow_non_finite)):
                member.write(np.ascontiguousarray(chunk.vectors, "<f4").tobytes())
                keys_out.write(np.ascontiguousarray(chunk.keys, "<i8").tobytes())
                dups.add(chunk.keys)
                if stream.has_meta:
                    meta_out.write(np.ascontiguousarray(chunk.meta, "<i8").tobytes())
                rows += chunk.keys.size
                progress(chunk.keys.size * (8 + 4 * dim))
        for name, side in (("keys.npy", side_keys), ("meta.npy", side_meta)):
            if name == "meta.npy" and not stream.has_meta:
                continue
            with archive.open(name, "w", force_zip64=True) as member, open(side, "rb") as src:
                member.write(_npy_header("<i8", (n,)))
                while block := src.read(16 << 20):
                    member.write(block)
    side_keys.unlink(missing_ok=True)
    side_meta.unlink(missing_ok=True)
    if rows != n:
        raise RuntimeError(f"wrote {rows} rows, expected {n}")
    return rows, dest.stat().st_size, dups.finish()


def bulk_source(
    stream: Stream, tag: str, checksum: str, allow_non_finite: bool = False
) -> BulkSource:
    """The stream as a BulkSource; keys are sampled from the input's key file when it has one."""
    table = stream.table
    access = table.random_access()
    read_keys = None
    if access is not None:
        keys_loc = str(access.keys.path)
        read_keys = lambda first, count: as_keys(
            access.keys.read(first, count),  # noqa: E731
            keys_loc,
            first,
        )
    return BulkSource(
        tag,
        table.dim,
        table.num_rows,
        lambda: (
            (c.keys, c.vectors)
            for c in prefetched(stream.chunks(), finite_location(stream, allow_non_finite))
        ),
        checksum,
        table.location,
        read_keys,
    )
