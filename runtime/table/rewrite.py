"""Streaming rewrite of a table into a new folder (re-verified, re-chunked, fresh sidecar)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from .reader import DEFAULT_CHUNK_BYTES, TableReader
from .writer import TableSummary, TableWriter


def rewrite_table(
    src: Path | str,
    dest: Path | str,
    *,
    dim: int | None = None,
    overwrite: bool = False,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    progress: Callable[[int], None] | None = None,
    **writer_options,
) -> TableSummary:
    """Copy table ``src`` to ``dest`` chunk by chunk, in constant memory and atomically.

    The writer re-checks every row (sentinel keys, shapes) and computes the sidecar's checksums
    and statistics on the way, so the result is verified without a second pass.
    """
    with TableReader(src, dim) as reader:
        source = {"rewritten_from": str(Path(src).resolve())}
        source.update(writer_options.pop("source", {}) or {})
        writer = TableWriter(
            dest,
            reader.dim,
            overwrite=overwrite,
            with_meta=reader.has_meta,
            source=source,
            **{"expected_rows": reader.num_keys, **writer_options},
        )
        try:
            for chunk in reader.chunks(reader.rows_per_chunk(chunk_bytes)):
                writer.append(chunk.keys, chunk.vectors, chunk.meta)
                if progress:
                    progress(chunk.keys.size * reader.row_bytes)
        except BaseException:
            writer.abort()
            raise
        return writer.commit()
