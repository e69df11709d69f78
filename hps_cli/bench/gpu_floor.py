"""The cache query kernel against the plain-gather floor, timed on the device in the same run.

For a batch of the benchmark's keys, ``dc_query`` runs on the live dynamic cache of the table
(the real key mix: hits copy cached rows, misses write the default value and are recorded) and
``gather_rows`` copies the same number of rows of the same dim from a dense device table by
known index (no hashing, no probing: the memory-bound floor of any lookup). Both are timed with
CUDA events, median over repeated launches; the batch rotates among a few key sets so repeats
do not just hit the L2 cache. A batch large enough to be de-duplicated in a lookup
(``DEDUP_MIN_KEYS``) is de-duplicated here too and counts its hits into the cache's hit bytes, as
the lookup's query does; afterwards those hits are folded into the scores.

``kernel_share_of_gather_floor`` = gather time / query time: the fraction of the floor's
throughput the cache kernel reaches (1.0 = as fast as a plain gather), at ``hit_rate``: the
share of the timed batch's keys the cache held (a miss writes the default value instead of
copying a row, so the key mix matters).
"""

from __future__ import annotations

import os
import statistics

import numpy as np

_ROTATIONS = 4
_WARMUP = 5
# The dense gather table: at most this many bytes (and at most a quarter of the free memory),
# at least the batch's rows, at most the cache's capacity in rows.
_FLOOR_TABLE_BYTES = 1 << 30


def unavailable(reason: str) -> dict:
    return {
        "kernel_share_of_gather_floor": None,
        "query_us": None,
        "gather_us": None,
        "keys": None,
        "device": None,
        "hit_rate": None,
        "reason": reason,
    }


def why_not_measurable(front) -> str | None:
    """None when ``front`` is a dynamic cache on a GPU, else the reason it cannot be timed."""
    if front is None:
        return "the table has no embedding cache (gpucache is false, or no usable GPU)"
    if front.read_only:
        return "the table's cache is static or uvm (an indexed table, not the dynamic cache)"
    if not front.backend.on_gpu:
        if os.environ.get("HPS_CACHE_BACKEND", "").lower() == "reference":
            return "HPS_CACHE_BACKEND=reference: the cache runs on the CPU reference"
        return "no usable CUDA device (or no PyCUDA): the cache runs on the CPU reference"
    return None


def _events_median(drv, launch, repeats: int, prepare=None) -> float:
    times = []
    for i in range(repeats + _WARMUP):
        if prepare is not None:
            prepare(i)
        start, end = drv.Event(), drv.Event()
        start.record()
        launch(i)
        end.record()
        end.synchronize()
        if i >= _WARMUP:
            times.append(end.time_since(start))
    return statistics.median(times)


def kernel_vs_gather(front, batches: list[np.ndarray], repeats: int = 30) -> dict:
    """Time ``dc_query`` of the cache behind ``front`` on ``batches`` (equal sizes, rotated)
    against ``gather_rows`` of as many rows of the same dim. Waits for the cache's stream
    first, so nothing else runs on the cache meanwhile."""
    from ..runtime.gpu.gpu_dynamic import COUNT_INTO_HIT_BYTES, COUNT_INTO_SCORES, QUERY_ARGS
    from ..runtime.gpu.placement import DEDUP_MIN_KEYS, query_seed

    cache = front.backend
    device, drv, dim = cache.device, cache.device.drv, cache.dim
    batches = [np.ascontiguousarray(b, dtype=np.int64) for b in batches[:_ROTATIONS]]
    count_mode = COUNT_INTO_SCORES
    if batches[0].size >= DEDUP_MIN_KEYS:  # what the lookup's query kernel gets: unique keys
        batches = [np.unique(b) for b in batches]
        n = min(b.size for b in batches)
        batches = [b[:n] for b in batches]
        count_mode = COUNT_INTO_HIT_BYTES
    n = int(batches[0].size)
    rng = np.random.default_rng(n)
    with device.scope():
        if count_mode == COUNT_INTO_HIT_BYTES:
            # lookups before this may have left up to 255 in a hit byte: fold them first, so
            # the launches below (at most one per slot each) cannot overflow one
            cache.note_unfolded_hits()
        cache.stream.synchronize()
        free, _ = drv.mem_get_info()
        row_bytes = dim * 4
        rows = min(cache.capacity, max(n, min(_FLOOR_TABLE_BYTES, free // 4) // row_bytes))
        table = device.alloc(rows * row_bytes)
        drv.memset_d32(table, 0, rows * dim)
        d_keys = [device.to_device(b) for b in batches]
        d_index = [device.to_device(rng.integers(0, rows, n).astype(np.int64)) for _ in batches]
        out = device.alloc(n * row_bytes + 16)
        mkeys, mpos, count = device.alloc(n * 8), device.alloc(n * 8), device.alloc(16)
        query = device.kernels.function("dc_query", QUERY_ARGS)
        gather = device.kernels.function("gather_rows", "PPqiP")
        grid, block = (device.launch_grid(n, 1), 1), (256, 1, 1)
        k = len(batches)

        def reset_misses(i: int) -> None:  # the miss list restarts at 0 (it holds n at most)
            drv.memset_d32(count, 0, 1)

        def launch_query(i: int) -> None:
            query.prepared_async_call(
                grid,
                block,
                None,
                int(d_keys[i % k]),
                0,
                n,
                int(cache.d_keys),
                int(cache.d_scores),
                int(cache.d_hits),
                int(cache.d_values),
                cache.num_sets,
                dim,
                np.float32(front.default_value),
                int(out),
                int(mkeys),
                int(mpos),
                int(count),
                count_mode,
                query_seed(i),
            )

        def launch_gather(i: int) -> None:
            gather.prepared_async_call(
                grid, block, None, int(table), int(d_index[i % k]), n, dim, int(out)
            )

        assert repeats + _WARMUP <= 255  # hits per slot in the hit bytes (one per launch)
        ms_query = _events_median(drv, launch_query, repeats, reset_misses)
        misses = np.empty(4, np.uint32)
        drv.memcpy_dtoh(misses, count)  # of the last launch
        if count_mode == COUNT_INTO_HIT_BYTES:
            cache.note_unfolded_hits()  # the launches above counted into the hit bytes
        ms_gather = _events_median(drv, launch_gather, repeats)
        for buf in (table, out, mkeys, mpos, count, *d_keys, *d_index):
            buf.free()
    return {
        "kernel_share_of_gather_floor": ms_gather / ms_query,
        "query_us": ms_query * 1e3,
        "gather_us": ms_gather * 1e3,
        "keys": n,
        "device": device.name,
        "hit_rate": 1.0 - int(misses[0]) / n,
        "reason": None,
    }
