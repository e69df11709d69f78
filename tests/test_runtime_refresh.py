"""Cache refresh (runtime/gpu/refresh.py): cache_refresh_percentage_per_iteration sets the share
of a cache refreshed per step, num_of_refresher_buffer_in_pool how many steps run at once, a
share of 0 refreshes nothing (as HPS, with a warning), a step overtaken by an update writes
nothing; and thread_pool_size is each model's own."""

from __future__ import annotations

import logging
import math
import threading
import time

import numpy as np
import pytest
from helpers.runtime_configs import make_tables, ps_config
from hps_cli.runtime import HPS
from hps_cli.runtime.gpu.cache_factory import EmbeddingCacheFactory
from hps_cli.runtime.gpu.embedding_cache import DynamicEmbeddingCache
from hps_cli.runtime.gpu.placement import WAYS, num_sets_for
from hps_cli.runtime.gpu.ref_backends import RefDynamicBackend
from hps_cli.runtime.gpu.refresh import CacheRefresher
from hps_cli.runtime.table.synthetic import synthetic_vectors


@pytest.fixture(params=["reference", pytest.param("gpu", marks=pytest.mark.gpu)])
def backend(request, monkeypatch):
    monkeypatch.setenv("HPS_CACHE_BACKEND", request.param)
    return request.param


@pytest.fixture
def tables(tmp_path):
    return make_tables(tmp_path, {"users": (800, 8), "items": (800, 4)})


def _hps(tables, **model):
    doc = ps_config(
        tables,
        {"users": 8, "items": 4},
        gpucache=True,
        gpucacheper=1.0,
        hit_rate_threshold=1.0,
        **model,
    )
    factory = EmbeddingCacheFactory()
    return HPS(doc, cache_factory=factory), factory


class _Gauge:
    """Wraps fetches: records their calls (keys per call) and how many run at once."""

    def __init__(self, delay: float = 0.0):
        self.delay = delay
        self.calls: list[int] = []
        self.running = self.most = 0
        self.lock = threading.Lock()

    def wrap(self, fetch):
        def watched(keys):
            with self.lock:
                self.calls.append(keys.size)
                self.running += 1
                self.most = max(self.most, self.running)
            try:
                time.sleep(self.delay)
                return fetch(keys)
            finally:
                with self.lock:
                    self.running -= 1

        return watched


@pytest.mark.parametrize("share", [0.25, 0.1, 0.003])
def test_the_share_sets_the_sets_per_step(tables, backend, share):
    hps, factory = _hps(tables, cache_refresh_percentage_per_iteration=share)
    with hps:
        cache = hps.front_cache("m", "users")
        sets = cache.backend.num_sets
        assert sets == num_sets_for(800, 1.0)  # room for 800 rows, with the slots' headroom
        per_step = max(1, math.ceil(share * sets))
        ranges = cache.refresh_ranges(share)
        assert len(ranges) == math.ceil(sets / per_step)
        assert all(end - begin <= per_step for begin, end in ranges)
        items = hps.front_cache("m", "items")
        gauges = {"users": _Gauge(), "items": _Gauge()}
        cache.fetch = gauges["users"].wrap(cache.fetch)
        items.fetch = gauges["items"].wrap(items.fetch)
        expected = sum(1 for b, e in ranges if cache.backend.dump(b, e).size)
        refreshed = factory.refreshers[("m", 0)].refresh()
        calls = gauges["users"].calls
        assert len(calls) == expected  # one fetch per step with cached keys
        assert max(calls) <= per_step * WAYS
        assert refreshed == sum(calls) + sum(gauges["items"].calls)
        assert refreshed == cache.backend.occupancy() + items.occupancy()
    factory.close()


@pytest.mark.parametrize("workers", [1, 3])
def test_refresher_buffers_bound_the_steps_running_at_once(tables, workers, monkeypatch):
    monkeypatch.setenv("HPS_CACHE_BACKEND", "reference")
    hps, factory = _hps(
        tables,
        cache_refresh_percentage_per_iteration=0.1,
        num_of_refresher_buffer_in_pool=workers,
    )
    with hps:
        gauge = _Gauge(delay=0.05)
        for name in ("users", "items"):
            front = hps.front_cache("m", name)
            front.fetch = gauge.wrap(front.fetch)
        factory.refreshers[("m", 0)].refresh()
        assert len(gauge.calls) >= 2 * 9  # 10 steps per table (an empty set range skips)
        assert gauge.most == workers
    factory.close()


def test_refreshes_run_periodically_and_reload_changed_rows(tables, backend):
    hps, factory = _hps(tables, refresh_interval=1, cache_refresh_percentage_per_iteration=0.5)
    with hps:
        cache = hps.front_cache("m", "users")
        keys = np.array([1, 2], dtype=np.int64)
        cache.update(keys, np.zeros((2, 8), np.float32))  # cached copies go stale
        refresher = factory.refreshers[("m", 0)]
        rounds = refresher.rounds + 2  # a whole round that started after the update
        deadline = time.monotonic() + 10
        while refresher.rounds < rounds and time.monotonic() < deadline:
            time.sleep(0.05)
        assert refresher.rounds >= rounds
        np.testing.assert_array_equal(hps.lookup(keys, "m", "users"), synthetic_vectors(keys, 8))
        assert cache.stats()["refreshed"] >= cache.backend.occupancy()
    factory.close()


def test_a_share_of_zero_refreshes_nothing_and_start_up_says_so(tables, caplog, monkeypatch):
    monkeypatch.setenv("HPS_CACHE_BACKEND", "reference")
    with caplog.at_level(logging.WARNING, logger="hps_cli.runtime"):
        hps, factory = _hps(tables, refresh_interval=1)
    with hps:
        refresher = factory.refreshers[("m", 0)]
        assert refresher.refresh() == 0 and refresher._timer is None
    factory.close()
    assert any(
        "$.models[0].refresh_interval: has no effect when cache_refresh_percentage" in r.message
        for r in caplog.records
    )


def test_a_step_overtaken_by_an_update_writes_nothing():
    """refresh step: fetch (old row) … HPS.insert updates the cached copy … the step must
    not write the old row back."""
    fetching, release = threading.Event(), threading.Event()
    stale = {"row": None}

    def slow_fetch(keys):
        rows = synthetic_vectors(keys, 8)
        if stale["row"] is not None:  # the refresh: the tiers answer before the update
            fetching.set()
            release.wait(5)
        return rows

    cache = DynamicEmbeddingCache(
        RefDynamicBackend(4, 8), fetch=slow_fetch, hit_rate_threshold=1.0, default_value=0.0
    )
    keys = np.array([3], dtype=np.int64)
    cache.query(keys)  # cached
    stale["row"] = True
    step = threading.Thread(target=cache.refresh, args=(1.0,))
    step.start()
    assert fetching.wait(5)
    new = np.full((1, 8), 9.0, np.float32)
    assert cache.update(keys, new) == 1
    release.set()
    step.join(5)
    np.testing.assert_array_equal(cache.query(keys), new)
    assert cache.stats()["refreshed"] == 0


def test_closing_stops_the_rounds():
    refresher = CacheRefresher(0.5, 2, name="t")
    cache = DynamicEmbeddingCache(
        RefDynamicBackend(4, 8),
        fetch=lambda k: synthetic_vectors(k, 8),
        hit_rate_threshold=1.0,
        default_value=0.0,
    )
    refresher.add(cache)
    cache.query(np.arange(10))
    refresher.start(0.0, 0.02)
    time.sleep(0.2)
    refresher.close()
    rounds = refresher.rounds
    assert rounds > 1
    time.sleep(0.1)
    assert refresher.rounds == rounds
    cache.close()
    assert cache.refresh() == 0  # a closed cache refreshes nothing


def test_thread_pool_size_is_each_models_own(tmp_path, monkeypatch):
    monkeypatch.setenv("HPS_CACHE_BACKEND", "reference")
    tables = make_tables(tmp_path, {"t": (100, 4)})
    doc = ps_config(tables, {"t": 4}, gpucache=True, thread_pool_size=2)
    other = dict(doc["models"][0], model="n", thread_pool_size=5)
    doc["models"].append(other)
    factory = EmbeddingCacheFactory()
    with HPS(doc, cache_factory=factory) as hps:
        threads = {m.model: factory.inserter(m).threads for m in hps.config.models}
        assert threads == {"m": 2, "n": 5}
        assert hps.front_cache("m", "t").inserter is not hps.front_cache("n", "t").inserter
    factory.close()
