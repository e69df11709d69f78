"""The request metrics that the event loop keeps without locks (loop_metrics.py) expose what
prometheus_client's own Counter and Histogram expose for the same observations."""

from __future__ import annotations

import threading

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from hps_cli.serve.loop_metrics import LoopCounter, LoopHistogram, LoopMetrics
from hps_cli.serve.metrics import LATENCY_BUCKETS, Metrics


def _samples(registry: CollectorRegistry) -> dict[str, float]:
    out = {}
    for line in generate_latest(registry).decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def test_loop_metrics_expose_what_prometheus_client_exposes():
    from prometheus_client import disable_created_metrics

    disable_created_metrics()
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    labels = ["model", "protocol"]
    loop_hist = LoopHistogram("lat_seconds", "latency", labels, LATENCY_BUCKETS)
    loop_count = LoopCounter("reqs", "requests", labels + ["code"])
    ours.register(LoopMetrics(loop_hist, loop_count))
    hist = Histogram("lat_seconds", "latency", labels, buckets=LATENCY_BUCKETS, registry=theirs)
    count = Counter("reqs", "requests", labels + ["code"], registry=theirs)
    rng = np.random.default_rng(2)
    # Values on the bucket edges (a value equal to an edge counts in that bucket), between
    # them, below the first and above the last.
    values = [*LATENCY_BUCKETS, 0.0, 1e-6, 0.0003, 0.07, 11.0, 1e9] + list(
        rng.exponential(0.01, 500)
    )
    for i, value in enumerate(values):
        model, protocol = ("a", "b")[i % 2], ("http", "grpc")[i % 3 == 0]
        code = ("200", "400")[i % 5 == 0]
        loop_hist.observe((model, protocol), value)
        hist.labels(model, protocol).observe(value)
        amount = 1 + i % 4  # batch counters add their requests and samples
        loop_count.inc((model, protocol, code), amount)
        count.labels(model, protocol, code).inc(amount)
    got, expected = _samples(ours), _samples(theirs)
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        assert np.isclose(got[name], value, rtol=1e-9), name
    loop_hist.remove(lambda labels: labels[0] == "a")
    hist.remove("a", "http")
    hist.remove("a", "grpc")
    assert _samples(ours).keys() == _samples(theirs).keys()


def test_a_scrape_from_another_thread_sees_consistent_counts():
    """The metrics server's thread reads while the loop's thread adds series and counts: every
    scrape succeeds, bucket counts never fall, and the final scrape has every observation."""
    metrics = Metrics(lambda: [])
    stop = threading.Event()
    seen: list[float] = []
    errors: list[BaseException] = []

    def scraper() -> None:
        try:
            while not stop.is_set():
                samples = _samples(metrics.registry)
                seen.append(
                    sum(v for k, v in samples.items() if k.startswith("hps_requests_total"))
                )
        except BaseException as exc:  # noqa: BLE001 - asserted below
            errors.append(exc)

    thread = threading.Thread(target=scraper)
    thread.start()
    for i in range(20_000):
        metrics.observe(f"m{i % 50}", ("http", "grpc")[i % 2], 200, 0.001)
        metrics.on_batch(f"m{i % 50}", 1, 3)
    stop.set()
    thread.join()
    assert not errors
    assert seen == sorted(seen)
    final = _samples(metrics.registry)
    assert sum(v for k, v in final.items() if k.startswith("hps_requests_total")) == 20_000
    assert sum(v for k, v in final.items() if k.startswith("hps_batch_samples_sum")) == 60_000
