"""Lookup statistics and the readers-writer lock."""

from __future__ import annotations

import threading
import time

import pytest
from hps_cli.runtime.rwlock import RWLock
from hps_cli.runtime.stats import LatencyHistogram, TableStats


def test_percentiles_are_within_one_bucket():
    hist = LatencyHistogram()
    for ms in range(1, 101):  # 1 ms .. 100 ms
        hist.record(ms / 1000)
    snap = hist.snapshot()
    assert snap["count"] == 100 and snap["max_s"] == pytest.approx(0.1)
    assert snap["mean_s"] == pytest.approx(0.0505)
    for q, true in ((0.5, 0.050), (0.9, 0.090), (0.99, 0.099)):
        assert true <= hist.percentile(q) <= true * 1.34  # 8 buckets per decade
    assert LatencyHistogram().snapshot()["p99_s"] == 0.0


def test_counters_add_up_across_threads():
    stats = TableStats()

    def work():
        for _ in range(2000):
            stats.add(lookups=1, keys=3)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert stats["lookups"] == 8000 and stats.counters()["keys"] == 24000


def test_rwlock_shares_reads_and_excludes_writes():
    lock = RWLock()
    inside, peak, order = [0], [0], []
    guard = threading.Lock()

    def reader():
        with lock.read():
            with guard:
                inside[0] += 1
                peak[0] = max(peak[0], inside[0])
            time.sleep(0.05)
            with guard:
                inside[0] -= 1

    def writer():
        with lock.write():
            order.append(("write", inside[0]))

    readers = [threading.Thread(target=reader) for _ in range(3)]
    for t in readers:
        t.start()
    time.sleep(0.01)
    w = threading.Thread(target=writer)
    w.start()
    for t in readers + [w]:
        t.join()
    assert peak[0] == 3  # readers ran together
    assert order == [("write", 0)]  # the writer ran alone
