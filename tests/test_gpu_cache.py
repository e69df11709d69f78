"""Differential tests: every GPU kernel against the NumPy reference, on a real GPU.

Marked ``gpu``: skipped without a CUDA device and PyCUDA; with HPS_REQUIRE_GPU=1 (the GPU
machine) a missing GPU fails instead. Random keys include duplicates, misses, sentinel keys and
batches larger than one grid; the caches are small so that evictions happen.
"""

from __future__ import annotations

import numpy as np
import pytest
from hps_cli.runtime.gpu.placement import WAYS

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def device():
    from hps_cli.runtime.gpu.device import get_device

    return get_device(0)


@pytest.fixture(params=["mapped", "copied", "pageable"])
def route(request, device, monkeypatch):
    """How lookup rows reach the host (runtime/gpu/transfers.py): written by the kernel into
    mapped pinned memory, copied from device memory into a pinned block, or copied into a
    pageable array because the pinned pool is full."""
    from hps_cli.runtime.gpu import transfers
    from hps_cli.runtime.gpu.pinned import PinnedPool

    limit = 1 << 62 if request.param == "mapped" else -1
    monkeypatch.setattr(transfers, "MAPPED_RESULT_MAX_BYTES", limit)
    if request.param == "pageable":
        monkeypatch.setattr(device, "pinned", PinnedPool(device, max_bytes=0))
    return request.param


def _pair(device, num_sets, dim):
    from hps_cli.runtime.gpu.gpu_dynamic import GpuDynamicCache
    from hps_cli.runtime.gpu.ref_backends import RefDynamicBackend

    return GpuDynamicCache(device, num_sets, dim), RefDynamicBackend(num_sets, dim)


def _same_state(gpu, ref):
    a, b = gpu.snapshot(), ref.snapshot()
    for name in ("keys", "scores", "floors"):
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    np.testing.assert_array_equal(a["values"].view(np.uint32), b["values"].view(np.uint32))


def _check_query(gpu, ref, keys, default=-3.0):
    pg, pr = gpu.query(keys, default), ref.query(keys, default)
    np.testing.assert_array_equal(np.sort(pg.miss_keys), np.sort(pr.miss_keys))
    assert pg.miss_occurrences == pr.miss_occurrences
    rows = np.random.default_rng(1).standard_normal((pr.miss_keys.size, gpu.dim)).astype(np.float32)
    # the GPU may list unique misses in another order: give each side rows in its own order
    by_key = dict(zip(pr.miss_keys.tolist(), rows))
    rows_g = np.array([by_key[k] for k in pg.miss_keys.tolist()], np.float32).reshape(-1, gpu.dim)
    out_g, out_r = pg.finish(rows_g), pr.finish(rows)
    np.testing.assert_array_equal(out_g, out_r)
    return pr.miss_keys, rows


@pytest.mark.parametrize("dim", [1, 3, 8, 32, 128])
def test_dynamic_cache_matches_reference(device, dim, route):
    from hps_cli.runtime.table.synthetic import synthetic_vectors

    rng = np.random.default_rng(dim)
    gpu, ref = _pair(device, 256 // WAYS, dim)  # 256 slots
    for step in range(40):
        keys = rng.integers(0, 2000, rng.integers(1, 3000)).astype(np.int64)
        if step % 7 == 3:
            keys[:5] = np.iinfo(np.int64).max  # sentinel keys never hit
        missed, rows = _check_query(gpu, ref, keys)
        assert gpu.replace(missed, rows) == ref.replace(missed, rows)
        if step % 5 == 0:
            upd = rng.integers(0, 2000, 300).astype(np.int64)
            vals = synthetic_vectors(upd, dim, seed=step)
            assert gpu.update(upd, vals) == ref.update(upd, vals)
        if step % 6 == 0:
            gone = rng.integers(0, 2000, 200).astype(np.int64)
            assert gpu.invalidate(gone) == ref.invalidate(gone)
        _same_state(gpu, ref)
    np.testing.assert_array_equal(gpu.dump(), ref.dump())
    np.testing.assert_array_equal(gpu.dump(2, 5), ref.dump(2, 5))


def _check_dedup_query(gpu, ref, keys):
    """A de-duplicated GPU query against the reference; returns (reference lookup, the rows
    given to its misses)."""
    pg = gpu.query(keys, 0.0)
    assert pg.unique_total == np.unique(keys).size
    pr = ref.query(keys, 0.0)
    np.testing.assert_array_equal(np.sort(pg.miss_keys), pr.miss_keys)
    assert pg.miss_occurrences == pr.miss_occurrences
    rows = np.random.default_rng(2).standard_normal((pr.miss_keys.size, gpu.dim)).astype(np.float32)
    by_key = dict(zip(pr.miss_keys.tolist(), rows))
    out_g = pg.finish(
        np.array([by_key[k] for k in pg.miss_keys.tolist()], np.float32).reshape(-1, gpu.dim)
    )
    np.testing.assert_array_equal(out_g, pr.finish(rows))
    return pr, rows


@pytest.mark.parametrize("pool", ["pinned", "pageable"])
def test_dedup_path_matches_reference(device, pool, monkeypatch):
    """De-duplicated lookups with misses: with a pinned result the rows go out while the misses
    are fetched and the fetched rows are patched in through the mapped block; with a pageable
    one (pool full) the result is expanded once the misses are in."""
    from hps_cli.runtime.gpu.gpu_dynamic import DEDUP_MIN_KEYS
    from hps_cli.runtime.gpu.pinned import PinnedPool

    if pool == "pageable":
        monkeypatch.setattr(device, "pinned", PinnedPool(device, max_bytes=0))
    rng = np.random.default_rng(7)
    gpu, ref = _pair(device, 16384 // WAYS, 16)
    for _ in range(4):
        keys = rng.zipf(1.2, DEDUP_MIN_KEYS + 12345).astype(np.int64)
        pr, rows = _check_dedup_query(gpu, ref, keys)
        gpu.replace(pr.miss_keys, rows)
        ref.replace(pr.miss_keys, rows)
        _same_state(gpu, ref)


@pytest.mark.parametrize("extra_sets", [0, 1])
def test_hit_bytes_fold_into_the_scores_exactly(device, extra_sets):
    """De-duplicated queries count hits into the hit bytes: many of them in a row (each key
    far above the per-query cap, so unfolded bytes would overflow), an invalidation and a
    re-insert in between, end in the reference's scores. With an odd number of sets the slots
    are no multiple of the fold's 16: the padded tail must be folded too."""
    from hps_cli.runtime.gpu.placement import DEDUP_MIN_KEYS, HIT_FOLD_EVERY
    from hps_cli.runtime.table.synthetic import synthetic_vectors

    rng = np.random.default_rng(11)
    gpu, ref = _pair(device, 2048 // WAYS + extra_sets, 8)  # 2048 slots (+ one set)
    keys = rng.choice(10**9, 1500, replace=False).astype(np.int64)
    rows = synthetic_vectors(keys, 8)
    assert gpu.replace(keys, rows) == ref.replace(keys, rows)
    cached = np.isin(keys, ref.dump())  # not those whose set was full
    keys, rows = keys[cached], rows[cached]
    for q in range(3 * HIT_FOLD_EVERY):
        batch = np.concatenate([np.repeat(keys[:40], 60), rng.choice(keys, DEDUP_MIN_KEYS)])
        _check_dedup_query(gpu, ref, batch)  # misses (the invalidated keys) stay out
        if q == HIT_FOLD_EVERY + 2:
            gone = keys[:10]
            assert gpu.invalidate(gone) == ref.invalidate(gone) == 10
            assert gpu.replace(gone[:5], rows[:5]) == ref.replace(gone[:5], rows[:5]) == 5
    _same_state(gpu, ref)


@pytest.mark.parametrize("rows,gpucacheper", [(3000, 1.0), (50_000, 0.25), (200_000, 1.0)])
def test_prefill_layout_matches_reference_and_holds_every_row(device, rows, gpucacheper):
    """The planned prefill loaded on the GPU equals the reference's, holds every one of the
    ceil(p × rows) rows, and a query of all of them hits."""
    from hps_cli.runtime.gpu.placement import num_sets_for, rows_to_cache
    from hps_cli.runtime.gpu.prefill_plan import plan_prefill
    from hps_cli.runtime.table.synthetic import synthetic_vectors

    rng = np.random.default_rng(rows)
    keys = rng.choice(2**62, rows, replace=False).astype(np.int64)
    vectors = synthetic_vectors(keys, 32)
    wanted = rows_to_cache(rows, gpucacheper)
    num_sets = num_sets_for(rows, gpucacheper)
    plan = plan_prefill(keys[:wanted], num_sets)
    assert plan.placed == wanted
    slot_rows = plan.slot_rows(np.arange(wanted))
    gpu, ref = _pair(device, num_sets, 32)
    gpu.replace(keys[-100:], vectors[-100:])  # loading replaces what was there
    assert gpu.load(plan.slot_keys, slot_rows, vectors) == ref.load(
        plan.slot_keys, slot_rows, vectors
    )
    _same_state(gpu, ref)
    for batch in (keys[:wanted][rng.permutation(wanted)[:5000]], keys[:wanted]):
        pending = gpu.query(batch, -1.0)
        assert pending.miss_keys.size == 0
        np.testing.assert_array_equal(pending.finish(None), synthetic_vectors(batch, 32))
        ref.query(batch, -1.0)  # the same hits counted on both sides
    _check_query(gpu, ref, keys[rng.integers(0, rows, 3000)])  # misses too, when p < 1
    _same_state(gpu, ref)


def test_close_frees_the_device_memory_at_once_and_later_use_raises(device):
    from hps_cli.runtime.gpu.gpu_dynamic import GpuDynamicCache

    drv = device.drv
    with device.scope():
        drv.Context.synchronize()
        before = drv.mem_get_info()[0]
        cache = GpuDynamicCache(device, (1 << 20) // WAYS, 64)  # 256 MiB of rows
        cache.replace(np.arange(1000), np.ones((1000, 64), np.float32))
        cache.query(np.arange(2000), 0.0).finish(None)
        assert drv.mem_get_info()[0] < before - (200 << 20)
        cache.close()
        cache.close()  # idempotent
        assert drv.mem_get_info()[0] > before - (16 << 20)  # back, before any collection
    for call in (
        lambda: cache.query(np.arange(3)),
        lambda: cache.replace(np.arange(3), np.ones((3, 64), np.float32)),
        lambda: cache.dump(),
        lambda: cache.invalidate(np.arange(3)),
    ):
        with pytest.raises(RuntimeError, match="closed"):
            call()


def test_count_unique(device):
    gpu, _ = _pair(device, 4, 4)
    keys = np.random.default_rng(3).integers(0, 10_000, 50_000)
    assert gpu.count_unique(keys) == np.unique(keys).size


@pytest.mark.parametrize("device_rows_share", [1.0, 0.3, 0.0])
def test_indexed_table_matches_reference(device, tmp_path, device_rows_share, route):
    from hps_cli.runtime.gpu.gpu_indexed import GpuIndexedTable
    from hps_cli.runtime.gpu.ref_backends import RefIndexedBackend
    from hps_cli.runtime.table import TableReader, write_table
    from hps_cli.runtime.table.synthetic import synthetic_vectors

    rng = np.random.default_rng(5)
    keys = rng.choice(10**9, 20_000, replace=False).astype(np.int64)
    write_table(tmp_path / "t", keys, synthetic_vectors(keys, 24))
    with TableReader(tmp_path / "t") as reader:
        rows = int(device_rows_share * reader.num_keys)
        gpu = GpuIndexedTable(device, reader, rows, chunk_rows=4096)
        ref = RefIndexedBackend(reader, rows)
    query = np.concatenate([rng.choice(keys, 30_000), rng.integers(0, 10**9, 5000)])
    for batch in (query, query[:777], query[:0], query[5:]):  # the hit count restarts
        out_g, hits_g = gpu.query(batch, 0.25)
        out_r, hits_r = ref.query(batch, 0.25)
        assert hits_g == hits_r
        np.testing.assert_array_equal(out_g, out_r)


def test_gather_and_scatter_kernels(device):
    from hps_cli.runtime.gpu.placement import tile_width

    drv = device.drv
    rng = np.random.default_rng(9)
    for dim in (5, 32, 128):
        table = rng.standard_normal((1000, dim)).astype(np.float32)
        index = rng.integers(0, 1000, 70_000).astype(np.int64)
        t = tile_width(dim)
        with device.scope():
            d_table, d_index = device.to_device(table), device.to_device(index)
            d_out = device.alloc(index.size * dim * 4)
            grid = (device.launch_grid(index.size, 1), 1)
            device.launch(
                "gather_rows",
                "PPqiP",
                grid,
                (256, 1, 1),
                None,
                d_table,
                d_index,
                index.size,
                dim,
                d_out,
            )
            out = np.empty((index.size, dim), np.float32)
            drv.Context.synchronize()
            drv.memcpy_dtoh(out, d_out)
            np.testing.assert_array_equal(out, table[index])
            pos = rng.permutation(1000)[:300].astype(np.int64)
            src_index = rng.integers(0, 1000, 300).astype(np.int64)
            d_pos, d_src_index = device.to_device(pos), device.to_device(src_index)
            d_dst = device.to_device(np.zeros((1000, dim), np.float32))
            device.launch(
                f"scatter_rows_t{t}",
                "PPPqiP",
                (4, 1),
                (256, 1, 1),
                None,
                d_table,
                d_src_index,
                d_pos,
                pos.size,
                dim,
                d_dst,
            )
            dst = np.empty((1000, dim), np.float32)
            drv.Context.synchronize()
            drv.memcpy_dtoh(dst, d_dst)
            expected = np.zeros((1000, dim), np.float32)
            expected[pos] = table[src_index]
            np.testing.assert_array_equal(dst, expected)


def test_embedding_cache_on_gpu_matches_reference_cache(device):
    """The whole cache logic (sync and async, HPS's threshold) on both backends."""
    from hps_cli.runtime.gpu.embedding_cache import AsyncInserter, DynamicEmbeddingCache
    from hps_cli.runtime.table.synthetic import synthetic_vectors

    gpu_b, ref_b = _pair(device, 512 // WAYS, 32)
    fetch = lambda k: synthetic_vectors(k, 32)  # noqa: E731
    for threshold in (1.0, 0.5):
        inserter = AsyncInserter(1)
        caches = [
            DynamicEmbeddingCache(
                b, fetch=fetch, hit_rate_threshold=threshold, default_value=-1.0, inserter=inserter
            )
            for b in (gpu_b, ref_b)
        ]
        rng = np.random.default_rng(11)
        for _ in range(30):
            keys = rng.integers(0, 3000, 800)
            outs = [c.query(keys) for c in caches]
            inserter.flush()
            np.testing.assert_array_equal(outs[0], outs[1])
            if threshold == 1.0:
                np.testing.assert_array_equal(outs[0], fetch(keys))
        _same_state(gpu_b, ref_b)
        inserter.close()


def test_results_are_pinned_and_recycled(device):
    from hps_cli.runtime.gpu.pinned import PinnedPool

    gpu, _ = _pair(device, 4, 16)
    first = gpu.query(np.arange(100), 0.0).finish(None)
    block = PinnedPool.block_of(first)
    address = block.address
    assert first.ctypes.data == address + 16  # the rows follow the 16-byte head
    del first, block
    second = gpu.query(np.arange(100), 0.0).finish(None)
    assert PinnedPool.block_of(second).address == address  # the block came back


def test_miss_count_restarts_at_every_launch(device):
    """The kernels publish their count and reset the counter themselves (no memset between
    lookups): direct lookups on both routes, de-duplicated ones and empty ones in any order
    each report exactly their own misses."""
    from hps_cli.runtime.gpu import transfers
    from hps_cli.runtime.gpu.placement import DEDUP_MIN_KEYS
    from hps_cli.runtime.table.synthetic import synthetic_vectors

    rng = np.random.default_rng(21)
    gpu, _ = _pair(device, 8192 // WAYS, 32)  # 8192 slots
    cached = rng.choice(10**9, 4000, replace=False).astype(np.int64)
    gpu.replace(cached, synthetic_vectors(cached, 32))
    cached = gpu.dump()
    absent = np.arange(10**9, 10**9 + DEDUP_MIN_KEYS, dtype=np.int64)  # never inserted
    saved = transfers.MAPPED_RESULT_MAX_BYTES
    try:
        for step in range(60):
            transfers.MAPPED_RESULT_MAX_BYTES = (1 << 62, -1)[step % 2]
            size = (0, 1, 300, 5000, DEDUP_MIN_KEYS + 10)[step % 5]
            n_absent = int(rng.integers(0, min(size, 2000) + 1))
            keys = rng.permutation(
                np.concatenate(
                    [
                        rng.choice(cached, size - n_absent),
                        rng.choice(absent[:2000], n_absent, replace=False),
                    ]
                )
            )
            pending = gpu.query(keys, -1.0)
            assert pending.miss_keys.size == n_absent, (step, size)
            hit = np.isin(keys, cached)[:, None]
            np.testing.assert_array_equal(
                pending.finish(None), np.where(hit, synthetic_vectors(keys, 32), -1.0)
            )
    finally:
        transfers.MAPPED_RESULT_MAX_BYTES = saved


def test_concurrent_lookups_on_one_cache_each_get_their_own_count(device):
    """Threads with their own workspace slots share the cache's stream and its publishing
    counter: every lookup reports exactly its own misses and rows."""
    import threading

    from hps_cli.runtime.table.synthetic import synthetic_vectors

    gpu, _ = _pair(device, 4096 // WAYS, 16)
    cached = np.arange(3000, dtype=np.int64)
    gpu.replace(cached, synthetic_vectors(cached, 16))
    cached = gpu.dump()
    errors: list = []

    def worker(slot: int) -> None:
        rng = np.random.default_rng(slot)
        try:
            for step in range(40):
                n_absent = (slot * 7 + step) % 50
                keys = rng.permutation(
                    np.concatenate(
                        [rng.choice(cached, 500), 10**9 + slot * 1000 + np.arange(n_absent)]
                    )
                )
                pending = gpu.query(keys, -2.0, slot)
                assert pending.miss_keys.size == n_absent, (slot, step)
                hit = np.isin(keys, cached)[:, None]
                np.testing.assert_array_equal(
                    pending.finish(None), np.where(hit, synthetic_vectors(keys, 16), -2.0)
                )
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(slot,)) for slot in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


def test_two_devices_hold_independent_caches():
    from hps_cli.runtime.gpu.device import get_device, gpu_count
    from hps_cli.runtime.gpu.gpu_dynamic import GpuDynamicCache

    if gpu_count() < 2:
        pytest.skip("needs two GPUs (this machine has one)")

    a = GpuDynamicCache(get_device(0), 4, 8)
    b = GpuDynamicCache(get_device(1), 4, 8)
    a.replace(np.array([1, 2]), np.ones((2, 8), np.float32))
    assert a.query(np.array([1, 2]), 0.0).miss_keys.size == 0
    assert b.query(np.array([1, 2]), 0.0).miss_keys.size == 2
