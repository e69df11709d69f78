"""Several tables of one dim read as one: the source of a fused table (HPS's table fusion).

``FusedTableReader`` offers what start-up asks of a ``TableReader`` (``num_keys``, ``dim``,
``chunks``, ``keys``, ``vectors``, ``meta``) over its members, one after another in member order:
row ``r`` of the fused table is row ``r - offset[m]`` of member ``m``. ``chunks`` streams the
members' own memory maps (no copy, never across two members); ``keys``, ``vectors`` and ``meta``
concatenate the members into memory once (the loaders that need random access take them: the
RocksDB bulk load, a partial volatile load, the reference static cache). Fusion is for many
small tables, where that copy is small.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..errors import InvalidInputError
from .reader import TableChunk, TableReader


class FusedTableReader:
    """The members' rows in member order, as one table.

    Args:
        paths: the member tables' folders.
        dim: their vector size (every member must have it).

    Raises:
        InvalidInputError: a member is not a valid table of that dim.
    """

    sidecar = None  # a fused table has no table.json of its own

    def __init__(self, paths: Sequence[Path | str], dim: int):
        self.members: list[TableReader] = []
        try:
            for path in paths:
                self.members.append(TableReader(path, dim))
        except BaseException:
            self.close()
            raise
        if not self.members:
            raise InvalidInputError("a fused table needs at least one member", location="paths")
        self.path = self.members[0].path  # for messages: the first member
        self.dim = int(dim)
        sizes = [m.num_keys for m in self.members]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.num_keys = int(self.offsets[-1])
        # meta (access counts) only when every member has it: ranks across members must compare
        self.has_meta = all(m.has_meta for m in self.members)
        self._keys: np.ndarray | None = None
        self._vectors: np.ndarray | None = None
        self._meta: np.ndarray | None = None

    def keys(self) -> np.ndarray:
        if self._keys is None:
            self._keys = np.concatenate([m.keys() for m in self.members])
        return self._keys

    def vectors(self) -> np.ndarray:
        if self._vectors is None:
            self._vectors = np.concatenate([m.vectors() for m in self.members])
        return self._vectors

    def meta(self) -> np.ndarray | None:
        if not self.has_meta:
            return None
        if self._meta is None:
            self._meta = np.concatenate([m.meta() for m in self.members])  # type: ignore[misc]
        return self._meta

    def chunks(
        self,
        rows: int | None = None,
        *,
        start: int = 0,
        stop: int | None = None,
        release: bool = True,
    ) -> Iterator[TableChunk]:
        """Consecutive chunks of fused rows ``[start, stop)``; none spans two members."""
        stop = self.num_keys if stop is None else min(stop, self.num_keys)
        for member, first in zip(self.members, self.offsets[:-1]):
            first = int(first)
            begin, end = max(start, first), min(stop, first + member.num_keys)
            if begin >= end:
                continue
            for chunk in member.chunks(
                rows, start=begin - first, stop=end - first, release=release
            ):
                meta = chunk.meta if self.has_meta else None
                yield TableChunk(chunk.start + first, chunk.keys, chunk.vectors, meta)

    def close(self) -> None:
        self._keys = self._vectors = self._meta = None
        for member in self.members:
            member.close()

    def __enter__(self) -> "FusedTableReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
