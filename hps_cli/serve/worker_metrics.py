"""The one ``/metrics`` of ``hps serve --workers N``, served by the supervisor on
``--metrics-port``.

At each scrape the supervisor reads every ready worker's own /metrics (each worker binds a
free port of its own, reported through its status pipe), adds the label ``worker="<i>"`` to
each of its series and serves them together, one family per metric name. Sum over ``worker``
for the server's totals (``sum without (worker) (rate(hps_requests_total[1m]))``).

The supervisor's own series (no ``worker`` label on the first two):

- ``hps_ready``: 1 when every worker is ready (the workers' own ``hps_ready`` become
  ``hps_worker_ready{worker}``, which the supervisor sets from what the workers report);
- ``hps_workers``: the configured number of workers;
- ``hps_worker_restarts_total{worker}``: workers restarted after they died.
"""

from __future__ import annotations

import logging
import urllib.request

from .metrics import MetricsEndpoint

log = logging.getLogger("hps_cli.serve")

SCRAPE_TIMEOUT_S = 2.0


class WorkerMetrics(MetricsEndpoint):
    """A registry whose collector merges the workers' metrics.

    Args:
        workers: a callable returning the supervisor's ``WorkerProcess`` objects (``index``,
            ``ready``, ``restarts``, ``metrics_url``).
        configured: the number of workers asked for.
    """

    def __init__(self, workers, configured: int):
        from prometheus_client import CollectorRegistry

        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Merged(workers, configured))
        self._server = None


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_S) as response:
        return response.read().decode()


class _Merged:
    def __init__(self, workers, configured: int):
        self.workers = workers
        self.configured = configured

    def describe(self):
        return []

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        from prometheus_client.parser import text_string_to_metric_families

        workers = list(self.workers())
        families: dict[str, object] = {}
        for worker in workers:
            if not worker.ready or worker.metrics_url is None:
                continue
            try:
                text = _scrape(worker.metrics_url)
            except OSError as exc:  # a worker restarting or stopping: its series are skipped
                log.debug("metrics of worker %d skipped: %s", worker.index, exc)
                continue
            label = str(worker.index)
            for family in text_string_to_metric_families(text):
                if family.name == "hps_ready":
                    continue  # hps_worker_ready below, from what the worker reported
                merged = families.get(family.name)
                if merged is None:
                    merged = families[family.name] = type(family)(
                        family.name, family.documentation, family.type, family.unit
                    )
                merged.samples.extend(
                    s._replace(labels={**s.labels, "worker": label}) for s in family.samples
                )
        yield from families.values()
        ready = GaugeMetricFamily(
            "hps_worker_ready", "1 when the worker is ready", labels=["worker"]
        )
        restarts = CounterMetricFamily(
            "hps_worker_restarts",
            "Times the worker was started again after it died",
            labels=["worker"],
        )
        for worker in workers:
            ready.add_metric([str(worker.index)], 1.0 if worker.ready else 0.0)
            restarts.add_metric([str(worker.index)], worker.restarts)
        yield ready
        yield restarts
        all_ready = len(workers) == self.configured and all(w.ready for w in workers)
        yield GaugeMetricFamily(
            "hps_ready", "1 when every worker is ready", value=1.0 if all_ready else 0.0
        )
        yield GaugeMetricFamily("hps_workers", "Worker processes asked for", value=self.configured)
