"""The dynamic cache on a GPU: device arrays, prepared launches and transfers (PyCUDA).

Every operation of one cache runs on the cache's own stream, so replace/update/invalidate never
overlap a query on the device: stream order is the lock. Query buffers belong to a workspace
slot (one per concurrent lookup: a worker buffer of runtime/worker_pool.py); replace, update and
invalidate share a growable scratch under a host lock.
"""

from __future__ import annotations

import threading

import numpy as np

from .pending import Launched, PendingLookup
from .pinned import mapped_empty
from .placement import (
    DEDUP_MIN_KEYS,
    EMPTY_KEY,
    FOLD_GROUP_SLOTS,
    HIT_FOLD_EVERY,
    WAYS,
    padded_slots,
    query_seed,
    sets_of,
    tile_width,
)
from .reference import replace_rounds
from .transfers import HEAD_BYTES, Scratch, free_device_state, queue_download, start_rows

_BLOCK = 256
# The kernels' arguments as struct codes (cuda/dynamic_cache.cu; tests/test_kernel_signatures.py
# checks them against the sources): dc_query's, dc_query_published's (+ ticket, publish) and
# their count_hits modes, then the mutations' and the dump's.
QUERY_ARGS = "PPqPPPPIifPPPPiq"
PUBLISHED_QUERY_ARGS = QUERY_ARGS + "PP"
COUNT_INTO_SCORES, COUNT_INTO_HIT_BYTES = 1, 2
REPLACE_ROUND_ARGS = "PPiPPPPPIiP"
UPDATE_ARGS = "PPqPPIiP"
INVALIDATE_ARGS = "PqPPPIP"
DUMP_ARGS = "PIIPP"
# batch_ops.cu: flagging the missed unique keys of a de-duplicated lookup, and patching their
# fetched rows into its result
MARK_ARGS = "PqP"
FLAGGED_GATHER_ARGS = "PPPqiP"


class GpuDynamicCache:
    """``num_sets`` × WAYS slots of ``dim`` floats on one device (layout: cuda/dynamic_cache.cu);
    a seams.DynamicBackend."""

    on_gpu = True

    def __init__(self, device, num_sets: int, dim: int, tile: int | None = None):
        self.device = device
        self.num_sets = int(num_sets)
        self.dim = int(dim)
        self.tile = tile or tile_width(dim)
        slots = self.num_sets * WAYS
        self._padded_slots = padded_slots(slots)  # of the scores and hit bytes
        drv = device.drv
        with device.scope():
            self.stream = drv.Stream()
            self.d_keys = device.alloc(slots * 8)
            self.d_scores = device.alloc(self._padded_slots * 4)
            self.d_hits = device.alloc(self._padded_slots)  # one byte per slot
            self.d_floors = device.alloc(self.num_sets * 4)
            # The miss counter and arrival ticket of publishing dc_query launches: each one
            # publishes the count and resets both (hps::publish_total), so they stay zero
            # between launches.
            self.d_query_counter = device.alloc(HEAD_BYTES)
            self.d_values = device.alloc(slots * self.dim * 4)
            self._fill_i64(self.d_keys, slots, EMPTY_KEY)
            drv.memset_d32_async(self.d_scores, 0, self._padded_slots, self.stream)
            drv.memset_d32_async(self.d_hits, 0, self._padded_slots // 4, self.stream)
            drv.memset_d32_async(self.d_floors, 0, self.num_sets, self.stream)
            drv.memset_d32_async(self.d_query_counter, 0, HEAD_BYTES // 4, self.stream)
            drv.memset_d32_async(self.d_values, 0, slots * self.dim, self.stream)
            self.stream.synchronize()
        self._scratch = Scratch(device)
        self._lock = threading.Lock()
        self._seed_lock = threading.Lock()
        self.queries = 0
        # De-duplicated queries whose hits sit in the hit bytes, not yet in the scores; the lock
        # keeps "fold when due, then launch" in stream order across threads.
        self._hits_lock = threading.Lock()
        self._unfolded = 0
        self._workspaces: dict[int, Scratch] = {}
        self._closed = False
        # The hot path's launch: every cache argument as a plain int, packed once per call.
        self._query_kernel = device.launcher("dc_query", QUERY_ARGS)
        self._published_query_kernel = device.launcher("dc_query_published", PUBLISHED_QUERY_ARGS)
        self._replace_round_kernel = device.launcher("dc_replace_round", REPLACE_ROUND_ARGS)
        self._cache_args = (
            int(self.d_keys),
            int(self.d_scores),
            int(self.d_hits),
            int(self.d_values),
            self.num_sets,
            self.dim,
        )
        counter = int(self.d_query_counter)
        # (miss count, ticket): one pair per cache is enough because every launch of this
        # cache goes on its one stream, which runs them one after another. Per-slot streams
        # would need a pair per slot.
        self._counter_args = (counter, counter + 4)

    @property
    def capacity(self) -> int:
        return self.num_sets * WAYS

    def close(self) -> None:
        """Free the device and pinned memory now (idempotent; any later operation raises; see
        transfers.free_device_state)."""
        with self._lock, self._hits_lock, self.device.scope():
            if self._closed:
                return
            self._closed = True
            free_device_state(
                self.stream,
                (
                    self.d_keys,
                    self.d_scores,
                    self.d_hits,
                    self.d_floors,
                    self.d_query_counter,
                    self.d_values,
                ),
                (self._scratch, *self._workspaces.values()),
            )
            self._workspaces.clear()
            self.stream = None

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(
                f"this GPU cache ({self.num_sets} sets of dim {self.dim}) was closed"
            )

    # -- helpers ----------------------------------------------------------------------------

    def _grid(
        self, items: int, threads_per_item: int
    ) -> tuple[tuple[int, int], tuple[int, int, int]]:
        return (self.device.launch_grid(items, threads_per_item, _BLOCK), 1), (_BLOCK, 1, 1)

    def _fill_i64(self, buf, count: int, value: int) -> None:
        grid, block = self._grid(count, 1)
        self.device.launch("fill_i64", "Pqq", grid, block, self.stream, buf, count, value)

    def _next_seed(self) -> int:
        """The sampling seed of this query; the reference counts its queries the same way."""
        with self._seed_lock:
            seed = query_seed(self.queries)
            self.queries += 1
        return seed

    def _fold_hits(self, counted_elsewhere: bool = False) -> None:
        """Add the hit bytes into the scores (on the stream) if any query counted into them;
        ``counted_elsewhere``: a launch outside this class (a kernel benchmark) did."""
        with self._hits_lock:
            if counted_elsewhere:
                self._unfolded = max(self._unfolded, 1)
            self._launch_fold()

    def note_unfolded_hits(self) -> None:
        """Fold now the hits that a launch outside this class counted into the hit bytes."""
        self._fold_hits(counted_elsewhere=True)

    def _launch_fold(self) -> None:
        if not self._unfolded:
            return
        groups = self._padded_slots // FOLD_GROUP_SLOTS
        grid, block = self._grid(groups, 1)
        self.device.launch(
            "dc_fold_hits", "PPq", grid, block, self.stream, self.d_hits, self.d_scores, groups
        )
        self._unfolded = 0

    def _read_counter(self, d_counter) -> int:
        """Wait for the stream and read back a device counter."""
        host = np.empty(4, np.uint32)
        self.device.drv.memcpy_dtoh_async(host, d_counter, self.stream)
        self.stream.synchronize()
        return int(host[0])

    def _workspace(self, slot: int) -> Scratch:
        ws = self._workspaces.get(slot)
        if ws is None:
            ws = self._workspaces[slot] = Scratch(self.device)
        return ws

    def _dedup(self, ws: Scratch, d_keys, n: int):
        """Launch the GPU de-duplication of n device keys; returns device buffers."""
        drv = self.device.drv
        cap = 1 << max(4, (2 * n - 1).bit_length())
        set_keys, set_ids = ws.get("set_keys", cap * 8), ws.get("set_ids", cap * 8)
        set_counts = ws.get("set_counts", cap * 4)
        slot_of, uniq = ws.get("slot_of", n * 8), ws.get("unique_keys", n * 8)
        inverse, counts = ws.get("inverse", n * 8), ws.get("unique_counts", n * 4)
        ucount = ws.get("unique_count", HEAD_BYTES)
        self._fill_i64(set_keys, cap, EMPTY_KEY)
        drv.memset_d32_async(set_counts, 0, cap, self.stream)
        drv.memset_d32_async(ucount, 0, 1, self.stream)
        grid, block = self._grid(n, 1)
        self.device.launch(
            "dedup_insert",
            "PqPPPQPPP",
            grid,
            block,
            self.stream,
            d_keys,
            n,
            set_keys,
            set_ids,
            set_counts,
            cap - 1,
            slot_of,
            uniq,
            ucount,
        )
        self.device.launch(
            "dedup_inverse",
            "PqPPPP",
            grid,
            block,
            self.stream,
            slot_of,
            n,
            set_ids,
            set_counts,
            inverse,
            counts,
        )
        return uniq, inverse, counts, ucount

    # -- queries ----------------------------------------------------------------------------

    def query(self, keys: np.ndarray, default_value: float = 0.0, slot: int = 0) -> PendingLookup:
        """A lookup of host keys, waited for (``launch_query`` without the overlap)."""
        return self.launch_query(keys, default_value, slot).wait()

    def launch_query(self, keys: np.ndarray, default_value: float = 0.0, slot: int = 0) -> Launched:
        """Queue a lookup of host keys and return at once; ``wait()`` gives its PendingLookup.
        Workspace ``slot`` stays in use until then. (A de-duplicated lookup is waited for
        here: it needs the unique count before it can launch the query.)"""
        self._check_open()
        keys = np.ascontiguousarray(keys, dtype=np.int64)
        if keys.size >= DEDUP_MIN_KEYS:
            return Launched.done(self._query_dedup(keys, default_value, slot))
        return self._launch_direct(keys, default_value, slot)

    def _launch_direct(self, keys: np.ndarray, default_value: float, slot: int) -> Launched:
        n = keys.size
        ws = self._workspace(slot)
        with self.device.scope():
            # The miss list goes straight to mapped host memory: no copy or wait after the
            # kernel to read it.
            h_mkeys, d_mkeys = ws.mapped("miss_keys", n, np.int64)
            h_mpos, d_mpos = ws.mapped("miss_pos", n, np.int64)

            def launch(d_keys: int, d_block: int, publish: bool) -> None:
                self._launch_query(
                    d_keys,
                    0,
                    n,
                    default_value,
                    d_block,
                    d_mkeys,
                    d_mpos,
                    COUNT_INTO_SCORES,
                    publish,
                )

            out, rows_done = start_rows(self.device, self.stream, ws, keys, self.dim, launch)

        def wait() -> PendingLookup:
            with self.device.scope():
                misses = rows_done()
            return PendingLookup(out, h_mkeys[:misses].copy(), h_mpos[:misses].copy())

        return Launched(wait)

    def _launch_query(
        self,
        d_keys: int,
        d_weights: int,
        n: int,
        default_value: float,
        d_block: int,
        d_mkeys: int,
        d_mpos: int,
        count_mode: int,
        publish: bool,
    ) -> None:
        """dc_query over n keys: rows written after the 16-byte head of ``d_block`` (device or
        mapped memory), the miss count in its first word: published from the cache's
        self-resetting counter when ``publish`` (dc_query_published), else counted there
        directly (dc_query; the caller zeroes it). A large launch counts directly: the
        publishing tail, one ticket per block on one address, cost a 1 M-key query about 3 %.
        ``count_mode``: where hits count (COUNT_INTO_SCORES or, for de-duplicated keys,
        COUNT_INTO_HIT_BYTES)."""
        grid = (self.device.launch_grid(n, 1, _BLOCK), 1)
        with self._hits_lock:
            if count_mode == COUNT_INTO_HIT_BYTES:
                if self._unfolded >= HIT_FOLD_EVERY:  # a byte could overflow in this query
                    self._launch_fold()
                self._unfolded += 1
            if publish:
                counter, ticket = self._counter_args
                self._published_query_kernel(
                    grid,
                    (_BLOCK, 1, 1),
                    self.stream,
                    d_keys,
                    d_weights,
                    n,
                    *self._cache_args,
                    default_value,
                    d_block + HEAD_BYTES,
                    d_mkeys,
                    d_mpos,
                    counter,
                    count_mode,
                    self._next_seed(),
                    ticket,
                    d_block,
                )
            else:
                self._query_kernel(
                    grid,
                    (_BLOCK, 1, 1),
                    self.stream,
                    d_keys,
                    d_weights,
                    n,
                    *self._cache_args,
                    default_value,
                    d_block + HEAD_BYTES,
                    d_mkeys,
                    d_mpos,
                    d_block,
                    count_mode,
                    self._next_seed(),
                )

    def _query_dedup(self, keys: np.ndarray, default_value: float, slot: int) -> PendingLookup:
        """De-duplicate on the GPU and query the unique keys (hits counted with their
        occurrences). As soon as the query is done, its rows are expanded to the batch and
        copied out, while the caller fetches the misses (listed here); ``finish`` then patches
        the fetched rows into the result (_DevicePending)."""
        drv, n, dim = self.device.drv, keys.size, self.dim
        ws = self._workspace(slot)
        with self.device.scope():
            d_keys = ws.upload("keys", keys, self.stream)
            uniq, inverse, counts, ucount = self._dedup(ws, d_keys, n)
            u = self._read_counter(ucount)
            d_rows = ws.ptr("unique_rows", HEAD_BYTES + u * dim * 4)
            h_mkeys, d_mkeys = ws.mapped("miss_keys", u, np.int64)
            _, d_mpos = ws.mapped("miss_pos", u, np.int64)
            drv.memset_d32_async(d_rows, 0, 2, self.stream)  # misses, missed occurrences
            self._launch_query(
                int(uniq),
                int(counts),
                u,
                default_value,
                d_rows,
                d_mkeys,
                d_mpos,
                COUNT_INTO_HIT_BYTES,
                False,
            )
            head = ws.host("head", 4, np.uint32)
            drv.memcpy_dtoh_async(head, d_rows, self.stream)
            queried = drv.Event()
            queried.record(self.stream)
            pending = _DevicePending(self, ws, d_rows, int(inverse), n, u, d_mpos)
            if pending.block is not None:
                pending.copy_out()  # the hits' rows go out while the misses are fetched
            queried.synchronize()
            misses, occurrences = int(head[0]), int(head[1])
            pending.set_misses(h_mkeys[:misses].copy(), occurrences)
        return pending

    def count_unique(self, keys: np.ndarray, slot: int = 0) -> int:
        """Distinct keys in a batch (HPS's hit rate is over unique keys)."""
        self._check_open()
        keys = np.ascontiguousarray(keys, dtype=np.int64)
        if keys.size == 0:
            return 0
        ws = self._workspace(slot)
        with self.device.scope():
            d_keys = ws.upload("keys", keys, self.stream)
            _, _, _, ucount = self._dedup(ws, d_keys, keys.size)
            return self._read_counter(ucount)

    # -- mutations --------------------------------------------------------------------------

    def replace(self, keys: np.ndarray, rows: np.ndarray) -> int:
        """Insert keys with rows (LFU-DA eviction over each key's two sets); returns how many
        were new. The batch goes in rounds whose keys touch disjoint sets
        (reference.replace_rounds), one dc_replace_round launch each."""
        keys = np.ascontiguousarray(keys, dtype=np.int64)
        rows = np.ascontiguousarray(rows, dtype=np.float32).reshape(keys.size, self.dim)
        keep = keys != EMPTY_KEY
        if not keep.all():
            keys, rows = keys[keep], rows[keep]
        if not keys.size:
            return 0
        primary, second = sets_of(keys, self.num_sets)
        order, offsets = replace_rounds(primary, second, self.num_sets)
        drv = self.device.drv
        with self._lock, self.device.scope():
            self._check_open()
            self._fold_hits()  # victims are chosen by score
            s = self._scratch
            d_k = int(s.upload("keys", keys, self.stream, order))
            d_r = int(s.upload("rows", rows, self.stream, order))
            d_c = s.ptr("count", HEAD_BYTES)
            drv.memset_d32_async(d_c, 0, 1, self.stream)
            row_bytes = self.dim * 4
            for r in range(offsets.size - 1):
                first, count = int(offsets[r]), int(offsets[r + 1] - offsets[r])
                self._replace_round_kernel(
                    (-(-count // 4), 1),  # a warp per key, 4 per block
                    (128, 1, 1),
                    self.stream,
                    d_k + first * 8,
                    d_r + first * row_bytes,
                    count,
                    int(self.d_keys),
                    int(self.d_scores),
                    int(self.d_hits),
                    int(self.d_floors),
                    int(self.d_values),
                    self.num_sets,
                    self.dim,
                    d_c,
                )
            return self._read_counter(d_c)

    def load(
        self,
        slot_keys: np.ndarray,
        slot_rows: np.ndarray,
        vectors: np.ndarray,
        chunk_slots: int = 1 << 16,
    ) -> int:
        """Start-up prefill from a planned layout (prefill_plan.py): slot s gets key
        ``slot_keys[s]`` and row ``vectors[slot_rows[s]]`` (free slots: EMPTY_KEY, zeros), each
        loaded key scores 1; what the cache held is replaced. Rows are gathered from
        ``vectors`` (a table's memory-mapped rows) in chunks into two pinned buffers taken in
        turn, so that gathering one chunk overlaps the copy of the other."""
        slots = self.capacity
        slot_keys = np.ascontiguousarray(slot_keys, dtype=np.int64).reshape(slots)
        slot_rows = np.asarray(slot_rows, np.int64).reshape(slots)
        used = slot_keys != EMPTY_KEY
        scores = np.zeros(self._padded_slots, np.uint32)
        scores[:slots] = used
        drv, dim = self.device.drv, self.dim
        with self._lock, self._hits_lock, self.device.scope():
            self._check_open()
            self.stream.synchronize()
            drv.memcpy_htod(self.d_keys, slot_keys)
            drv.memcpy_htod(self.d_scores, scores)
            drv.memset_d32(self.d_hits, 0, self._padded_slots // 4)
            drv.memset_d32(self.d_floors, 0, self.num_sets)
            self._unfolded = 0
            chunk_slots = max(1, min(chunk_slots, slots))
            pinned = [mapped_empty(drv, chunk_slots * dim * 4)[0] for _ in (0, 1)]
            done: list = [None, None]
            try:
                for step, first in enumerate(range(0, slots, chunk_slots)):
                    last = min(first + chunk_slots, slots)
                    buf = pinned[step % 2][: (last - first) * dim * 4].view(np.float32)
                    buf = buf.reshape(last - first, dim)
                    if done[step % 2] is not None:
                        done[step % 2].synchronize()  # its previous copy has left the buffer
                    buf[:] = 0
                    mine = np.flatnonzero(used[first:last])
                    if mine.size:
                        buf[mine] = vectors[slot_rows[first + mine]]
                    drv.memcpy_htod_async(int(self.d_values) + first * dim * 4, buf, self.stream)
                    done[step % 2] = drv.Event()
                    done[step % 2].record(self.stream)
                self.stream.synchronize()
            finally:
                self.stream.synchronize()
                for host in pinned:
                    host.base.free()
        return int(used.sum())

    def _per_key(self, name: str, keys: np.ndarray, rows: np.ndarray | None) -> int:
        drv = self.device.drv
        with self._lock, self.device.scope():
            self._check_open()
            s = self._scratch
            d_k, d_c = s.get("keys", keys.nbytes), s.get("count", HEAD_BYTES)
            drv.memcpy_htod_async(d_k, keys, self.stream)
            drv.memset_d32_async(d_c, 0, 1, self.stream)
            grid, block = self._grid(keys.size, self.tile)
            fn = f"{name}_t{self.tile}"
            if rows is not None:
                d_r = s.get("rows", rows.nbytes)
                drv.memcpy_htod_async(d_r, rows, self.stream)
                self.device.launch(
                    fn,
                    UPDATE_ARGS,
                    grid,
                    block,
                    self.stream,
                    d_k,
                    d_r,
                    keys.size,
                    self.d_keys,
                    self.d_values,
                    self.num_sets,
                    self.dim,
                    d_c,
                )
            else:
                self._fold_hits()  # the removed keys' hits must not stay in their bytes
                self.device.launch(
                    fn,
                    INVALIDATE_ARGS,
                    grid,
                    block,
                    self.stream,
                    d_k,
                    keys.size,
                    self.d_keys,
                    self.d_scores,
                    self.d_hits,
                    self.num_sets,
                    d_c,
                )
            count = self._read_counter(d_c)
        return count

    def update(self, keys: np.ndarray, rows: np.ndarray) -> int:
        """Overwrite cached copies (a repeated key: its last row wins); returns how many."""
        keys = np.ascontiguousarray(keys, dtype=np.int64)
        rows = np.ascontiguousarray(rows, dtype=np.float32).reshape(keys.size, self.dim)
        if not keys.size:
            return 0
        # Keep each key's last row, so the outcome does not depend on thread order.
        _, first = np.unique(keys[::-1], return_index=True)
        last = keys.size - 1 - first
        return self._per_key(
            "dc_update", np.ascontiguousarray(keys[last]), np.ascontiguousarray(rows[last])
        )

    def invalidate(self, keys: np.ndarray) -> int:
        keys = np.unique(np.ascontiguousarray(keys, dtype=np.int64))
        return self._per_key("dc_invalidate", keys, None) if keys.size else 0

    def dump(self, set_begin: int = 0, set_end: int | None = None) -> np.ndarray:
        """Cached keys of sets [set_begin, set_end), sorted."""
        set_end = self.num_sets if set_end is None else min(set_end, self.num_sets)
        sets = max(0, set_end - set_begin)
        if not sets:
            return np.empty(0, np.int64)
        drv = self.device.drv
        with self._lock, self.device.scope():
            self._check_open()
            d_out, d_c = self._scratch.get("dump", sets * WAYS * 8), self._scratch.get("count", 16)
            drv.memset_d32_async(d_c, 0, 1, self.stream)
            grid, block = (-(-sets * WAYS // 128), 1), (128, 1, 1)  # a thread per slot
            self.device.launch(
                "dc_dump",
                DUMP_ARGS,
                grid,
                block,
                self.stream,
                self.d_keys,
                set_begin,
                set_end,
                d_out,
                d_c,
            )
            out = np.empty(self._read_counter(d_c), np.int64)
            if out.size:
                drv.memcpy_dtoh(out, d_out)
        return np.sort(out)

    def snapshot(self) -> dict[str, np.ndarray]:
        """All cache arrays copied to the host (for tests against the reference)."""
        slots = self.capacity
        arrays = {
            "keys": np.empty(slots, np.int64),
            "scores": np.empty(slots, np.uint32),
            "floors": np.empty(self.num_sets, np.uint32),
            "values": np.empty(slots * self.dim, np.float32),
        }
        with self._lock, self.device.scope():
            self._check_open()
            self._fold_hits()  # scores as the reference has them
            self.stream.synchronize()
            for name, dev in (
                ("keys", self.d_keys),
                ("scores", self.d_scores),
                ("floors", self.d_floors),
                ("values", self.d_values),
            ):
                self.device.drv.memcpy_dtoh(arrays[name], dev)
        arrays["keys"] = arrays["keys"].reshape(self.num_sets, WAYS)
        arrays["scores"] = arrays["scores"].reshape(self.num_sets, WAYS)
        arrays["values"] = arrays["values"].reshape(self.num_sets, WAYS, self.dim)
        return arrays

    def occupancy(self) -> int:
        """Slots in use (copies only the keys array back: cheap enough for a metrics scrape)."""
        keys = np.empty(self.capacity, np.int64)
        with self._lock, self.device.scope():
            self._check_open()
            self.stream.synchronize()
            self.device.drv.memcpy_dtoh(keys, self.d_keys)
        return int(np.count_nonzero(keys != EMPTY_KEY))


class _DevicePending(PendingLookup):
    """A de-duplicated query: the unique keys' rows stay on the device; the result is their
    expansion to the batch (``gather_rows`` by the inverse map), copied out.

    When the result has a pinned block (the usual case), the expansion and its copy are queued
    right after the query (``copy_out``), so they run while the caller fetches the misses;
    ``finish(rows)`` then uploads the fetched rows, puts them into the unique rows and writes
    them, through the mapped block, at every position of the batch that holds a missed key
    (``gather_flagged_rows``, after the copy on the same stream). Without a pinned block the
    expansion waits for ``finish``, once the unique rows are complete."""

    def __init__(
        self,
        cache: GpuDynamicCache,
        ws: Scratch,
        d_rows: int,
        d_inverse: int,
        n: int,
        unique_total: int,
        d_miss_pos: int,
    ):
        self._cache, self._ws, self._n = cache, ws, n
        self._d_rows_base = d_rows + HEAD_BYTES
        self._d_inverse = d_inverse
        self._d_miss_pos = d_miss_pos
        self._d_out = ws.ptr("out", HEAD_BYTES + n * cache.dim * 4)
        out, self.block = cache.device.pinned.array((n, cache.dim), np.float32, offset=HEAD_BYTES)
        super().__init__(out, np.empty(0, np.int64), np.empty(0, np.int64), unique_total)
        self._copied = False
        self._flags = 0

    def copy_out(self) -> None:
        """Queue the expansion of the unique rows and the copy of the result to the host."""
        cache, dim, n = self._cache, self._cache.dim, self._n
        grid, block = cache._grid(n, 1)
        cache.device.launch(
            "gather_rows",
            "PPqiP",
            grid,
            block,
            cache.stream,
            self._d_rows_base,
            self._d_inverse,
            n,
            dim,
            self._d_out + HEAD_BYTES,
        )
        self._copied_wait = queue_download(
            cache.device, cache.stream, self._d_out, self._out, self.block
        )
        self._copied = True

    def set_misses(self, miss_keys: np.ndarray, occurrences: int) -> None:
        """The unique keys the query missed (in the kernel's order) and their occurrences in
        the batch; flags the missed unique keys for the patch."""
        self._raw_keys = miss_keys
        self._raw_pos = np.empty(0, np.int64)  # on the device (``_d_miss_pos``)
        self.miss_occurrences = occurrences
        cache = self._cache
        if miss_keys.size and self._copied:
            u = self.unique_total or 0
            flags = self._ws.ptr("miss_flags", u)
            cache.device.drv.memset_d8_async(flags, 0, u, cache.stream)
            grid, block = cache._grid(miss_keys.size, 1)
            cache.device.launch(
                "mark_positions",
                MARK_ARGS,
                grid,
                block,
                cache.stream,
                self._d_miss_pos,
                miss_keys.size,
                flags,
            )
            self._flags = flags

    @property
    def miss_keys(self) -> np.ndarray:
        return self._raw_keys  # already unique (in arbitrary order)

    def discard(self) -> None:
        """Wait for the device work still writing this lookup's result (before it is
        dropped)."""
        with self._cache.device.scope():
            self._cache.stream.synchronize()

    def finish(self, rows: np.ndarray | None) -> np.ndarray:
        cache, ws = self._cache, self._ws
        dim, n, m = cache.dim, self._n, self._raw_keys.size
        with cache.device.scope():
            if rows is not None and m:
                d_src = ws.upload("fetched", np.ascontiguousarray(rows, np.float32), cache.stream)
                grid, block = cache._grid(m, cache.tile)
                cache.device.launch(
                    f"scatter_rows_t{cache.tile}",
                    "PPPqiP",
                    grid,
                    block,
                    cache.stream,
                    d_src,
                    0,
                    self._d_miss_pos,
                    m,
                    dim,
                    self._d_rows_base,
                )
                if self._copied:
                    grid, block = cache._grid(n, cache.tile)
                    cache.device.launch(
                        f"gather_flagged_rows_t{cache.tile}",
                        FLAGGED_GATHER_ARGS,
                        grid,
                        block,
                        cache.stream,
                        self._d_rows_base,
                        self._d_inverse,
                        self._flags,
                        n,
                        dim,
                        self.block.device_ptr + HEAD_BYTES,
                    )
            if not self._copied:
                self.copy_out()
            self._copied_wait()
        return self._out
