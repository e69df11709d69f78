"""Prometheus metrics on their own port (prometheus_client's threaded HTTP server).

Request side (updated on the event loop by the HTTP and gRPC front ends and the batchers; the
counters and histograms of requests and batches are loop_metrics.py's, without locks):

- ``hps_requests_total{model, protocol, code}``: requests answered, by status (HTTP code or
  gRPC status name); unknown model names are counted under ``model="_unknown"``;
- ``hps_request_duration_seconds{model, protocol}``: latency histogram, receipt to answer;
- ``hps_queue_depth{model}``: requests waiting in the batcher;
- ``hps_batch_requests{model}`` / ``hps_batch_samples{model}``: sizes of executed batches;
- ``hps_executions_total{model, device}`` / ``hps_execution_requests_total{model, device}`` /
  ``hps_execution_samples_total{model, device}``: batches run on each device of the model's
  ``deployed_device_list``, and their requests and samples (``device=""`` for SavedModels);
- ``hps_client_disconnects_total{protocol}``: requests whose client went away before the
  answer (not counted in ``hps_requests_total``);
- ``hps_ready``: 1 when the server is ready; ``hps_inflight_requests``: requests being
  answered.

Runtime side, read from the HPS runtimes at every scrape:

- ``hps_table_keys_total{model, table, result}``: keys looked up in the CPU tiers by result
  (``volatile_hit``, ``persistent_hit``, ``default``, ``volatile_failure``);
- ``hps_table_hit_rate{model, table, tier}``: share of those keys each tier answered;
- ``hps_table_lookup_seconds{model, table, quantile}``: lookup latency percentiles;
- ``hps_cache_keys_total{model, table, device, result}`` (``hit``/``miss``),
  ``hps_cache_hit_rate``, ``hps_cache_capacity`` and ``hps_cache_occupancy`` (slots used) of
  each embedding cache;
- ``hps_worker_buffer_waits_total{model, device}``: lookups that found every worker buffer of
  the model on that device busy and waited for one.
"""

from __future__ import annotations

import logging

from ..runtime.errors import InvalidInputError
from .loop_metrics import LoopCounter, LoopHistogram, LoopMetrics

log = logging.getLogger("hps_cli.serve")

LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384, 65536)
TIER_RESULTS = (
    ("volatile_hits", "volatile_hit"),
    ("persistent_hits", "persistent_hit"),
    ("defaults", "default"),
    ("volatile_failures", "volatile_failure"),
)


class MetricsEndpoint:
    """/metrics over HTTP for ``self.registry`` (a server's own, or a supervisor's merged from
    its workers)."""

    registry: object
    _server = None

    def start(self, host: str, port: int) -> int:
        """Serve /metrics on ``host:port`` (0: any free port); returns the port. A port that
        cannot be bound is the user's ``--metrics-port``."""
        from prometheus_client import start_http_server

        try:
            self._server, _ = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise InvalidInputError(
                f"cannot listen on {host}:{port}: {exc.strerror}",
                location="--metrics-port",
                hint="choose another port or host",
            ) from None
        return self._server.server_address[1]

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class Metrics(MetricsEndpoint):
    """The registry and the request-side metrics.

    Args:
        runtimes: a callable returning the ``ServedRuntime``s to report (at scrape time).
    """

    def __init__(self, runtimes):
        from prometheus_client import (
            CollectorRegistry,
            Counter,
            Gauge,
            disable_created_metrics,
            process_collector,
        )

        disable_created_metrics()

        self.registry = CollectorRegistry()
        process_collector.ProcessCollector(registry=self.registry)
        self.requests = LoopCounter(
            "hps_requests",
            "Requests answered, by model, protocol and status code",
            ["model", "protocol", "code"],
        )
        self.latency = LoopHistogram(
            "hps_request_duration_seconds",
            "Request latency, receipt to answer",
            ["model", "protocol"],
            LATENCY_BUCKETS,
        )
        self.queue_depth = Gauge(
            "hps_queue_depth", "Requests waiting in the batcher", ["model"], registry=self.registry
        )
        self.batch_requests = LoopHistogram(
            "hps_batch_requests", "Requests per executed batch", ["model"], BATCH_BUCKETS
        )
        self.batch_samples = LoopHistogram(
            "hps_batch_samples", "Samples per executed batch", ["model"], BATCH_BUCKETS
        )
        self.executions = LoopCounter(
            "hps_executions", "Batches run, by model and device", ["model", "device"]
        )
        self.execution_requests = LoopCounter(
            "hps_execution_requests",
            "Requests of the batches run, by model and device",
            ["model", "device"],
        )
        self.execution_samples = LoopCounter(
            "hps_execution_samples",
            "Samples of the batches run, by model and device",
            ["model", "device"],
        )
        self.registry.register(
            LoopMetrics(
                self.requests,
                self.latency,
                self.batch_requests,
                self.batch_samples,
                self.executions,
                self.execution_requests,
                self.execution_samples,
            )
        )
        self.client_disconnects = Counter(
            "hps_client_disconnects",
            "Requests whose client went away before the answer (not errors)",
            ["protocol"],
            registry=self.registry,
        )
        self.ready = Gauge("hps_ready", "1 when the server is ready", registry=self.registry)
        self.inflight = Gauge(
            "hps_inflight_requests",
            "Requests being answered (HTTP and gRPC)",
            registry=self.registry,
        )
        self.registry.register(_RuntimeCollector(runtimes))
        self._server = None

    def observe(self, model: str, protocol: str, code: str | int, seconds: float) -> None:
        """One answered request (on the event loop); unknown models get no latency series."""
        labels = (model, protocol)
        self.requests.inc((model, protocol, str(code)))
        if model != "_unknown":
            self.latency.observe(labels, seconds)

    def on_batch(self, model: str, requests: int, samples: int, device=None) -> None:
        """One executed batch (on the event loop); ``device`` None for a model without
        devices."""
        labels = (model,)
        self.batch_requests.observe(labels, requests)
        self.batch_samples.observe(labels, samples)
        key = (model, "" if device is None else str(device))
        self.executions.inc(key)
        self.execution_requests.inc(key, requests)
        self.execution_samples.inc(key, samples)

    def track_queue(self, model: str, depth) -> None:
        self.queue_depth.labels(model).set_function(depth)

    def forget(self, model: str) -> None:
        """Drop an unloaded model's batch and device series (its request counts stay)."""

        def mine(labels: tuple[str, ...]) -> bool:
            return labels[0] == model

        for metric in (
            self.batch_requests,
            self.batch_samples,
            self.executions,
            self.execution_requests,
            self.execution_samples,
        ):
            metric.remove(mine)
        try:
            self.queue_depth.remove(model)
        except KeyError:
            pass


class _RuntimeCollector:
    """Tier and cache statistics of the runtimes, read at scrape time."""

    def __init__(self, runtimes):
        self.runtimes = runtimes

    def describe(self):
        return []

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        keys = CounterMetricFamily(
            "hps_table_keys",
            "Keys looked up in the CPU tiers, by result",
            labels=["model", "table", "result"],
        )
        rate = GaugeMetricFamily(
            "hps_table_hit_rate",
            "Share of the keys looked up in the CPU tiers that each tier answered",
            labels=["model", "table", "tier"],
        )
        latency = GaugeMetricFamily(
            "hps_table_lookup_seconds",
            "Lookup latency percentiles (front cache included)",
            labels=["model", "table", "quantile"],
        )
        cache_keys = CounterMetricFamily(
            "hps_cache_keys",
            "Keys looked up in the embedding cache, by result",
            labels=["model", "table", "device", "result"],
        )
        cache_rate = GaugeMetricFamily(
            "hps_cache_hit_rate",
            "Hit rate of the embedding cache",
            labels=["model", "table", "device"],
        )
        capacity = GaugeMetricFamily(
            "hps_cache_capacity",
            "Slots of the embedding cache",
            labels=["model", "table", "device"],
        )
        occupancy = GaugeMetricFamily(
            "hps_cache_occupancy",
            "Slots in use in the embedding cache",
            labels=["model", "table", "device"],
        )
        waits = CounterMetricFamily(
            "hps_worker_buffer_waits",
            "Lookups that waited for a worker buffer, by model and device",
            labels=["model", "device"],
        )
        families = (keys, rate, latency, cache_keys, cache_rate, capacity, occupancy, waits)
        for handle in self.runtimes():
            try:
                self._collect_runtime(handle, *families)
            except Exception:  # a closing runtime must not break the scrape
                log.debug("metrics: runtime %s skipped", handle.path, exc_info=True)
        yield from families

    @staticmethod
    def _collect_runtime(
        handle, keys, rate, latency, cache_keys, cache_rate, capacity, occupancy, waits
    ) -> None:
        hps = handle.hps
        for model, tables in hps.stats().items():
            for table, snap in tables.items():
                counters = snap["counters"]
                looked_up = counters.get("keys", 0)
                for name, result in TIER_RESULTS:
                    keys.add_metric([model, table, result], counters.get(name, 0))
                for name, tier in TIER_RESULTS[:3]:
                    rate.add_metric(
                        [model, table, tier.split("_")[0]],
                        counters.get(name, 0) / looked_up if looked_up else 0.0,
                    )
                for q in ("p50", "p90", "p99"):
                    latency.add_metric([model, table, q], snap["latency"].get(f"{q}_s", 0.0))
        for cfg in hps.config.models:
            for device in cfg.deployed_device_list:
                pool = hps.worker_pool(cfg.model, device)
                if pool is not None:
                    waits.add_metric([cfg.model, str(device)], pool.waits)
                for t in range(cfg.num_tables):
                    front = hps.front_cache(cfg.model, t, device)
                    if front is None:
                        continue
                    labels = [cfg.model, cfg.table_name(t), str(device)]
                    stats = front.stats()
                    cache_keys.add_metric(labels + ["hit"], stats.get("hits", 0))
                    cache_keys.add_metric(labels + ["miss"], stats.get("misses", 0))
                    cache_rate.add_metric(labels, stats.get("hit_rate") or 0.0)
                    if "capacity" in stats:
                        capacity.add_metric(labels, stats["capacity"])
                    used = front.occupancy()
                    if used is not None:
                        occupancy.add_metric(labels, used)
