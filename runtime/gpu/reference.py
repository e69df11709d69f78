"""NumPy reference of every GPU kernel, with the same data layout and the same semantics.

It is the oracle of the GPU tests (and, with ``HPS_CACHE_BACKEND=reference``, a cache that runs
anywhere): given the same calls, ``RefDynamicCache`` ends in exactly the state
``GpuDynamicCache`` ends in (keys, scores, floors, values), because both insert a batch in the
same rounds (``replace_rounds``) with the same per-key rule. Everything is vectorized over keys
(or over the keys of one round).
"""

from __future__ import annotations

import numpy as np

from ..native.insert_rounds import insert_rounds
from .placement import EMPTY_KEY, HIT_SAMPLE, WAYS, counted_hits, query_seed, sets_of


def replace_rounds(
    primary: np.ndarray, second: np.ndarray, num_sets: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Split an insert batch into rounds in which no two keys share a set: (order, offsets);
    round r inserts the batch positions ``order[offsets[r]:offsets[r+1]]``. Compiled
    (runtime/native/insert_rounds.c) when available and ``num_sets`` is given, else
    ``replace_rounds_vectorized``: the same rounds."""
    compiled = insert_rounds() if num_sets is not None else None
    if compiled is not None:
        return compiled(primary, second, num_sets)
    return replace_rounds_vectorized(primary, second)


def replace_rounds_vectorized(
    primary: np.ndarray, second: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``replace_rounds`` in NumPy, one pass over the batch per round.

    A key goes into the round after the latest round of the earlier keys of the batch that
    share one of its two sets, so every set sees its keys in batch order and the keys of one
    round touch disjoint sets: the result equals inserting the keys one at a time, in order.
    The GPU launches one replace kernel per round; the reference applies a round at once.
    """
    n = primary.size
    if not n:
        return np.empty(0, np.int64), np.zeros(1, np.int64)
    index = np.arange(n, dtype=np.int64)
    distinct = second != primary
    sets = np.concatenate([primary, second[distinct]])
    owner = np.concatenate([index, index[distinct]])
    order = np.lexsort((owner, sets))  # by set, then batch position
    same = sets[order[1:]] == sets[order[:-1]]
    before = np.full(sets.size, -1, np.int64)  # per entry: the previous key of its set
    before[order[1:][same]] = owner[order[:-1][same]]
    before_primary = before[:n]
    before_second = np.full(n, -1, np.int64)
    before_second[distinct] = before[n:]
    rounds = np.zeros(n, np.int64)
    has_a, has_b = before_primary >= 0, before_second >= 0
    a, b = before_primary[has_a], before_second[has_b]
    while True:  # a key's predecessors come earlier: converges in (longest chain + 1) passes
        after = np.zeros(n, np.int64)
        after[has_a] = rounds[a] + 1
        after[has_b] = np.maximum(after[has_b], rounds[b] + 1)
        if np.array_equal(after, rounds):
            break
        rounds = after
    order = np.argsort(rounds, kind="stable")
    offsets = np.zeros(int(rounds.max()) + 2, np.int64)
    offsets[1:] = np.cumsum(np.bincount(rounds))
    return order, offsets


class RefDynamicCache:
    """The dynamic cache (cuda/dynamic_cache.cu) in NumPy: ``num_sets`` sets of WAYS ways; a
    key lives in one of its two sets (placement.sets_of)."""

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

    def _find(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(set, way) of each key, way -1 when absent: like the kernel, every way of both sets
        is compared (a key is in at most one way of one of them); the set is the primary for
        absent keys."""
        primary, second = sets_of(keys, self.num_sets)
        valid = (keys != EMPTY_KEY)[:, None]
        both = np.concatenate([self.keys[primary], self.keys[second]], axis=1)
        match = (both == keys[:, None]) & valid
        at = np.argmax(match, axis=1)
        found = match[np.arange(keys.size), at]
        sets = np.where(at < WAYS, primary, second)
        return sets, np.where(found, at % WAYS, -1)

    def query(
        self, keys: np.ndarray, default_value: float = 0.0
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows, miss_keys, miss_positions); misses get ``default_value``, in batch order.

        Sampled hits add HIT_SAMPLE each to their slot's score, as placement.counted_hits says
        (in a batch large enough to be de-duplicated on the GPU, a key's hits are capped). The
        GPU adds some of them later (its hit bytes, folded before scores are read): the same
        sums wherever scores are observed."""
        keys = np.ascontiguousarray(keys, dtype=np.int64)
        sets, way = self._find(keys)
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
        """Insert keys with their rows (LFU-DA over the 16 ways of a key's two sets); returns
        how many keys were new. Per key, in batch order (``replace_rounds``):

        - a key already in one of its sets gains 1 score (its row is not rewritten);
        - else it takes the first empty way of its primary, else of its second set, and
          starts at the larger aging floor of the two sets + 1;
        - else it evicts the way with the smallest score of the 16 (ties: the primary's first,
          then the lowest way); that set's floor becomes the victim's score, and the new key
          starts at it + 1.
        """
        keys = np.ascontiguousarray(keys, dtype=np.int64)
        rows = np.ascontiguousarray(rows, dtype=np.float32).reshape(keys.size, self.dim)
        keep = keys != EMPTY_KEY
        keys, rows = keys[keep], rows[keep]
        primary, second = sets_of(keys, self.num_sets)
        order, offsets = replace_rounds(primary, second, self.num_sets)
        inserted = 0
        for r in range(offsets.size - 1):
            pos = order[offsets[r] : offsets[r + 1]]
            inserted += self._insert_round(keys[pos], rows[pos], primary[pos], second[pos])
        return inserted

    def _insert_round(self, k, rows, a, b) -> int:
        """Insert keys whose sets are pairwise disjoint (one round of ``replace``)."""
        ways = np.concatenate([self.keys[a], self.keys[b]], axis=1)  # (n, 2 × WAYS)
        present = ways == k[:, None]
        is_present = present.any(axis=1)
        at = np.argmax(present[is_present], axis=1)
        bumped = np.where(at < WAYS, a[is_present], b[is_present])
        self.scores[bumped, at % WAYS] += np.uint32(1)
        new = ~is_present
        k, rows, a, b, ways = k[new], rows[new], a[new], b[new], ways[new]
        if not k.size:
            return 0
        scores = np.concatenate([self.scores[a], self.scores[b]], axis=1)
        empty = ways == EMPTY_KEY
        has_empty = empty.any(axis=1)
        at = np.where(has_empty, np.argmax(empty, axis=1), np.argmin(scores, axis=1))
        sets = np.where(at < WAYS, a, b)
        way = at % WAYS
        start = np.maximum(self.floors[a], self.floors[b])
        evicting = ~has_empty
        victim_score = self.scores[sets[evicting], way[evicting]]
        self.floors[sets[evicting]] = victim_score
        start[evicting] = victim_score
        self.keys[sets, way] = k
        self.scores[sets, way] = start + np.uint32(1)
        self.values[sets, way] = rows
        return int(k.size)

    def load(self, slot_keys: np.ndarray, slot_rows: np.ndarray, vectors: np.ndarray) -> int:
        """Start-up prefill: slot s gets key ``slot_keys[s]`` and row ``vectors[slot_rows[s]]``
        (prefill_plan.py; -1 / EMPTY_KEY: free); every loaded key scores 1, as a key inserted
        into an empty set does. Returns the keys loaded."""
        slot_keys = np.asarray(slot_keys, np.int64).reshape(self.num_sets, WAYS)
        slot_rows = np.asarray(slot_rows, np.int64).reshape(self.num_sets, WAYS)
        used = slot_keys != EMPTY_KEY
        self.keys[:] = slot_keys
        self.scores[:] = used.astype(np.uint32)
        self.floors[:] = 0
        self.values[:] = 0
        self.values[used] = np.asarray(vectors, np.float32)[slot_rows[used]]
        return int(used.sum())

    def update(self, keys: np.ndarray, rows: np.ndarray) -> int:
        """Overwrite the rows of cached keys (absent keys ignored); returns how many."""
        keys = np.ascontiguousarray(keys, dtype=np.int64)
        rows = np.ascontiguousarray(rows, dtype=np.float32).reshape(keys.size, self.dim)
        sets, way = self._find(keys)
        hit = way >= 0
        self.values[sets[hit], way[hit]] = rows[hit]
        return int(hit.sum())

    def invalidate(self, keys: np.ndarray) -> int:
        """Remove keys (absent keys ignored); returns how many were cached."""
        keys = np.unique(np.ascontiguousarray(keys, dtype=np.int64))
        sets, way = self._find(keys)
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
