"""Where a served model's keys were answered, from `hps serve`'s Prometheus metrics.

`hps bench serve --metrics-url HOST:PORT` scrapes ``/metrics`` at every window bound and takes
the deltas over the reported windows of these counters, summed over the model's tables (and
devices):

- ``hps_cache_keys_total{model, table, device, result}`` (``hit`` / ``miss``): the embedding
  cache's key occurrences;
- ``hps_table_keys_total{model, table, result}`` (``volatile_hit``, ``persistent_hit``,
  ``default``, ``volatile_failure``): keys the CPU tiers answered. A ``volatile_failure`` key
  (a dead Redis node) is also counted by the tier that answered it instead, so it is reported
  as a count, not as a share.

Shares, as `hps bench lookup` reports them (they sum to 1): a table with a cache contributes its
hits to ``gpu_cache`` and splits its misses over ``volatile`` / ``persistent`` / ``default`` in
the proportions the CPU tiers counted over the same windows (the cache fetched the missed keys
from them; all to ``default`` when the tiers counted nothing, as an asynchronous insert answers
misses with the default); a table without a cache contributes the tiers' counts directly.

The counters are the server's: other clients' lookups in the same windows are counted too
(``server_keys`` next to ``client_keys``, the keys the bench saw answered between the same
two scrapes, shows it).
"""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from ..runtime.errors import DependencyMissingError, InvalidInputError, ServiceUnavailableError

TIERS = ("gpu_cache", "volatile", "persistent", "default")
TIER_RESULTS = ("volatile_hit", "persistent_hit", "default", "volatile_failure")
_HINT = "the server's Prometheus port as HOST:PORT (hps serve --metrics-port), e.g. 127.0.0.1:8002"


def not_measured() -> dict:
    return dict.fromkeys(TIERS)


def metrics_endpoint(text: str) -> str:
    """The full URL of ``HOST:PORT`` (``/metrics``) or of an ``http(s)://`` URL (its path, else
    ``/metrics``); InvalidInputError otherwise."""
    raw = text.strip()
    parsed = urllib.parse.urlsplit(raw if "://" in raw else f"http://{raw}")
    try:
        port = parsed.port
    except ValueError:
        port = None
    if parsed.scheme not in ("http", "https") or not parsed.hostname or port is None:
        raise InvalidInputError(
            f"'{text}' is not a metrics address", location="--metrics-url", hint=_HINT
        )
    path = parsed.path if parsed.path not in ("", "/") else "/metrics"
    return urllib.parse.urlunsplit((parsed.scheme, parsed.netloc, path, parsed.query, ""))


@dataclass
class Snapshot:
    """Cumulative counters of one model: per table, the tiers' and the cache's counts."""

    tiers: dict[str, dict[str, float]]  # table -> result -> keys
    cache: dict[str, dict[str, float]]  # table -> hit/miss -> key occurrences (over devices)


class MetricsScraper:
    """Scrapes one server's ``/metrics`` for one model's counters."""

    def __init__(self, address: str, model: str, timeout_s: float = 10.0):
        try:
            import prometheus_client.parser  # noqa: F401 - parse_snapshot's parser
        except ImportError as exc:
            raise DependencyMissingError(
                "prometheus-client", "serve", "hps bench serve --metrics-url"
            ) from exc
        self.url = metrics_endpoint(address)
        self.model = model
        self.timeout_s = timeout_s

    def _text(self) -> str:
        try:
            with urllib.request.urlopen(self.url, timeout=self.timeout_s) as response:
                return response.read().decode("utf-8", errors="replace")
        except urllib.error.HTTPError as exc:
            raise InvalidInputError(
                f"{self.url} answered HTTP {exc.code}: not a Prometheus metrics endpoint",
                location="--metrics-url",
                hint=_HINT,
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ServiceUnavailableError(
                f"cannot read metrics from {self.url} ({reason})",
                location="--metrics-url",
                hint=_HINT,
            ) from None

    def snapshot(self) -> Snapshot:
        """The model's counters now; errors as in ``_text``, or InvalidInputError when the
        answer is not Prometheus text."""
        text = self._text()
        try:
            return parse_snapshot(text, self.model)
        except ValueError as exc:
            raise InvalidInputError(
                f"{self.url} is not Prometheus text ({exc})", location="--metrics-url", hint=_HINT
            ) from None

    def try_snapshot(self) -> Snapshot | None:
        """``snapshot`` during a run: None when the scrape fails (that level is not measured)."""
        try:
            return self.snapshot()
        except (InvalidInputError, ServiceUnavailableError):
            return None

    def missing_series(self, snap: Snapshot) -> str | None:
        """Why hit rates cannot be measured from this server, or None."""
        if snap.tiers:
            return None
        return (
            f"the metrics at {self.url} have no hps_table_keys_total series for model "
            f"'{self.model}' (not an hps server?)"
        )


def parse_snapshot(text: str, model: str) -> Snapshot:
    """The counters of ``model`` in Prometheus text (prometheus_client's parser: escaped label
    values, comments, any order); ValueError when the text does not parse."""
    from prometheus_client.parser import text_string_to_metric_families

    tiers: dict[str, dict[str, float]] = {}
    cache: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if labels.get("model") != model:
                continue
            table, result = labels.get("table", ""), labels.get("result", "")
            if sample.name == "hps_table_keys_total" and result in TIER_RESULTS:
                tiers.setdefault(table, dict.fromkeys(TIER_RESULTS, 0.0))[result] = sample.value
            elif sample.name == "hps_cache_keys_total" and result in ("hit", "miss"):
                counts = cache.setdefault(table, {"hit": 0.0, "miss": 0.0})
                counts[result] += sample.value  # summed over the devices
    return Snapshot(tiers, cache)


def hit_rates(before: Snapshot, after: Snapshot) -> tuple[dict, dict]:
    """(shares per tier, the summed counter deltas) between two snapshots (module doc)."""
    shares = dict.fromkeys(TIERS, 0.0)
    counts = {
        "server_keys": 0.0,
        "cache_hit": 0.0,
        "cache_miss": 0.0,
        **dict.fromkeys(TIER_RESULTS, 0.0),
    }
    for table, tiers_after in after.tiers.items():
        tiers_before = before.tiers.get(table, dict.fromkeys(TIER_RESULTS, 0.0))
        tier = {r: max(0.0, tiers_after[r] - tiers_before[r]) for r in TIER_RESULTS}
        for r in TIER_RESULTS:
            counts[r] += tier[r]
        answered = [tier["volatile_hit"], tier["persistent_hit"], tier["default"]]
        if table in after.cache:
            c_before = before.cache.get(table, {"hit": 0.0, "miss": 0.0})
            hits = max(0.0, after.cache[table]["hit"] - c_before["hit"])
            misses = max(0.0, after.cache[table]["miss"] - c_before["miss"])
            counts["cache_hit"] += hits
            counts["cache_miss"] += misses
            shares["gpu_cache"] += hits
            fetched = sum(answered)
            split = [misses * a / fetched for a in answered] if fetched else [0.0, 0.0, misses]
            counts["server_keys"] += hits + misses
        else:
            split = answered
            counts["server_keys"] += sum(answered)
        for name, value in zip(("volatile", "persistent", "default"), split):
            shares[name] += value
    total = counts["server_keys"]
    rates = {t: (shares[t] / total if total else None) for t in TIERS}
    return rates, {k: int(round(v)) for k, v in counts.items()}
