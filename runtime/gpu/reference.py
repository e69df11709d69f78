"""NumPy reference of every GPU kernel, with the same data layout and the same semantics.

It is the CPU fallback of the cache (no GPU or no PyCUDA) and the oracle of the GPU tests:
given the same calls, ``RefDynamicCache`` ends in exactly the state ``GpuDynamicCache`` ends in
(keys, scores, floors, values), because the replace kernel processes each set's keys in batch
order and so does this code. Everything is vectorized over keys (or over sets, per round).
"""

from __future__ import annotations

import numpy as np

from .placement import EMPTY_KEY, HIT_SAMPLE, WAYS, counted_hits, query_seed, set_of


def group_by_set(sets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stable grouping of a batch by set: (order, segment sets, segment offsets).

    ``order`` lists the batch positions set by set, each set's keys in batch order; segment s is
    ``order[offsets[s]:offsets[s+1]]`` and belongs to set ``segment_sets[s]``. The GPU replace
    kernel takes exactly this, so both sides walk every set's keys in the same order.
    """
    order = np.argsort(sets, kind="stable")
    sorted_sets = sets[order]
    starts = (
        np.flatnonzero(np.r_[True, sorted_sets[1:] != sorted_sets[:-1]])
        if sets.size
        else np.empty(0, np.int64)
    )
    offsets = np.r_[starts, sets.size].astype(np.int64)
    return order, sorted_sets[starts], offsets


class RefDynamicCache:
    """The dynamic cache (cuda/dynamic_cache.cu) in NumPy: ``num_sets`` sets of WAYS ways."""

    def __init__(self, num_sets: int, dim: int):
        self.num_sets = int(num_sets)
        self.dim = int(dim)
        self.keys = np.full((self.num_sets, WAYS), EMPTY_KEY, dtype=np.int64)
        self.scores = np.zeros((self.num_sets, WAYS), dtype=np.uint32)
        self.floors = np.zeros(self.num_sets, dtype=np.uint32)
        self.values = np.zeros((self.num_sets, WAYS, self.dim), dtype=np.float32)
        self.queries = 0  # query calls so far: the sampling seed of the next one

    @property
    def capacity(self) -> int:
        return self.num_sets * WAYS

    def _find(self, keys: np.ndarray, sets: np.ndarray) -> np.ndarray:
        """The way of each key in its set, -1 when absent: like the kernel, every way's key is
        compared (a key is in at most one way)."""
        match = (self.keys[sets] == keys[:, None]) & (keys != EMPTY_KEY)[:, None]
        way = np.argmax(match, axis=1)
        return np.where(match[np.arange(keys.size), way], way, -1)

    def query(
        self, keys: np.ndarray, default_value: float = 0.0
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows, miss_keys, miss_positions); misses get ``default_value``, in batch order.

        Sampled hits add HIT_SAMPLE each to their slot's score, as placement.counted_hits says
        (in a batch large enough to be de-duplicated on the GPU, a key's hits are capped). The
        GPU adds some of them later (its hit bytes, folded before scores are read): the same
        sums wherever scores are observed."""
        keys = np.ascontiguousarray(keys, dtype=np.int64)
        sets = set_of(keys, self.num_sets)
        way = self._find(keys, sets)
        hit = way >= 0
        slots = sets * WAYS + np.maximum(way, 0)
        out = self.values.reshape(-1, self.dim).take(slots, axis=0)  # one flat gather
        out[~hit] = default_value
        at, weight = counted_hits(keys, query_seed(self.queries))
        self.queries += 1
        counted = hit[at]
        at, weight = at[counted], weight[counted]
        np.add.at(self.scores, (sets[at], way[at]), (weight * HIT_SAMPLE).astype(np.uint32))
        miss = np.flatnonzero(~hit)
        return out, keys[miss], miss.astype(np.int64)

    def replace(self, keys: np.ndarray, rows: np.ndarray) -> int:
        """Insert keys with their rows; LFU-DA eviction. Returns how many keys were new."""
        keys = np.ascontiguousarray(keys, dtype=np.int64)
        rows = np.ascontiguousarray(rows, dtype=np.float32).reshape(keys.size, self.dim)
        keep = keys != EMPTY_KEY
        keys, rows = keys[keep], rows[keep]
        sets = set_of(keys, self.num_sets)
        order, seg_sets, offsets = group_by_set(sets)
        lengths = np.diff(offsets)
        inserted = 0
        # Round r takes the r-th key of every set's segment: sets are independent, and within
        # a set the rounds keep batch order, as the one-warp-per-set kernel does.
        for r in range(int(lengths.max()) if lengths.size else 0):
            active = lengths > r
            pos = order[offsets[:-1][active] + r]
            s, k = seg_sets[active], keys[pos]
            ways = self.keys[s]
            present = ways == k[:, None]
            is_present = present.any(axis=1)
            hit_way = np.argmax(present, axis=1)
            self.scores[s[is_present], hit_way[is_present]] += np.uint32(1)
            new = ~is_present
            s, k, pos, ways = s[new], k[new], pos[new], ways[new]
            empty = ways == EMPTY_KEY
            has_empty = empty.any(axis=1)
            victim = np.argmin(self.scores[s], axis=1)  # first minimum: the lowest way
            way = np.where(has_empty, np.argmax(empty, axis=1), victim)
            evicting = ~has_empty
            self.floors[s[evicting]] = self.scores[s[evicting], way[evicting]]
            self.keys[s, way] = k
            self.scores[s, way] = self.floors[s] + np.uint32(1)
            self.values[s, way] = rows[pos]
            inserted += int(new.sum())
        return inserted

    def update(self, keys: np.ndarray, rows: np.ndarray) -> int:
        """Overwrite the rows of cached keys (absent keys ignored); returns how many."""
        keys = np.ascontiguousarray(keys, dtype=np.int64)
        rows = np.ascontiguousarray(rows, dtype=np.float32).reshape(keys.size, self.dim)
        sets = set_of(keys, self.num_sets)
        way = self._find(keys, sets)
        hit = way >= 0
        self.values[sets[hit], way[hit]] = rows[hit]
        return int(hit.sum())

    def invalidate(self, keys: np.ndarray) -> int:
        """Remove keys (absent keys ignored); returns how many were cached."""
        keys = np.unique(np.ascontiguousarray(keys, dtype=np.int64))
        sets = set_of(keys, self.num_sets)
        way = self._find(keys, sets)
        hit = way >= 0
        s, w = sets[hit], way[hit]
        self.keys[s, w] = EMPTY_KEY
        self.scores[s, w] = 0
        return int(hit.sum())

    def dump(self, set_begin: int = 0, set_end: int | None = None) -> np.ndarray:
        """The cached keys of sets [set_begin, set_end), sorted."""
        block = self.keys[set_begin : self.num_sets if set_end is None else set_end]
        return np.sort(block[block != EMPTY_KEY])

    def occupancy(self) -> int:
        return int(np.count_nonzero(self.keys != EMPTY_KEY))


class RefIndexedTable:
    """The static/uvm table (cuda/indexed_table.cu): every key of a table, read-only."""

    def __init__(self, keys: np.ndarray, rows: np.ndarray):
        keys = np.ascontiguousarray(keys, dtype=np.int64)
        order = np.argsort(keys, kind="stable")
        self._keys = keys[order]
        self._rows = np.ascontiguousarray(rows, dtype=np.float32)[order]
        self.dim = self._rows.shape[1]

    def query(self, keys: np.ndarray, default_value: float = 0.0) -> tuple[np.ndarray, int]:
        keys = np.ascontiguousarray(keys, dtype=np.int64)
        at = np.minimum(np.searchsorted(self._keys, keys), max(self._keys.size - 1, 0))
        hit = (
            (self._keys[at] == keys) & (keys != EMPTY_KEY)
            if self._keys.size
            else np.zeros(keys.size, bool)
        )
        out = np.full((keys.size, self.dim), default_value, dtype=np.float32)
        out[hit] = self._rows[at[hit]]
        return out, int(hit.sum())


def ref_dedup(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(unique keys, inverse, counts) with keys == unique[inverse] (unique order is free)."""
    unique, inverse, counts = np.unique(
        np.asarray(keys, np.int64), return_inverse=True, return_counts=True
    )
    return unique, inverse.astype(np.int64), counts.astype(np.uint32)


def ref_gather(table: np.ndarray, index: np.ndarray) -> np.ndarray:
    return np.asarray(table, np.float32)[np.asarray(index, np.int64)]


def ref_scatter(
    src: np.ndarray, src_index: np.ndarray | None, dst_pos: np.ndarray, out: np.ndarray
) -> np.ndarray:
    rows = src if src_index is None else src[src_index]
    out[dst_pos] = rows
    return out
