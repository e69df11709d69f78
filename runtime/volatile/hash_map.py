"""The in-process volatile tier: a vectorized, partitioned open-addressing hash table in NumPy.

Layout (one instance per embedding table):

- ``num_partitions`` partitions, as in HPS: key ``k`` lives in partition ``mix64(k) % P`` (HPS's
  rrxmrrxmsx_0 mixer), and ``overflow_margin`` bounds each partition's size.
- One flat slot array holds every partition as a contiguous segment of ``C`` slots; a slot is
  (key, row) in 16 bytes, row ``-1`` = empty, ``-2`` = deleted (tombstone). Inside a segment the
  home slot is ``(hi32(mix64(k)) * C) >> 32`` and collisions probe linearly, wrapping inside the
  segment. Tombstones are dropped when the slots are rebuilt (load above 70 %).
- Vectors live in a dense row store ``(rows, dim) float32`` with a free list; a slot points at
  its row. The store grows by 25 % at a time (exactly to size when the load size is known), so
  memory stays near the raw bytes: 16 B per slot at ≥ 45 % load plus 8 B of access metadata per
  row (LFU/LRU only) — about 1.06× the raw keys + vectors at dim 128 (HPS's map used 10×).
- Every operation is a handful of whole-array NumPy steps per probe round (no Python loop per
  key); a batch needs about 1 + 1/(1-load)² rounds, each on the keys still unresolved.
  Lookups (``get``, ``contains`` and the probes of ``insert`` and ``remove``) go through the
  compiled probe of runtime/native instead when it is available: one C pass over the keys, no
  fixed cost of a dozen NumPy calls per batch, the same answers.

Overflow (HPS semantics, made a hard cap): before new keys go into a partition that would exceed
``overflow_margin``, entries are evicted from it by ``overflow_policy`` until it holds
``round(margin × overflow_resolution_target)`` (fewer when the incoming keys need the room,
more when the batch's keys already held would not fit otherwise):
``evict_random``; ``evict_least_used`` (lowest access count: lookups count +1, an insert resets
to 0, as in HPS); ``evict_oldest`` (least recently inserted or looked up, by a logical clock).
Keys of the same insert batch are evicted last. ``insert`` returns the keys that are no longer
held (evicted, or new keys beyond the margin), so callers and tests know exactly what fell
through to the next tier.

Thread safety: lookups share a readers-writer lock; inserts, removals and rebuilds are exclusive.
"""

from __future__ import annotations

import numpy as np

from ..errors import InvalidInputError
from ..hashing import mix64
from ..key_arrays import is_int64_vector
from ..native.hash_probe import address, hash_probe
from ..rwlock import RWLock

EMPTY = -1
TOMBSTONE = -2
POLICIES = ("evict_random", "evict_least_used", "evict_oldest")
_MAX_LOAD = 0.70  # rebuild the slots when live + tombstones exceed this share of a segment
_GROW_LOAD = 0.45  # load right after a rebuild
_ROW_GROWTH = 1.25
_MIN_SEGMENT = 8
_UNLIMITED = 2**63 - 1
_WINDOW = 16  # slots _find_vectorized reads from each key's home in one gather
_WINDOW_OFFSETS = np.arange(_WINDOW, dtype=np.int64)


def check_table_options(
    dim, num_partitions, overflow_margin, overflow_policy, overflow_resolution_target
) -> None:
    """The checks every in-memory volatile table (in-process or shared) makes of its options."""
    if int(dim) <= 0:
        raise InvalidInputError(f"dim must be positive, got {dim}", location="dim")
    if int(num_partitions) < 1:
        raise InvalidInputError(
            f"num_partitions must be at least 1, got {num_partitions}",
            location="volatile_db.num_partitions",
        )
    if overflow_policy not in POLICIES:
        raise InvalidInputError(
            f"unknown overflow_policy '{overflow_policy}'",
            location="volatile_db.overflow_policy",
            hint="use one of " + ", ".join(POLICIES),
        )
    if not 0.0 < float(overflow_resolution_target) <= 1.0:
        raise InvalidInputError(
            f"overflow_resolution_target must lie in (0, 1], got {overflow_resolution_target}",
            location="volatile_db.overflow_resolution_target",
        )
    if overflow_margin is not None and int(overflow_margin) < 0:
        raise InvalidInputError(
            f"overflow_margin must not be negative, got {overflow_margin}",
            location="volatile_db.overflow_margin",
        )


def dedupe_last(keys: np.ndarray, *columns: np.ndarray) -> tuple[np.ndarray, ...]:
    """Drop repeated keys, keeping each key's last occurrence (as HPS's upserts do), in order."""
    if keys.size < 2:
        return (keys, *columns)
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    last = np.empty(keys.size, dtype=bool)
    last[-1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=last[:-1])
    if last.all():
        return (keys, *columns)
    keep = np.sort(order[last])
    return (keys[keep], *(c[keep] for c in columns))


_NO_ADDRESSES = (None, None, 0, 0)  # HashMapTable._addresses before a lookup
_FLOAT32 = np.dtype(np.float32)


def check_keys(keys) -> np.ndarray:
    """``keys`` as a 1-D int64 array (the in-memory maps' argument check)."""
    if is_int64_vector(keys):
        return keys  # the common case, decided without NumPy calls
    keys = np.asarray(keys)
    if keys.ndim != 1:
        raise InvalidInputError(f"keys must be 1-D, got shape {keys.shape}", location="keys")
    if keys.dtype != np.int64:
        if keys.size and not np.issubdtype(keys.dtype, np.integer):
            raise InvalidInputError(f"keys must be integers, got {keys.dtype}", location="keys")
        keys = keys.astype(np.int64)
    return keys


_NO_FAILURES = np.zeros(1 << 16, dtype=bool)
_NO_FAILURES.flags.writeable = False


def no_failures(n: int) -> np.ndarray:
    """``failed`` of a lookup of ``n`` keys in memory (memory does not fail): a read-only view
    of one shared all-false array when it is long enough (no allocation per lookup)."""
    return _NO_FAILURES[:n] if n <= _NO_FAILURES.size else np.zeros(n, dtype=bool)


class HashMapTable:
    """One embedding table in memory: int64 keys → float32 vectors of size ``dim``.

    Args:
        dim: floats per vector.
        num_partitions: HPS's ``num_partitions`` (partition = mix64(key) % num_partitions).
        overflow_margin: the most entries one partition may hold (None or ≥ 2^63: unlimited).
        overflow_policy: ``evict_random``, ``evict_least_used`` or ``evict_oldest``.
        overflow_resolution_target: on overflow, shrink the partition to
            ``round(overflow_margin × target)`` entries.
        reserve: keys to make room for up front (avoids regrowing during a load of known size).
        seed: seeds the random eviction.
    """

    def __init__(
        self,
        dim: int,
        *,
        num_partitions: int = 16,
        overflow_margin: int | None = None,
        overflow_policy: str = "evict_random",
        overflow_resolution_target: float = 0.8,
        reserve: int = 0,
        seed: int = 0,
    ):
        check_table_options(
            dim, num_partitions, overflow_margin, overflow_policy, overflow_resolution_target
        )
        self.dim = int(dim)
        self.num_partitions = int(num_partitions)
        margin = _UNLIMITED if overflow_margin is None else min(int(overflow_margin), _UNLIMITED)
        self.overflow_margin = margin
        self.overflow_policy = overflow_policy
        self.overflow_resolution_target = float(overflow_resolution_target)
        self._resolve_to = (
            int(round(margin * self.overflow_resolution_target))
            if margin < _UNLIMITED
            else _UNLIMITED
        )
        self._rng = np.random.default_rng(seed)
        self._lock = RWLock()
        self._live = np.zeros(self.num_partitions, dtype=np.int64)
        self._tomb = np.zeros(self.num_partitions, dtype=np.int64)
        self._segment = _MIN_SEGMENT
        self._slots = self._empty_slots(self._segment)
        self._vectors = np.empty((0, self.dim), dtype=np.float32)
        self._meta = np.empty(0, dtype=np.int64) if self._tracks_access else None
        self._top = 0  # rows [0, _top) have been handed out at least once
        self._free = np.empty(0, dtype=np.int64)
        self._nfree = 0
        self._clock = 0
        self.evictions = 0
        if reserve:
            self.reserve(int(reserve))

    # ---------------------------------------------------------------- sizes

    @property
    def _tracks_access(self) -> bool:
        return self.overflow_policy != "evict_random"

    def __len__(self) -> int:
        return int(self._live.sum())

    @property
    def capacity(self) -> int | None:
        """HPS's capacity: ``max(margin × partitions, margin)``; None when unlimited."""
        if self.overflow_margin >= _UNLIMITED:
            return None
        return max(self.overflow_margin * self.num_partitions, self.overflow_margin)

    def partition_sizes(self) -> np.ndarray:
        return self._live.copy()

    @property
    def nbytes(self) -> int:
        """Bytes held by the table's arrays (slots, vectors, metadata, free list)."""
        meta = self._meta.nbytes if self._meta is not None else 0
        return self._slots.nbytes + self._vectors.nbytes + meta + self._free.nbytes

    def reserve(self, num_keys: int) -> None:
        """Make room for ``num_keys`` keys in total (rows and slots), without growing later."""
        with self._lock.write():
            want = min(num_keys, self.capacity) if self.capacity is not None else num_keys
            self._ensure_rows(max(0, want - len(self)))
            per_partition = int(np.ceil(want / self.num_partitions * 1.15)) + 16
            if per_partition > _MAX_LOAD * self._segment:
                self._rebuild(self._segment_for(per_partition))

    # ---------------------------------------------------------------- public operations

    def get(
        self, keys: np.ndarray, out: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Vectors of ``keys``: returns ``(out, hit, failed)``; rows of misses in ``out`` are
        untouched. ``failed`` (the VolatileTable seam's report of keys a tier could not ask) is
        all false: memory does not fail.

        ``out`` (``(n, dim)`` float32) is allocated when not given (miss rows then hold zeros).
        """
        keys = self._check_keys(keys)
        if out is None:
            out = np.zeros((keys.size, self.dim), dtype=np.float32)
        elif out.shape != (keys.size, self.dim) or (
            out.dtype is not _FLOAT32 and out.dtype != np.float32
        ):
            raise InvalidInputError(
                f"out must be float32 ({keys.size}, {self.dim}), got {out.dtype} {out.shape}",
                location="out",
            )
        probe = hash_probe() if out.flags.c_contiguous else None
        if probe is not None:
            keys = np.ascontiguousarray(keys)
            hit = np.empty(keys.size, dtype=bool)
            with self._lock.read():
                rows = probe.get(
                    self._slots,
                    self.num_partitions,
                    self._segment,
                    keys,
                    self._vectors,
                    out,
                    hit,
                    self._table_addresses(),
                )
                if rows.size:
                    self._touch(rows)
            return out, hit, no_failures(keys.size)
        with self._lock.read():
            slots = self._find(keys)
            hit = slots >= 0
            found = np.flatnonzero(hit)
            if found.size:
                rows = self._slots[slots[found], 1]
                if found.size == keys.size:
                    np.take(self._vectors, rows, axis=0, out=out)
                else:
                    out[found] = np.take(self._vectors, rows, axis=0)
                self._touch(rows)
        return out, hit, no_failures(keys.size)

    def contains(self, keys: np.ndarray) -> np.ndarray:
        keys = self._check_keys(keys)
        with self._lock.read():
            return self._find(keys) >= 0

    def insert(self, keys: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        """Upsert ``keys`` → ``vectors`` (a repeated key keeps its last vector).

        Returns the keys this call left out of the table: entries evicted to make room and new
        keys beyond a partition's margin (int64, possibly empty).
        """
        keys = self._check_keys(keys)
        vectors = self._check_vectors(vectors, keys.size)
        if not keys.size:
            return np.empty(0, dtype=np.int64)
        keys, vectors = dedupe_last(keys, vectors)
        with self._lock.write():
            return self._insert(keys, vectors)

    def remove(self, keys: np.ndarray) -> int:
        """Remove ``keys``; returns how many were present."""
        keys = self._check_keys(keys)
        if not keys.size:
            return 0
        keys = np.unique(keys)
        with self._lock.write():
            slots = self._find(keys)
            slots = slots[slots >= 0]
            self._delete_slots(slots)
            return int(slots.size)

    def keys(self) -> np.ndarray:
        """Every key held (in slot order)."""
        with self._lock.read():
            occupied = np.flatnonzero(self._slots[:, 1] >= 0)
            return self._slots[occupied, 0].copy()

    def clear(self) -> None:
        with self._lock.write():
            self._slots = self._empty_slots(self._segment)
            self._addresses = _NO_ADDRESSES  # lets the old slots go now
            self._live[:] = 0
            self._tomb[:] = 0
            self._free = np.arange(self._top, dtype=np.int64)[::-1].copy()
            self._nfree = self._top

    # ---------------------------------------------------------------- hashing and probing

    def _empty_slots(self, segment: int) -> np.ndarray:
        slots = np.empty((segment * self.num_partitions, 2), dtype=np.int64)
        slots[:, 0] = 0
        slots[:, 1] = EMPTY
        return slots

    @staticmethod
    def _segment_for(entries: int) -> int:
        return max(_MIN_SEGMENT, int(np.ceil(entries / _GROW_LOAD)))

    def _partition_and_home(self, keys: np.ndarray, segment: int) -> tuple[np.ndarray, np.ndarray]:
        h = mix64(keys)
        parts = self.num_partitions
        if parts & (parts - 1) == 0:
            part = (h & np.uint64(parts - 1)).astype(np.int64)
        else:
            part = (h % np.uint64(parts)).astype(np.int64)
        np.right_shift(h, np.uint64(32), out=h)
        np.multiply(h, np.uint64(segment), out=h)
        np.right_shift(h, np.uint64(32), out=h)
        home = h.view(np.int64)
        home += part * segment
        return part, home

    def partition_of(self, keys: np.ndarray) -> np.ndarray:
        """HPS's partition of each key (``mix64(key) % num_partitions``)."""
        return self._partition_and_home(self._check_keys(keys), self._segment)[0]

    def _find(self, keys: np.ndarray) -> np.ndarray:
        """Slot of each key, or -1 when absent: the compiled probe's answer when it is
        available (one pass over the keys), else ``_find_vectorized``'s (the same)."""
        probe = hash_probe()
        if probe is None:
            return self._find_vectorized(keys)
        return probe.find(
            self._slots, self.num_partitions, self._segment, np.ascontiguousarray(keys)
        )

    def _find_vectorized(self, keys: np.ndarray) -> np.ndarray:
        """Slot of each key, or -1 when absent, in NumPy.

        First one gather of ``_WINDOW`` slots from each key's home (a live key never sits
        behind an empty slot of its probe sequence, so a hit anywhere in the window is the
        key, and an empty slot before any hit means absent); keys whose window is all occupied
        and holds no hit go on probing one slot per round. At loads up to 70 % that is a few
        keys in a thousand: a batch costs a dozen NumPy calls instead of a dozen per round."""
        n = keys.size
        found = np.full(n, -1, dtype=np.int64)
        if not n or not self._live.any():
            return found
        segment = self._segment
        part, home = self._partition_and_home(keys, segment)
        end = part
        end *= segment
        end += segment
        window = _WINDOW if segment >= _WINDOW else _MIN_SEGMENT  # a multiple of 8 (see below)
        slots = home[:, None] + _WINDOW_OFFSETS[:window]
        np.subtract(slots, segment, out=slots, where=slots >= end[:, None])  # wrap in segment
        pairs = np.take(self._slots, slots, axis=0)
        hit = pairs[:, :, 0] == keys[:, None]
        hit &= pairs[:, :, 1] >= 0
        at, col = np.nonzero(hit)  # a live key is in one slot: at most one hit per row
        found[at] = slots[at, col]
        # Rows whose window holds neither the key nor an empty slot probe on. A row of
        # `window` booleans is window / 8 machine words: OR them instead of reducing rows.
        words = (hit | (pairs[:, :, 1] == EMPTY)).view(np.uint64)
        stop = words[:, 0]
        for j in range(1, words.shape[1]):
            stop = stop | words[:, j]
        rest = np.flatnonzero(stop == 0)
        if rest.size:
            after = slots[rest, -1] + 1
            after[after == end[rest]] -= segment
            found[rest] = self._probe(keys[rest], after, end[rest])
        return found

    def _probe(self, wanted: np.ndarray, slot: np.ndarray, end: np.ndarray) -> np.ndarray:
        """Linear probing from ``slot`` (inside segments ending at ``end``), one slot a round."""
        segment = self._segment
        found = np.full(wanted.size, -1, dtype=np.int64)
        index = None  # positions in `wanted` still probing (None: all)
        table = self._slots
        while True:
            pairs = np.take(table, slot, axis=0)
            rows = pairs[:, 1]
            hit = pairs[:, 0] == wanted
            hit &= rows >= 0
            at = np.flatnonzero(hit)
            if at.size:
                found[at if index is None else index[at]] = slot[at]
            more = rows != EMPTY
            more &= ~hit
            go_on = np.flatnonzero(more)
            if not go_on.size:
                return found
            index = go_on if index is None else index[go_on]
            slot = slot[go_on] + 1
            end = end[go_on]
            wanted = wanted[go_on]
            wrapped = slot == end
            if wrapped.any():
                slot[wrapped] -= segment

    def _place(self, keys: np.ndarray, rows: np.ndarray) -> None:
        """Put absent, distinct ``keys`` (pointing at ``rows``) into their first empty slot."""
        segment = self._segment
        _, slot = self._partition_and_home(keys, segment)
        end = (slot // segment) * segment + segment
        flat = self._slots.reshape(-1)
        pending = np.arange(keys.size, dtype=np.int64)
        while pending.size:
            row_at = flat[2 * slot + 1]
            empty = np.flatnonzero(row_at == EMPTY)
            won = np.zeros(pending.size, dtype=bool)
            if empty.size:
                target = slot[empty]
                claim = -3 - pending[empty]
                flat[2 * target + 1] = claim  # one claimant per slot lands; it wins
                winners = flat[2 * target + 1] == claim
                won_at = empty[winners]
                won[won_at] = True
                cells = 2 * target[winners]
                flat[cells] = keys[pending[won_at]]
                flat[cells + 1] = rows[pending[won_at]]
            rest = np.flatnonzero(~won)
            pending = pending[rest]
            slot = slot[rest] + 1
            end = end[rest]
            wrapped = slot == end
            if wrapped.any():
                slot[wrapped] -= segment

    def _rebuild(self, segment: int) -> None:
        """Rehash every live entry into segments of ``segment`` slots (drops tombstones)."""
        occupied = np.flatnonzero(self._slots[:, 1] >= 0)
        keys = self._slots[occupied, 0].copy()
        rows = self._slots[occupied, 1].copy()
        self._segment = segment
        self._slots = self._empty_slots(segment)
        self._addresses = _NO_ADDRESSES  # lets the old slots go now
        self._tomb[:] = 0
        if keys.size:
            self._place(keys, rows)

    def _ensure_slots(self, incoming: np.ndarray) -> None:
        used = self._live + self._tomb + incoming
        if (used > _MAX_LOAD * self._segment).any():
            need = int((self._live + incoming).max())
            self._rebuild(
                max(
                    self._segment if need <= _GROW_LOAD * self._segment else 0,
                    self._segment_for(need),
                )
            )

    # ---------------------------------------------------------------- rows and metadata

    def _ensure_rows(self, extra: int) -> None:
        needed = self._top + max(0, extra - self._nfree)
        if needed <= self._vectors.shape[0]:
            return
        size = (
            max(needed, int(self._vectors.shape[0] * _ROW_GROWTH) + 16)
            if self._vectors.shape[0]
            else needed
        )
        grown = np.empty((size, self.dim), dtype=np.float32)
        grown[: self._top] = self._vectors[: self._top]
        self._vectors = grown
        self._addresses = _NO_ADDRESSES  # lets the old rows go now
        if self._meta is not None:
            meta = np.zeros(size, dtype=np.int64)
            meta[: self._top] = self._meta[: self._top]
            self._meta = meta

    def _alloc_rows(self, count: int) -> np.ndarray:
        self._ensure_rows(count)
        reused = min(count, self._nfree)
        rows = self._free[self._nfree - reused : self._nfree].copy()
        self._nfree -= reused
        fresh = count - reused
        if fresh:
            rows = np.concatenate([rows, np.arange(self._top, self._top + fresh, dtype=np.int64)])
            self._top += fresh
        return rows

    def _free_rows(self, rows: np.ndarray) -> None:
        if self._nfree + rows.size > self._free.size:
            grown = np.empty(max(self._nfree + rows.size, 2 * self._free.size), dtype=np.int64)
            grown[: self._nfree] = self._free[: self._nfree]
            self._free = grown
        self._free[self._nfree : self._nfree + rows.size] = rows
        self._nfree += rows.size

    def _touch(self, rows: np.ndarray) -> None:
        if self._meta is None:
            return
        if self.overflow_policy == "evict_least_used":
            self._meta[rows] += 1  # a repeated key in one batch counts once: fine for eviction
        else:
            self._clock += 1
            self._meta[rows] = self._clock

    def _reset_access(self, rows: np.ndarray) -> None:
        if self._meta is None:
            return
        if self.overflow_policy == "evict_least_used":
            self._meta[rows] = 0
        else:
            self._clock += 1
            self._meta[rows] = self._clock

    # ---------------------------------------------------------------- insert, evict, delete

    def _insert(self, keys: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        slots = self._find(keys)
        present = np.flatnonzero(slots >= 0)
        if present.size:
            rows = self._slots[slots[present], 1]
            self._vectors[rows] = vectors[present]
            self._reset_access(rows)
        new = np.flatnonzero(slots < 0)
        if not new.size:
            return np.empty(0, dtype=np.int64)
        part = self._partition_and_home(keys[new], self._segment)[0]
        dropped: list[np.ndarray] = []
        evicted: list[np.ndarray] = []
        if self.overflow_margin < _UNLIMITED:
            new, part = self._make_room(keys, new, part, slots[present], dropped, evicted)
        if new.size:
            incoming = np.bincount(part, minlength=self.num_partitions)
            self._ensure_slots(incoming)
            rows = self._alloc_rows(new.size)
            self._vectors[rows] = vectors[new]
            self._reset_access(rows)
            self._place(keys[new], rows)
            self._live += incoming
        out = dropped + evicted
        return np.concatenate(out) if out else np.empty(0, dtype=np.int64)

    def _make_room(self, keys, new, part, protected_slots, dropped, evicted):
        """Evict (and drop new keys) so that no partition ends above the margin."""
        margin = self.overflow_margin
        incoming = np.bincount(part, minlength=self.num_partitions)
        # Keys of this batch already held (just updated) in each partition: the resolution
        # target must not push them out, or their new values would be lost.
        held = (
            np.bincount(protected_slots // self._segment, minlength=self.num_partitions)
            if protected_slots.size
            else np.zeros(self.num_partitions, dtype=np.int64)
        )
        keep_new = np.ones(new.size, dtype=bool)
        for p in np.flatnonzero(self._live + incoming > margin):
            arriving = int(incoming[p])
            if arriving > margin:  # more new keys than fit: keep the batch's last `margin`
                mine = np.flatnonzero(part == p)
                lost = mine[: arriving - margin]
                keep_new[lost] = False
                dropped.append(keys[new[lost]])
                arriving = margin
            survivors = max(0, min(max(self._resolve_to, int(held[p])), margin - arriving))
            count = int(self._live[p]) - survivors
            if count > 0:
                evicted.append(self._evict(int(p), count, protected_slots))
        if not keep_new.all():
            new, part = new[keep_new], part[keep_new]
        return new, part

    def _evict(self, partition: int, count: int, protected_slots: np.ndarray) -> np.ndarray:
        first = partition * self._segment
        segment = self._slots[first : first + self._segment]
        local = np.flatnonzero(segment[:, 1] >= 0)
        rows = segment[local, 1]
        if self.overflow_policy == "evict_random":
            score = self._rng.random(local.size)
        else:
            score = self._meta[rows].astype(np.float64)
        if protected_slots.size:
            mine = (
                protected_slots[
                    (protected_slots >= first) & (protected_slots < first + self._segment)
                ]
                - first
            )
            score[np.isin(local, mine)] = np.inf  # keys of this very batch go last
        if count < local.size:
            victims = local[np.argpartition(score, count - 1)[:count]]
        else:
            victims = local
        gone = segment[victims, 0].copy()
        self._delete_slots(victims + first)
        self.evictions += int(victims.size)
        return gone

    def _delete_slots(self, slots: np.ndarray) -> None:
        if not slots.size:
            return
        rows = self._slots[slots, 1].copy()
        self._slots[slots, 1] = TOMBSTONE
        counts = np.bincount(slots // self._segment, minlength=self.num_partitions)
        self._live -= counts
        self._tomb += counts
        self._free_rows(rows)

    # ---------------------------------------------------------------- argument checks

    @staticmethod
    def _check_keys(keys: np.ndarray) -> np.ndarray:
        return check_keys(keys)

    _addresses = _NO_ADDRESSES

    def _table_addresses(self) -> tuple[int, int]:
        """The data addresses of the slots and the vectors (for the compiled probe), under the
        caller's lock. Kept with the arrays they belong to, so an array replaced by any path
        (growth, rebuild) is addressed again, never read at a stale address; the paths that
        replace them drop the kept ones, so that the old arrays are freed at once."""
        slots, vectors, at_slots, at_vectors = self._addresses
        if slots is not self._slots or vectors is not self._vectors:
            slots, vectors = self._slots, self._vectors
            at_slots, at_vectors = address(slots), address(vectors)
            self._addresses = (slots, vectors, at_slots, at_vectors)
        return at_slots, at_vectors

    def _check_vectors(self, vectors: np.ndarray, n: int) -> np.ndarray:
        vectors = np.asarray(vectors)
        if vectors.shape != (n, self.dim):
            raise InvalidInputError(
                f"vectors must have shape ({n}, {self.dim}), got {vectors.shape}",
                location="vectors",
            )
        return np.ascontiguousarray(vectors, dtype=np.float32)
