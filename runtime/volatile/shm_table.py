"""``multi_process_hash_map``: one table in a shared-memory segment (shm_segment.py), read and
updated by every process of the host that opened the same segment. Same behaviour as the
in-process ``HashMapTable`` (HPS's partitions, overflow margin and policies, keys of a batch
evicted last, ``insert`` returning what it left out), with a fixed room per partition.

Layout (shm_layout.py): per partition an open-addressing index (key → row) over rows that each
carry a commit stamp and their key beside the vector; the rows are the truth, the index can be
rebuilt from them.

Concurrency:

- Writers (insert, remove, clear) take the partition's lock (shm_locks.ByteLock: a thread lock
  and a kernel lock on one byte of the segment file, dropped by the kernel when its process
  dies) and make the partition's write sequence number odd while they change it. A batch locks
  its partitions one at a time, in ascending order.
- No row is rewritten while live: an update writes the new vector into a free row, commits it
  (its stamp, written last), points the index at it and then frees the old row (stamp 0 first),
  so a reader sees the old or the new vector, never a mix. Stamps only grow, per partition.
- Readers take no lock (x86-64, where loads are not reordered with other loads nor stores with
  other stores): a hit counts when the row's stamp, read before and after the copy, is the same
  and non-zero and the copy holds the key asked for; a miss counts when the partition's index
  epoch (odd while its index is rebuilt: the only time slots become empty) did not change during
  the probe. Other keys are read again, and after a few tries under the partition's lock. On
  other architectures every read takes the locks.
- A writer killed mid-update leaves its partition's sequence number odd. The next process that
  takes the lock rebuilds that partition from its rows (a key committed twice keeps the newer
  row) before it goes on; lock-free reads go on meanwhile.

Access metadata (LFU counts, LRU clock) is updated by readers without a lock: a count lost to
a race only shifts what is evicted.
"""

from __future__ import annotations

import logging
import platform
import threading
import time
from contextlib import ExitStack, contextmanager
from typing import Iterator

import numpy as np

from ..errors import CapacityError, ConfigError, HpsError, InvalidInputError
from ..hashing import mix64
from ..native.hash_probe import RETRY, ShmTable, address, hash_probe
from . import shm_layout as L
from .hash_map import (
    EMPTY,
    TOMBSTONE,
    check_keys,
    check_table_options,
    dedupe_last,
    no_failures,
)
from .shm_segment import SharedSegment, TableSpec

log = logging.getLogger("hps_cli.runtime")

LOCK_FREE_READS = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")
_TRIES = 6  # optimistic reads of a key before taking its partition's lock
_CHECK_EVERY = 32  # probe rounds of a reader between looks at the index epochs
_UNLIMITED = 2**63 - 1
_RETRY = RETRY  # probe result: the partition's index was rebuilt under the reader
_SCRATCH_KEPT = 64 << 20  # bytes of copy buffer each thread keeps between lookups
_scratch = threading.local()


class SharedHashMapTable:
    """One embedding table in a shared-memory segment: int64 keys → float32 vectors.

    Args:
        segment: the open segment (``SharedSegment``).
        tag: the table's storage tag (``hps_et.<model>.<table>``): its name in the segment.
        dim: floats per vector.
        num_partitions, overflow_margin, overflow_policy, overflow_resolution_target: as
            ``HashMapTable`` (HPS's volatile_db fields).
        expected_keys: the table file's keys: each partition gets room for its share of
            them × 1.25 (or ``overflow_margin`` entries, when that is smaller; see
            ``shm_layout.partition_room``). Without a margin, inserting beyond the room raises
            ``CapacityError``.
        seed: seeds the random eviction.
        lock_free_reads: read without taking locks (default: on x86-64).

    Every process that opens the same tag must pass the same layout (dim, partitions, margin,
    policy, target); a larger room already in the segment is used as it is.
    """

    def __init__(
        self,
        segment: SharedSegment,
        tag: str,
        dim: int,
        *,
        num_partitions: int = 16,
        overflow_margin: int | None = None,
        overflow_policy: str = "evict_random",
        overflow_resolution_target: float = 0.8,
        expected_keys: int = 0,
        seed: int = 0,
        lock_free_reads: bool | None = None,
    ):
        check_table_options(
            dim, num_partitions, overflow_margin, overflow_policy, overflow_resolution_target
        )
        self.spec = table_spec(
            tag,
            dim,
            num_partitions=num_partitions,
            overflow_margin=overflow_margin,
            overflow_policy=overflow_policy,
            overflow_resolution_target=overflow_resolution_target,
            expected_keys=expected_keys,
        )
        margin, parts = self.spec.margin, self.spec.partitions
        self.dim = int(dim)
        self.num_partitions = parts
        self.overflow_policy = overflow_policy
        self.overflow_margin = _UNLIMITED if margin is None else margin
        self.overflow_resolution_target = float(overflow_resolution_target)
        self._resolve_to = (
            int(round(margin * self.overflow_resolution_target)) if margin is not None else 0
        )
        self._lock_free = LOCK_FREE_READS if lock_free_reads is None else bool(lock_free_reads)
        self._rng = np.random.default_rng(seed)
        self._segment = segment
        self._entry = segment.reserve([self.spec])[0]
        self._attach()

    # ---------------------------------------------------------------- mapping

    def _attach(self) -> None:
        entry = self._segment.entry(self._entry)
        self.room = int(entry["room"])
        self.layout = layout = L.table_layout(self.dim, self.num_partitions, self.room)
        # Evict at the margin when it fits the room; else the room is a hard limit.
        self._evicts = self.overflow_margin <= self.room
        region = self._segment.region(self._entry)
        parts, rows, slots = self.num_partitions, layout.rows, layout.slots
        self._R, self._S = rows, slots

        def ints(offset: int, count: int) -> np.ndarray:
            return region[offset : offset + 8 * count].view(np.int64)

        headers = ints(layout.headers, (parts + 1) * L.HEADER_COLUMNS)
        self._headers = headers.reshape(parts + 1, L.HEADER_COLUMNS)
        self._part = self._headers[1:]
        self._seq = self._part[:, L.SEQ]
        self._epoch = self._part[:, L.EPOCH]
        self._index = ints(layout.index, parts * slots * 2).reshape(parts * slots, 2)
        self._meta = ints(layout.meta, parts * rows)
        self._free = ints(layout.free, parts * rows)
        # Each row: stamp and key (int64 words 0 and 1), then the vector (float32 from word 4).
        self._half = layout.width // 2
        self._words = ints(layout.row_data, parts * rows * self._half)
        self._rows = self._words.view(np.float32).reshape(parts * rows, layout.width)
        self._stamps = self._words.reshape(parts * rows, self._half)[:, 0]
        self._row_keys = self._words.reshape(parts * rows, self._half)[:, 1]
        self._vectors = self._rows[:, L.ROW_HEADER : L.ROW_HEADER + self.dim]
        self._locks = self._segment.partition_locks(self._entry, parts)
        self._native_args: tuple | None = None  # _native_table, made at first use
        self._segment.add_user(self)

    def detach(self) -> None:
        """Drop the views of the segment (its ``close`` calls this); later calls raise."""
        self._headers = self._part = self._seq = self._epoch = self._index = None
        self._meta = self._free = self._words = self._rows = None
        self._stamps = self._row_keys = self._vectors = None
        self._native_args = None

    def _check_attached(self) -> None:
        if self._index is None:
            raise ConfigError(
                f"table {self.spec.tag} of shared-memory segment {self._segment.path} is closed",
                location="$.volatile_db",
                hint="the HPS that opened it was closed",
            )

    # ---------------------------------------------------------------- sizes

    def __len__(self) -> int:
        self._check_attached()
        return int(self._part[:, L.LIVE].sum())

    @property
    def capacity(self) -> int:
        """Entries the table can hold: ``room`` per partition."""
        return self.room * self.num_partitions

    @property
    def nbytes(self) -> int:
        """Bytes of the table's region in the segment."""
        return self.layout.nbytes

    @property
    def evictions(self) -> int:
        self._check_attached()
        return int(self._part[:, L.EVICTED].sum())

    def partition_sizes(self) -> np.ndarray:
        self._check_attached()
        return self._part[:, L.LIVE].copy()

    def partition_of(self, keys: np.ndarray) -> np.ndarray:
        """HPS's partition of each key (``mix64(key) % num_partitions``)."""
        return self._locate(check_keys(keys))[0]

    # ---------------------------------------------------------------- the load record

    @contextmanager
    def loading(self) -> Iterator[None]:
        """Hold the table's load lock: one process loads it while the others wait."""

        def waiting() -> None:
            log.info("shared memory: waiting for another process to load %s", self.spec.tag)

        with self._segment.load_lock(self._entry).held(on_wait=waiting):
            yield

    def read_record(self) -> dict | None:
        """The record of a complete load (None while none is complete)."""
        return self._segment.read_record(self._entry)

    def mark_loading(self) -> None:
        """A load starts: until ``write_record``, the table counts as not loaded."""
        self._segment.mark_loading(self._entry)

    def write_record(self, record: dict) -> None:
        self._segment.write_record(self._entry, record)

    # ---------------------------------------------------------------- lookups

    def get(
        self, keys: np.ndarray, out: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Vectors of ``keys``: ``(out, hit, failed)``; rows of misses in ``out`` are untouched
        and ``failed`` is all false (as ``HashMapTable.get``)."""
        keys = check_keys(keys)
        if out is None:
            out = np.zeros((keys.size, self.dim), dtype=np.float32)
        elif out.shape != (keys.size, self.dim) or out.dtype != np.float32:
            raise InvalidInputError(
                f"out must be float32 ({keys.size}, {self.dim}), got {out.dtype} {out.shape}",
                location="out",
            )
        hit = np.zeros(keys.size, dtype=bool)
        self._check_attached()
        if keys.size:
            self._read(keys, out, hit)
        return out, hit, no_failures(keys.size)

    def contains(self, keys: np.ndarray) -> np.ndarray:
        keys = check_keys(keys)
        hit = np.zeros(keys.size, dtype=bool)
        self._check_attached()
        if keys.size:
            self._read(keys, None, hit)
        return hit

    def keys(self) -> np.ndarray:
        """Every key held (partition by partition)."""
        self._check_attached()
        found = []
        for p in range(self.num_partitions):
            with self._holding([p]):
                segment = self._index[p * self._S : (p + 1) * self._S]
                found.append(segment[segment[:, 1] >= 0, 0].copy())
        return np.concatenate(found)

    def _read(self, keys: np.ndarray, out: np.ndarray | None, hit: np.ndarray) -> None:
        probe = hash_probe() if self._lock_free else None
        if probe is not None and (out is None or out.flags.c_contiguous):
            self._read_compiled(probe, np.ascontiguousarray(keys), out, hit)
            return
        part, home = self._locate(keys)
        pending = np.arange(keys.size)
        if self._lock_free:
            for _ in range(_TRIES):
                pending = self._read_optimistic(keys, part, home, pending, out, hit)
                if not pending.size:
                    return
                time.sleep(0)  # let the writer of those partitions finish
        self._read_locked(keys[pending], part[pending], home[pending], pending, out, hit)

    def _read_optimistic(self, keys, part, home, pending, out, hit) -> np.ndarray:
        """One lock-free read of ``keys[pending]``; returns the positions to read again.

        A hit counts when its row held that key, committed, from before the copy to after it
        (same non-zero stamp): a live row is never rewritten, so the copy is that key's vector.
        A miss counts when its partition's index was not rebuilt meanwhile (the epoch): only a
        rebuild empties slots, so only a rebuild can hide a key from a probe."""
        every = pending.size == keys.size
        k, p, s = (keys, part, home) if every else (keys[pending], part[pending], home[pending])
        epoch = np.take(self._epoch, p)
        slots, rows = self._probe(k, s, p, epoch)
        ok = np.take(self._epoch, p) == epoch
        ok &= (epoch & 1) == 0
        ok &= slots == -1  # the misses; the hits are judged below, a _RETRY never counts
        found = np.flatnonzero(slots >= 0)
        if not found.size:
            return pending[~ok]
        row = rows[found]
        word = row * self._half
        stamp = np.take(self._words, word)
        if out is not None:
            copied = self._scratch_rows(found.size)
            np.take(self._rows, row, axis=0, out=copied, mode="clip")  # unbuffered
        if out is not None:  # the key as the copy saw it (between the two stamp reads)
            held = copied[:, 2:4].view(np.int64)[:, 0] == k[found]
        else:
            held = np.take(self._words, word + 1) == k[found]
        held &= np.take(self._words, word) == stamp
        held &= stamp > 0
        ok[found] = held
        at = found if every else pending[found]
        if not held.all():
            at, row = at[held], row[held]
            if out is not None:
                copied = copied[held]
        if out is not None:
            vectors = copied[:, L.ROW_HEADER : L.ROW_HEADER + self.dim]
            if at.size == out.shape[0]:
                np.copyto(out, vectors)
            else:
                out[at] = vectors
        hit[at] = True
        self._touch(row)
        return pending[~ok]

    def _read_compiled(self, probe, keys: np.ndarray, out: np.ndarray | None, hit) -> None:
        """``_read`` with each optimistic pass compiled (``_read_native``): the same tries, then
        the same locked read. The first pass locates the keys in C; partitions and homes are
        computed here only when keys are left to read again."""
        pending = part = home = None
        for _ in range(_TRIES):
            pending = self._read_native(probe, keys, part, home, pending, out, hit)
            if not pending.size:
                return
            if part is None:
                part, home = self._locate(keys)
            time.sleep(0)  # let the writer of those partitions finish
        self._read_locked(keys[pending], part[pending], home[pending], pending, out, hit)

    def _read_native(self, probe, keys, part, home, pending, out, hit) -> np.ndarray:
        """``_read_optimistic`` in one call of the compiled probe (``hps_shm_read``): the same
        checks, key by key, with the same answers."""
        table, views = self._native_table()  # views: the mapping stays while the C code reads
        read = probe.shm_read(table, keys, part, home, pending, out, hit)
        del views
        if read is None:  # no memory for its scratch row: this pass in NumPy
            if part is None:
                part, home = self._locate(keys)
            if pending is None:
                pending = np.arange(keys.size)
            return self._read_optimistic(keys, part, home, pending, out, hit)
        rows, again, ended = read
        if ended:  # as _read_optimistic, which touches when any probe ended on a slot
            self._touch(rows)
        return again

    def _native_table(self) -> tuple[ShmTable, tuple[np.ndarray, ...]]:
        """The table as ``HashProbe.shm_read`` reads it (addresses in the segment) and the views
        of the segment it points into: a caller holds these while the C code reads, so that a
        ``close`` meanwhile leaves the mapping in place (as for the NumPy reads)."""
        if self._native_args is None:
            table = ShmTable(
                slots=address(self._index),
                segment=self._S,
                num_partitions=self.num_partitions,
                epochs=address(self._headers) + 8 * (L.HEADER_COLUMNS + L.EPOCH),  # partition 0
                epoch_stride=L.HEADER_COLUMNS,
                words=address(self._words),
                half=self._half,
                total_rows=self.num_partitions * self._R,
                dim=self.dim,
            )
            self._native_args = table, (self._index, self._headers, self._words)
        return self._native_args

    def _read_locked(self, keys, part, home, positions, out, hit) -> None:
        with self._holding(np.unique(part)):
            slots, rows = self._probe(keys, home, part, None)
            found = np.flatnonzero(slots >= 0)
            if found.size:
                if out is not None:
                    copied = np.take(self._rows, rows[found], axis=0)
                    out[positions[found]] = copied[:, L.ROW_HEADER : L.ROW_HEADER + self.dim]
                hit[positions[found]] = True
                self._touch(rows[found])

    def _scratch_rows(self, n: int) -> np.ndarray:
        """Room for ``n`` rows: rows are copied out of the segment before they are known to be
        valid, and only valid ones go on to ``out``. One buffer per thread, shared by the
        tables, kept up to ``_SCRATCH_KEPT`` bytes (reused: no page faults per lookup)."""
        width = self.layout.width
        words = n * width
        buf = getattr(_scratch, "words", None)
        if buf is None or buf.size < words:
            buf = np.empty(words, dtype=np.float32)
            if buf.nbytes <= _SCRATCH_KEPT:
                _scratch.words = buf
        return buf[:words].reshape(n, width)

    def _touch(self, rows: np.ndarray) -> None:
        if self.overflow_policy == "evict_least_used":
            self._meta[rows] += 1
        elif self.overflow_policy == "evict_oldest":
            self._meta[rows] = self._tick()

    def _tick(self) -> int:
        clock = int(self._headers[0, L.CLOCK]) + 1
        self._headers[0, L.CLOCK] = clock
        return clock

    # ---------------------------------------------------------------- hashing and probing

    def _locate(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Partition and home slot (in the whole index) of each key."""
        probe = hash_probe()
        if probe is not None:
            return probe.locate(np.ascontiguousarray(keys), self.num_partitions, self._S)
        h = mix64(keys)
        parts, slots = self.num_partitions, self._S
        if parts & (parts - 1) == 0:
            part = (h & np.uint64(parts - 1)).astype(np.int64)
        else:
            part = (h % np.uint64(parts)).astype(np.int64)
        np.right_shift(h, np.uint64(32), out=h)
        np.multiply(h, np.uint64(slots), out=h)
        np.right_shift(h, np.uint64(32), out=h)
        home = h.view(np.int64)
        home += part * slots
        return part, home

    def _probe(
        self, keys: np.ndarray, slot: np.ndarray, part: np.ndarray, before: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(slot, row)`` of each key, -1 when absent. A reader passes the index epochs it saw
        (``before``); keys whose partition's index was rebuilt while they probed get
        ``_RETRY``.

        The compiled probe, when available, probes each key to its end in one pass (a lap
        without an empty slot: ``_RETRY``) and leaves the epochs to the caller's check after
        the probe, which is what makes a miss count; a hit is judged by its row's stamp."""
        probe = hash_probe()
        if probe is not None:
            found, rows = probe.probe(
                self._index,
                self._S,
                np.ascontiguousarray(keys),
                np.ascontiguousarray(slot),
                np.ascontiguousarray(part),
            )
            if before is None and (found == _RETRY).any():
                raise RuntimeError(f"probe of {self.spec.tag} did not end")
            return found, rows
        n = keys.size
        found = np.full(n, -1, dtype=np.int64)
        rows_found = np.full(n, -1, dtype=np.int64)
        segment = self._S
        end = part * segment + segment
        index = None  # positions still probing (None: all)
        wanted = keys
        table = self._index
        rounds = 0
        while True:
            pairs = np.take(table, slot, axis=0)
            rows = pairs[:, 1]
            match = pairs[:, 0] == wanted
            match &= rows >= 0
            at = np.flatnonzero(match)
            if at.size:
                where = at if index is None else index[at]
                found[where] = slot[at]
                rows_found[where] = rows[at]
            more = rows != EMPTY
            more &= ~match
            go_on = np.flatnonzero(more)
            if not go_on.size:
                return found, rows_found
            index = go_on if index is None else index[go_on]
            slot = slot[go_on] + 1
            end = end[go_on]
            wanted = wanted[go_on]
            wrapped = slot == end
            if wrapped.any():
                slot[wrapped] -= segment
            rounds += 1
            if rounds % _CHECK_EVERY == 0 or rounds > segment:
                if before is None:
                    if rounds > segment:  # a full lap: cannot happen in a sound partition
                        raise RuntimeError(f"probe of {self.spec.tag} did not end")
                    continue
                changed = np.take(self._epoch, part[index]) != before[index]
                if rounds > segment:
                    changed[:] = True
                if changed.any():
                    found[index[changed]] = _RETRY
                    keep = np.flatnonzero(~changed)
                    if not keep.size:
                        return found, rows_found
                    index, slot, end, wanted = index[keep], slot[keep], end[keep], wanted[keep]

    def _place(self, partition: int, keys: np.ndarray, slot: np.ndarray, rows: np.ndarray) -> None:
        """Put absent, distinct ``keys`` (homes ``slot``, pointing at ``rows``) into their
        partition's first empty slots."""
        segment = self._S
        end = partition * segment + segment
        flat = self._index.reshape(-1)
        pending = np.arange(keys.size, dtype=np.int64)
        slot = slot.copy()
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
            slot[slot == end] -= segment

    # ---------------------------------------------------------------- locks

    @contextmanager
    def _holding(self, partitions) -> Iterator[None]:
        """Hold the locks of ``partitions`` (ascending), repairing any a dead writer left."""
        with ExitStack() as stack:
            for p in sorted(int(p) for p in partitions):
                stack.enter_context(self._locks[p].held())
                if self._seq[p] & 1:
                    self._repair(p)
                    self._seq[p] += 1
            yield

    @contextmanager
    def _writing(self, p: int) -> Iterator[None]:
        """Hold partition ``p``'s lock with its sequence number odd. An unexpected error leaves
        it odd, so that the next process to take the lock rebuilds the partition."""
        with self._locks[p].held():
            if self._seq[p] & 1:
                self._repair(p)
            else:
                self._seq[p] += 1
            try:
                yield
            except HpsError:
                self._seq[p] += 1  # raised before anything changed
                raise
            self._seq[p] += 1

    @contextmanager
    def _rebuilding(self, p: int) -> Iterator[None]:
        """Mark partition ``p``'s index as being rebuilt (its epoch odd), so that readers do
        not trust a miss meanwhile; a writer that dies inside leaves it odd."""
        if not self._epoch[p] & 1:
            self._epoch[p] += 1
        yield
        self._epoch[p] += 1

    def _repair(self, p: int) -> None:
        """Rebuild partition ``p`` (its index, free rows and counts) from its rows, after a
        writer died during an update. A key committed twice keeps its newer row."""
        header = self._part[p]
        base = p * self._R
        top = min(max(int(header[L.TOP]), 0), self._R)
        stamps = self._stamps[base : base + top]
        keys = self._row_keys[base : base + top]
        used = np.flatnonzero(stamps > 0)
        if used.size > 1:
            order = used[np.lexsort((stamps[used], keys[used]))]
            ordered = keys[order]
            last = np.ones(order.size, dtype=bool)
            np.not_equal(ordered[1:], ordered[:-1], out=last[:-1])
            stamps[order[~last]] = 0
            used = np.sort(order[last])
        free = np.flatnonzero(stamps == 0) + base
        self._free[base : base + free.size] = free
        header[L.NFREE] = free.size
        header[L.TOP] = top
        live_keys = keys[used].copy()
        with self._rebuilding(p):
            self._index[p * self._S : (p + 1) * self._S, 1] = EMPTY
            self._place(p, live_keys, self._locate(live_keys)[1], used + base)
        header[L.LIVE] = used.size
        header[L.TOMB] = 0
        log.warning(
            "shared-memory table %s: rebuilt partition %d (%d keys) after a writer died "
            "during an update",
            self.spec.tag,
            p,
            used.size,
        )

    # ---------------------------------------------------------------- updates

    def insert(self, keys: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        """Upsert ``keys`` → ``vectors`` (a repeated key keeps its last vector). Returns the
        keys this call left out of the table (evicted, or new keys beyond a partition's
        margin). Without a margin, a partition out of room raises CapacityError (the
        partitions before it keep what this call put there)."""
        keys = check_keys(keys)
        vectors = np.asarray(vectors)
        if vectors.shape != (keys.size, self.dim):
            raise InvalidInputError(
                f"vectors must have shape ({keys.size}, {self.dim}), got {vectors.shape}",
                location="vectors",
            )
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self._check_attached()
        if not keys.size:
            return np.empty(0, dtype=np.int64)
        keys, vectors = dedupe_last(keys, vectors)
        part, home = self._locate(keys)
        lost = [
            self._insert_partition(p, keys[sel], vectors[sel], home[sel])
            for p, sel in _by_partition(part)
        ]
        return np.concatenate(lost) if lost else np.empty(0, dtype=np.int64)

    def remove(self, keys: np.ndarray) -> int:
        """Remove ``keys``; returns how many were present."""
        keys = check_keys(keys)
        self._check_attached()
        if not keys.size:
            return 0
        keys = np.unique(keys)
        part, home = self._locate(keys)
        removed = 0
        for p, sel in _by_partition(part):
            with self._writing(p):
                slots, _ = self._probe(keys[sel], home[sel], part[sel], None)
                slots = slots[slots >= 0]
                self._delete(p, slots)
                removed += slots.size
        return removed

    def clear(self) -> None:
        self._check_attached()
        for p in range(self.num_partitions):
            with self._writing(p):
                header = self._part[p]
                top = min(max(int(header[L.TOP]), 0), self._R)  # rows above were never used
                self._stamps[p * self._R : p * self._R + top] = 0
                with self._rebuilding(p):
                    self._index[p * self._S : (p + 1) * self._S, 1] = EMPTY
                header[L.TOP] = header[L.NFREE] = header[L.LIVE] = header[L.TOMB] = 0

    def _insert_partition(self, p: int, keys, vectors, home) -> np.ndarray:
        lost: list[np.ndarray] = []
        with self._writing(p):
            part = np.full(keys.size, p, dtype=np.int64)
            slots, rows = self._probe(keys, home, part, None)
            present = np.flatnonzero(slots >= 0)
            if present.size:
                self._upsert(p, keys[present], vectors[present], slots[present], rows[present])
            new = np.flatnonzero(slots < 0)
            if not new.size:
                return np.empty(0, dtype=np.int64)
            live = int(self._part[p, L.LIVE])
            if self._evicts:
                new = self._make_room(p, keys, new, slots[present], lost)
            elif live + new.size > self.room:
                raise CapacityError(
                    f"partition {p} of shared-memory table {self.spec.tag} is full "
                    f"({live} of {self.room} entries; {new.size} new keys)",
                    location="$.volatile_db.overflow_margin",
                    hint="set an overflow_margin to evict instead (the room is 1.25x the "
                    "table file's keys per partition: docs/runtime.md)",
                )
            if new.size:
                self._ensure_slots(p, new.size)
                fresh = self._alloc(p, new.size)
                self._write_rows(p, fresh, keys[new], vectors[new])
                self._place(p, keys[new], home[new], fresh)
                self._part[p, L.LIVE] += new.size
        return np.concatenate(lost) if lost else np.empty(0, dtype=np.int64)

    def _upsert(self, p: int, keys, vectors, slots, old_rows) -> None:
        """New vectors of held keys, copy-on-write, in chunks of the free rows."""
        done = 0
        while done < keys.size:
            header = self._part[p]
            free = int(header[L.NFREE]) + self._R - int(header[L.TOP])
            if free <= 0:
                raise RuntimeError(f"partition {p} of {self.spec.tag} has no free row")
            chunk = slice(done, done + min(free, keys.size - done))
            fresh = self._alloc(p, chunk.stop - chunk.start)
            self._write_rows(p, fresh, keys[chunk], vectors[chunk])
            self._index[slots[chunk], 1] = fresh
            self._stamps[old_rows[chunk]] = 0
            self._release(p, old_rows[chunk])
            done = chunk.stop

    def _write_rows(self, p: int, rows, keys, vectors) -> None:
        """Fill free ``rows`` and commit them (the stamp goes last)."""
        self._vectors[rows] = vectors
        self._row_keys[rows] = keys
        if self.overflow_policy == "evict_least_used":
            self._meta[rows] = 0
        elif self.overflow_policy == "evict_oldest":
            self._meta[rows] = self._tick()
        header = self._part[p]
        header[L.STAMP] += 1
        self._stamps[rows] = header[L.STAMP]

    def _make_room(self, p: int, keys, new, protected_slots, lost) -> np.ndarray:
        """Evict (and drop new keys) so that partition ``p`` ends at most at the margin."""
        margin = self.overflow_margin
        live = int(self._part[p, L.LIVE])
        arriving = new.size
        if live + arriving <= margin:
            return new
        if arriving > margin:  # more new keys than fit: keep the batch's last `margin`
            cut = arriving - margin
            lost.append(keys[new[:cut]])
            new = new[cut:]
            arriving = margin
        survivors = max(0, min(max(self._resolve_to, protected_slots.size), margin - arriving))
        if live - survivors > 0:
            lost.append(self._evict(p, live - survivors, protected_slots))
        return new

    def _evict(self, p: int, count: int, protected_slots: np.ndarray) -> np.ndarray:
        first = p * self._S
        segment = self._index[first : first + self._S]
        local = np.flatnonzero(segment[:, 1] >= 0)
        rows = segment[local, 1]
        if self.overflow_policy == "evict_random":
            score = self._rng.random(local.size)
        else:
            score = self._meta[rows].astype(np.float64)
        if protected_slots.size:
            score[np.isin(local, protected_slots - first)] = np.inf  # the batch's keys go last
        if count < local.size:
            victims = local[np.argpartition(score, count - 1)[:count]]
        else:
            victims = local
        gone = segment[victims, 0].copy()
        self._delete(p, victims + first)
        self._part[p, L.EVICTED] += victims.size
        return gone

    def _delete(self, p: int, slots: np.ndarray) -> None:
        if not slots.size:
            return
        rows = self._index[slots, 1].copy()
        self._stamps[rows] = 0
        self._index[slots, 1] = TOMBSTONE
        self._release(p, rows)
        self._part[p, L.LIVE] -= slots.size
        self._part[p, L.TOMB] += slots.size

    def _ensure_slots(self, p: int, incoming: int) -> None:
        """Rebuild the partition's index in place when deleted slots make probes long."""
        header = self._part[p]
        if int(header[L.LIVE] + header[L.TOMB]) + incoming <= L.MAX_LOAD * self._S:
            return
        segment = self._index[p * self._S : (p + 1) * self._S]
        held = np.flatnonzero(segment[:, 1] >= 0)
        keys, rows = segment[held, 0].copy(), segment[held, 1].copy()
        with self._rebuilding(p):
            segment[:, 1] = EMPTY
            self._place(p, keys, self._locate(keys)[1], rows)
        header[L.TOMB] = 0

    def _alloc(self, p: int, count: int) -> np.ndarray:
        header = self._part[p]
        base = p * self._R
        nfree = int(header[L.NFREE])
        reused = min(count, nfree)
        rows = self._free[base + nfree - reused : base + nfree].copy()
        header[L.NFREE] = nfree - reused
        fresh = count - reused
        if fresh:
            top = int(header[L.TOP])
            if top + fresh > self._R:
                raise RuntimeError(f"partition {p} of {self.spec.tag} ran out of rows")
            header[L.TOP] = top + fresh  # before the rows are written: a repair sees them
            rows = np.concatenate([rows, np.arange(base + top, base + top + fresh)])
        return rows

    def _release(self, p: int, rows: np.ndarray) -> None:
        header = self._part[p]
        base = p * self._R
        nfree = int(header[L.NFREE])
        self._free[base + nfree : base + nfree + rows.size] = rows
        header[L.NFREE] = nfree + rows.size


def table_spec(
    tag: str,
    dim: int,
    *,
    num_partitions: int,
    overflow_margin: int | None,
    overflow_policy: str,
    overflow_resolution_target: float,
    expected_keys: int,
) -> TableSpec:
    """What a table asks of the segment (start-up reserves every table's region with these
    before it loads anything)."""
    margin = (
        None
        if overflow_margin is None or int(overflow_margin) >= _UNLIMITED
        else int(overflow_margin)
    )
    parts = int(num_partitions)
    return TableSpec(
        tag,
        int(dim),
        parts,
        L.partition_room(int(expected_keys), parts, margin),
        overflow_policy,
        margin,
        float(overflow_resolution_target),
    )


def _by_partition(part: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """``(partition, positions)`` in ascending partition order, positions in batch order."""
    order = np.argsort(part, kind="stable")
    ordered = part[order]
    cuts = np.flatnonzero(ordered[1:] != ordered[:-1]) + 1
    for chunk in np.split(order, cuts):
        yield int(part[chunk[0]]), chunk
