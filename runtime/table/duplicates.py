"""Counting duplicate keys in bounded memory, whatever the number of keys.

Keys are kept in memory up to a budget. Past it, they are spilled to temporary files by hash
partition (each key's partition depends only on the key, so duplicates always meet in one
partition), and each partition is sorted on its own at the end.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..hashing import mix64

DEFAULT_BUDGET_BYTES = 64 << 20
_SPILL_PARTITIONS = 64


@dataclass(frozen=True)
class DuplicateStats:
    """``extra_rows``: rows beyond the first of each key; ``keys``: distinct keys that repeat."""

    extra_rows: int = 0
    keys: int = 0
    examples: tuple[int, ...] = field(default=())


def _duplicates_in(sorted_keys: np.ndarray) -> tuple[int, np.ndarray]:
    if sorted_keys.size < 2:
        return 0, sorted_keys[:0]
    same = sorted_keys[1:] == sorted_keys[:-1]
    extra = int(np.count_nonzero(same))
    if not extra:
        return 0, sorted_keys[:0]
    return extra, np.unique(sorted_keys[1:][same])


class DuplicateCounter:
    """Feed keys with ``add``; ``finish`` returns the duplicate statistics.

    Args:
        budget_bytes: keys held in memory before spilling to disk (sorting needs about twice).
        tmp_dir: where spill files go (default: the system temp folder).
        max_examples: how many repeating keys to report.
    """

    def __init__(
        self,
        budget_bytes: int = DEFAULT_BUDGET_BYTES,
        tmp_dir: Path | str | None = None,
        max_examples: int = 5,
        _level: int = 0,
    ):
        self.budget_bytes = budget_bytes
        self.budget_keys = max(1024, budget_bytes // 8)
        self._shift = np.uint64(58 - 6 * _level)  # each level splits by the next 6 hash bits
        self._level = _level
        self.tmp_dir = tmp_dir
        self.max_examples = max_examples
        self._held: list[np.ndarray] = []
        self._held_count = 0
        self._spill_dir: Path | None = None
        self._spill_files: list = []

    def add(self, keys: np.ndarray) -> None:
        keys = np.asarray(keys, dtype=np.int64)
        if not keys.size:
            return
        if self._spill_dir is None:
            # Held as a sorted copy: finish() then merges sorted runs (a stable sort exploits
            # them: about 2x faster than sorting shuffled keys), and this part of the work
            # happens while the keys stream in.
            self._held.append(np.sort(keys))
            self._held_count += keys.size
            if self._held_count > self.budget_keys:
                self._start_spilling()
        else:
            self._spill(np.sort(keys))  # sorted runs in every partition file, as in memory

    def _start_spilling(self) -> None:
        self._spill_dir = Path(tempfile.mkdtemp(prefix="hps-dups-", dir=self.tmp_dir))
        self._spill_files = [
            open(self._spill_dir / f"p{i:03d}", "wb") for i in range(_SPILL_PARTITIONS)
        ]
        held, self._held, self._held_count = self._held, [], 0
        for block in held:
            self._spill(block)

    def _spill(self, keys: np.ndarray) -> None:
        part = ((mix64(keys) >> self._shift) & np.uint64(63)).astype(np.intp)
        order = np.argsort(part, kind="stable")
        bounds = np.searchsorted(part[order], np.arange(_SPILL_PARTITIONS + 1))
        grouped = keys[order]
        for p in range(_SPILL_PARTITIONS):
            lo, hi = bounds[p], bounds[p + 1]
            if hi > lo:
                self._spill_files[p].write(grouped[lo:hi].tobytes())

    def finish(self) -> DuplicateStats:
        extra_total, repeating, examples = 0, 0, []
        try:
            for block in self._blocks():
                block.sort(kind="stable")  # runs of sorted keys: merged, not re-sorted
                extra, dup_keys = _duplicates_in(block)
                extra_total += extra
                repeating += dup_keys.size
                examples.extend(int(k) for k in dup_keys[: self.max_examples])
        finally:
            self._cleanup()
        return DuplicateStats(extra_total, repeating, tuple(sorted(examples)[: self.max_examples]))

    def _blocks(self):
        if self._spill_dir is None:
            if self._held:
                yield np.concatenate(self._held)
            self._held, self._held_count = [], 0
            return
        for handle in self._spill_files:
            handle.close()
        for p in range(_SPILL_PARTITIONS):
            path = self._spill_dir / f"p{p:03d}"
            if path.stat().st_size <= 2 * self.budget_bytes or self._level >= 8:
                yield np.fromfile(path, dtype=np.int64)
            else:  # a partition too big to sort in the budget: split it by the next hash bits
                yield from self._split(path)

    def _split(self, path: Path):
        nested = DuplicateCounter(
            self.budget_bytes, self.tmp_dir, self.max_examples, _level=self._level + 1
        )
        nested._start_spilling()
        rows = self.budget_keys
        with open(path, "rb") as handle:
            while block := handle.read(rows * 8):
                nested._spill(np.frombuffer(block, dtype=np.int64))
        path.unlink()
        try:
            yield from nested._blocks()
        finally:
            nested._cleanup()

    def _cleanup(self) -> None:
        for handle in self._spill_files:
            handle.close()
        if self._spill_dir is not None:
            shutil.rmtree(self._spill_dir, ignore_errors=True)
        self._spill_dir, self._spill_files = None, []

    def __del__(self) -> None:  # a counter abandoned mid-way must not leave spill files
        try:
            self._cleanup()
        except Exception:
            pass
