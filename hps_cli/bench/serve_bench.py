"""`hps bench serve`: a KServe v2 lookup model measured from the client side, like perf_analyzer.

For each concurrency level C, C threads (one tritonclient each, HTTP or gRPC) send requests
back to back with the Triton HPS backend's tensors (``KEYS`` INT64 ``[1, total]``, ``NUMKEYS``
INT32 ``[1, n_tables]`` -> ``OUTPUT0`` FP32). After ``warmup_requests`` requests, time is cut
into windows of ``measurement_interval_ms``; a request belongs to the window in which it
completed (was recorded). The level is stable when the last 3 windows' throughputs, and their
average latencies, are each within ±``stability_percentage`` % of their mean (perf_analyzer's
rule); it stops when stable or after ``max_trials`` windows, and is reported over its last 3
windows (all of them when fewer). Failed requests (any error, or an ``OUTPUT0`` of the wrong
size) are counted as errors and left out of throughput and latency.

Per request: ``send`` is building the input tensors (serialization), the latency runs from the
start of ``send`` to the decoded ``OUTPUT0`` (``recv`` = decoding it). Keys are drawn before the
clock starts. Server columns come from the server's statistics extension (deltas over the same
windows, per request); ``Network+Server Send/Recv`` is what the latency leaves after client
send/recv and the server's queue and compute times. With ``metrics_url``, where the keys were
answered (GPU cache, volatile, persistent, default) comes from the server's Prometheus counters
over the same windows (server_metrics.py).
"""

from __future__ import annotations

import datetime as _dt
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .. import __version__
from ..runtime.errors import (
    DependencyMissingError,
    InvalidInputError,
    NotFoundError,
    ServiceUnavailableError,
)
from .keys import DistributionKeys, TraceKeys, load_trace, parse_distribution
from .lookup_bench import machine
from .server_metrics import MetricsScraper, Snapshot, hit_rates, not_measured
from .stats import Window, is_stable, latency_summary

_SERVER_FIELDS = ("queue", "compute_input", "compute_infer", "compute_output")


@dataclass
class ServeBenchSpec:
    url: str
    model: str
    protocol: str = "http"
    config: Path | None = None  # draw keys from the tables of this ps.json
    distribution: str = "uniform"
    keys_from: Path | None = None
    key_space: int = 1_000_000  # keys 0..N-1 when there is neither config nor trace
    keys_per_request: int = 64  # per table
    concurrency: tuple[int, ...] = (1, 2, 4, 8, 16)
    measurement_interval_ms: int = 5000
    stability_percentage: float = 10.0
    max_trials: int = 10
    binary: bool = True
    warmup_requests: int = 10
    latency_threshold_ms: float | None = None
    request_timeout_s: float = 60.0
    seed: int = 0
    metrics_url: str | None = None  # the server's Prometheus port: hit rates per level


def parse_concurrency_range(text: str) -> tuple[int, ...]:
    """``start:end[:step]``; without a step, powers of two from start up to end (and end)."""
    parts = text.split(":")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if not 1 <= len(values) <= 3 or any(v < 1 for v in values):
        raise InvalidInputError(
            f"invalid concurrency range '{text}'",
            location="--concurrency-range",
            hint="START[:END[:STEP]] with positive integers, e.g. 1:16",
        )
    start = values[0]
    end = values[1] if len(values) > 1 else start
    if end < start:
        raise InvalidInputError(
            f"the range '{text}' ends before it starts", location="--concurrency-range"
        )
    if len(values) == 3:
        return tuple(range(start, end + 1, values[2]))
    out, level = [], start
    while level < end:
        out.append(level)
        level *= 2
    out.append(end)
    return tuple(out)


class _Protocol:
    """tritonclient behind one small interface (HTTP or gRPC)."""

    def __init__(self, protocol: str, url: str, timeout_s: float):
        try:
            if protocol == "grpc":
                import tritonclient.grpc as client_module
            else:
                import tritonclient.http as client_module
        except ImportError as exc:
            raise DependencyMissingError("tritonclient", "serve", "hps bench serve") from exc
        self.module = client_module
        self.protocol = protocol
        self.url = url
        self.timeout_s = timeout_s

    def client(self):
        if self.protocol == "grpc":
            return self.module.InferenceServerClient(self.url)
        return self.module.InferenceServerClient(
            self.url, connection_timeout=self.timeout_s, network_timeout=self.timeout_s
        )

    def inputs(self, keys: np.ndarray, counts: np.ndarray, binary: bool):
        m = self.module
        k = m.InferInput("KEYS", [1, keys.size], "INT64")
        n = m.InferInput("NUMKEYS", [1, counts.size], "INT32")
        if self.protocol == "grpc":
            k.set_data_from_numpy(keys.reshape(1, -1))
            n.set_data_from_numpy(counts.reshape(1, -1))
            return [k, n], [m.InferRequestedOutput("OUTPUT0")]
        k.set_data_from_numpy(keys.reshape(1, -1), binary_data=binary)
        n.set_data_from_numpy(counts.reshape(1, -1), binary_data=binary)
        return [k, n], [m.InferRequestedOutput("OUTPUT0", binary_data=binary)]

    def infer(self, client, model: str, inputs, outputs):
        if self.protocol == "grpc":
            return client.infer(model, inputs, outputs=outputs, client_timeout=self.timeout_s)
        return client.infer(model, inputs, outputs=outputs)

    def config(self, client, model: str) -> dict:
        if self.protocol == "grpc":
            return client.get_model_config(model, as_json=True).get("config", {})
        return client.get_model_config(model)

    def statistics(self, client, model: str) -> dict | None:
        """Cumulative (count, ns) per server field, or None when the server has no stats."""
        try:
            if self.protocol == "grpc":
                doc = client.get_inference_statistics(model, as_json=True)
            else:
                doc = client.get_inference_statistics(model)
            stats = doc["model_stats"][0]["inference_stats"]
            return {
                f: (int(stats[f].get("count", 0)), int(stats[f].get("ns", 0)))
                for f in _SERVER_FIELDS
            }
        except Exception:
            return None


def _connect(proto: _Protocol, model: str):
    """A client after checking the server and the model; typed errors otherwise."""
    client = proto.client()
    try:
        live = client.is_server_live()
    except Exception as exc:
        raise ServiceUnavailableError(
            f"cannot reach a KServe v2 {proto.protocol.upper()} server at {proto.url} "
            f"({_short(exc)})",
            location=proto.url,
            hint="start it with 'hps serve --config ps.json', or check --url and --protocol",
        ) from None
    if not live:
        raise ServiceUnavailableError(f"the server at {proto.url} is not live", location=proto.url)
    try:
        ready = client.is_model_ready(model)
    except Exception:
        ready = False
    if not ready:
        raise NotFoundError(
            f"the server at {proto.url} has no ready model '{model}'",
            location="--model",
            hint="see GET /v2/models/<name>/ready or the server's log for its models",
        )
    return client


def _short(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]


def _model_tables(proto: _Protocol, client, spec: ServeBenchSpec) -> tuple[list[str], list[int]]:
    """Table names and dims of a lookup model (from --config, else the model's config)."""
    try:
        metadata = (
            client.get_model_metadata(spec.model, as_json=True)
            if proto.protocol == "grpc"
            else client.get_model_metadata(spec.model)
        )
    except Exception as exc:
        raise InvalidInputError(
            f"cannot read the metadata of model '{spec.model}': {_short(exc)}", location="--model"
        ) from None
    names = {i.get("name") for i in metadata.get("inputs", [])}
    if names != {"KEYS", "NUMKEYS"}:
        raise InvalidInputError(
            f"model '{spec.model}' is not a lookup model with the Triton HPS backend's inputs "
            f"KEYS and NUMKEYS (it has {', '.join(sorted(n for n in names if n)) or 'none'})",
            location="--model",
            hint="benchmark a lookup model (one per model of ps.json)",
        )
    try:
        params = proto.config(client, spec.model).get("parameters", {})
    except Exception:
        params = {}

    def param(name: str) -> str:
        value = params.get(name, {})
        return value.get("string_value", "") if isinstance(value, dict) else str(value)

    tables = [t for t in param("embedding_table_names").split(",") if t]
    try:
        dims = [int(d) for d in param("embedding_vecsize_per_table").split(",") if d]
    except ValueError:
        dims = []
    if not tables:  # a server that does not describe its tables: assume one
        return ["table0"], []
    return tables, dims if len(dims) == len(tables) else []


def _sources(spec: ServeBenchSpec, tables: list[str]) -> tuple[list, dict, list[int] | None]:
    """One key source per table, the keys description, and the dims when --config gives them."""
    if spec.keys_from is not None:
        if len(tables) != 1:
            raise InvalidInputError(
                f"a key trace feeds one table, but model '{spec.model}' has {len(tables)}",
                location="--keys-from",
                hint="use --distribution with --config for such models",
            )
        source = TraceKeys(load_trace(spec.keys_from))
        return [source], source.describe(), None
    dist = parse_distribution(spec.distribution)
    if spec.config is None:
        keys = np.arange(spec.key_space, dtype=np.int64)
        sources = [DistributionKeys(keys, dist, spec.seed + i) for i in range(len(tables))]
        return (
            sources,
            {
                "source": "distribution",
                **dist.to_dict(),
                "seed": spec.seed,
                "key_space": spec.key_space,
            },
            None,
        )
    from ..runtime.config.validate import load_config
    from ..runtime.table.reader import TableReader

    cfg = load_config(spec.config, check_files=True)
    try:
        model = cfg.model(spec.model)
    except KeyError:
        raise InvalidInputError(
            f"no model '{spec.model}' in {spec.config}",
            location="--model",
            hint="models: " + ", ".join(cfg.model_names),
        ) from None
    sources = []
    for t in range(model.num_tables):
        with TableReader(model.table_path(t), model.embedding_vecsize_per_table[t]) as reader:
            sources.append(DistributionKeys(np.array(reader.keys()), dist, spec.seed + t))
    return (
        sources,
        {
            "source": "distribution",
            **dist.to_dict(),
            "seed": spec.seed,
            "config": str(spec.config),
            "tables": [
                {"name": model.table_name(t), "keys": s.num_keys} for t, s in enumerate(sources)
            ],
        },
        list(model.embedding_vecsize_per_table),
    )


@dataclass
class _Record:
    end: float
    latency_us: float
    send_us: float
    recv_us: float
    ok: bool


class _Level:
    """The worker threads of one concurrency level and what they recorded."""

    def __init__(
        self,
        proto: _Protocol,
        spec: ServeBenchSpec,
        sources: list,
        dims: list[int],
        concurrency: int,
    ):
        self.proto, self.spec, self.sources, self.dims = proto, spec, sources, dims
        self.concurrency = concurrency
        self.records: list[_Record] = []
        self.first_error: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        # pause(): the clients finish what they sent and wait, so that a scrape of the server's
        # counters sees exactly the requests the bench recorded
        self._gate = threading.Condition()
        self._hold = False
        self._waiting = 0
        self._running = concurrency
        self._threads = [
            threading.Thread(
                target=self._work, args=(i,), daemon=True, name=f"hps-bench-{concurrency}-{i}"
            )
            for i in range(concurrency)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.resume()
        for thread in self._threads:
            thread.join(self.spec.request_timeout_s + 5)

    def snapshot(self) -> list[_Record]:
        with self._lock:
            return list(self.records)

    def recorded(self) -> int:
        with self._lock:
            return len(self.records)

    def pause(self) -> None:
        """Hold every client before its next request, once its request in flight is answered."""
        with self._gate:
            self._hold = True
            self._gate.wait_for(
                lambda: self._waiting >= self._running, self.spec.request_timeout_s + 1
            )

    def resume(self) -> None:
        with self._gate:
            self._hold = False
            self._gate.notify_all()

    def _wait_while_held(self) -> None:
        with self._gate:
            if not self._hold:
                return
            self._waiting += 1
            self._gate.notify_all()
            self._gate.wait_for(lambda: not self._hold)
            self._waiting -= 1

    def _work(self, index: int) -> None:
        try:
            self._requests(index)
        finally:
            with self._gate:
                self._running -= 1
                self._gate.notify_all()

    def _requests(self, index: int) -> None:
        proto, spec = self.proto, self.spec
        try:
            client = proto.client()
        except Exception as exc:  # noqa: BLE001 - recorded, the level reports it
            self._failed(_short(exc))
            return
        sources = [s.spawn(index + 1000 * self.concurrency) for s in self.sources]
        n = spec.keys_per_request
        counts = np.full(len(sources), n, dtype=np.int32)
        expected = n * sum(self.dims) if self.dims else None
        try:
            while not self._stop.is_set():
                self._wait_while_held()
                keys = np.concatenate([s.next_batch(n) for s in sources])
                started = time.perf_counter()
                ok = True
                recv_start = started
                try:
                    inputs, outputs = proto.inputs(keys, counts, spec.binary)
                    sent = time.perf_counter()
                    result = proto.infer(client, spec.model, inputs, outputs)
                    recv_start = time.perf_counter()
                    out = result.as_numpy("OUTPUT0")
                    if out is None or (expected is not None and out.size != expected):
                        raise ValueError(
                            f"OUTPUT0 holds {None if out is None else out.size} "
                            f"values, expected {expected}"
                        )
                except Exception as exc:  # noqa: BLE001 - every failure counts as an error
                    ok = False
                    sent = started
                    self._failed(_short(exc))
                end = time.perf_counter()
                record = _Record(
                    end,
                    (end - started) * 1e6,
                    (sent - started) * 1e6,
                    (end - recv_start) * 1e6 if ok else 0.0,
                    ok,
                )
                with self._lock:
                    self.records.append(record)
        finally:
            close = getattr(client, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:  # noqa: BLE001 - closing a client must not hide results
                    pass

    def _failed(self, message: str) -> None:
        with self._lock:
            if self.first_error is None:
                self.first_error = message


def _windows(
    records: list[_Record], bounds: list[float], marks: list[int], server: list[dict | None]
) -> list[Window]:
    """Window i spans [bounds[i], bounds[i+1]) and holds the requests recorded in it:
    ``records[marks[i]:marks[i+1]]`` (marks: how many were recorded at each bound), so the
    windows the stability decision saw are exactly the windows reported."""
    out = []
    for i in range(len(bounds) - 1):
        w = Window(bounds[i], bounds[i + 1])
        for r in records[marks[i] : marks[i + 1]]:
            if r.ok:
                w.latencies_us.append(r.latency_us)
                w.send_us += r.send_us
                w.recv_us += r.recv_us
            else:
                w.errors += 1
        if server[i] is not None and server[i + 1] is not None:
            w.server = {
                f: (server[i + 1][f][0] - server[i][f][0], server[i + 1][f][1] - server[i][f][1])
                for f in _SERVER_FIELDS
            }
        out.append(w)
    return out


def _run_level(
    proto: _Protocol,
    stats_client,
    spec: ServeBenchSpec,
    sources: list,
    dims: list[int],
    concurrency: int,
    scraper: MetricsScraper | None = None,
) -> dict:
    level = _Level(proto, spec, sources, dims, concurrency)

    def scrape() -> tuple[Snapshot | None, int]:
        """The server's counters and the requests recorded when they were read."""
        if scraper is None:
            return None, level.recorded()
        level.pause()  # no request in flight: the counters and the records agree
        try:
            return scraper.try_snapshot(), level.recorded()
        finally:
            level.resume()

    level.start()
    try:
        deadline = time.perf_counter() + max(30.0, spec.request_timeout_s)
        while level.recorded() < spec.warmup_requests:
            if time.perf_counter() > deadline:
                break
            time.sleep(0.005)
        interval = spec.measurement_interval_ms / 1000.0
        bounds = [time.perf_counter()]
        marks = [level.recorded()]
        metrics, scrape_marks = map(list, zip(scrape()))
        server = [proto.statistics(stats_client, spec.model)]
        windows: list[Window] = []
        while len(windows) < spec.max_trials:
            time.sleep(max(0.0, bounds[-1] + interval - time.perf_counter()))
            bounds.append(time.perf_counter())
            marks.append(level.recorded())
            snapshot, mark = scrape()
            metrics.append(snapshot)
            scrape_marks.append(mark)
            server.append(proto.statistics(stats_client, spec.model))
            windows = _windows(level.snapshot(), bounds, marks, server)
            if is_stable(windows, spec.stability_percentage):
                break
    finally:
        level.stop()
    records = level.snapshot()
    stable = is_stable(windows, spec.stability_percentage)
    used = windows[-3:]
    errors_total = sum(1 for r in records if not r.ok)
    if errors_total == len(records) and records:
        try:
            stats_client.is_server_live()
        except Exception as exc:
            raise ServiceUnavailableError(
                f"the server at {spec.url} went away during the benchmark ({_short(exc)})",
                location=spec.url,
            ) from None
        raise InvalidInputError(
            f"every request failed at concurrency {concurrency}: {level.first_error}",
            location=f"--model {spec.model}",
            hint="check --keys-per-request against the model's max_batch_size, and the keys' range",
        )
    report = _level_report(
        spec, concurrency, used, windows, stable, errors_total, len(sources), level.first_error
    )
    # the counters at the bounds of the reported windows: windows[i] spans metrics[i..i+1]
    first, last = len(windows) - len(used), len(windows)
    before, after = metrics[first], metrics[last]
    if before is not None and after is not None:
        report["hit_rate"], report["hit_counts"] = hit_rates(before, after)
        answered = sum(1 for r in records[scrape_marks[first] : scrape_marks[last]] if r.ok)
        report["hit_counts"]["client_keys"] = answered * report["keys_per_request"]
    return report


def _level_report(
    spec: ServeBenchSpec,
    concurrency: int,
    used: list[Window],
    windows: list[Window],
    stable: bool,
    errors_total: int,
    n_tables: int,
    first_error: str | None,
) -> dict:
    seconds = sum(w.seconds for w in used)
    latencies = [lat for w in used for lat in w.latencies_us]
    requests = len(latencies)
    per_request = spec.keys_per_request * n_tables
    send = sum(w.send_us for w in used) / requests if requests else 0.0
    recv = sum(w.recv_us for w in used) / requests if requests else 0.0
    summary = latency_summary(latencies)
    server = None
    if used and all(w.server is not None for w in used):
        server = {}
        for f in _SERVER_FIELDS:
            count = sum(w.server[f][0] for w in used)
            ns = sum(w.server[f][1] for w in used)
            server[f"{f}_us"] = ns / count / 1e3 if count else 0.0
    mean = summary["mean"] or 0.0
    network = max(0.0, mean - send - recv - (sum(server.values()) if server else 0.0))
    return {
        "concurrency": concurrency,
        "stable": stable,
        "trials": len(windows),
        "windows": [w.to_dict() for w in windows],
        "requests": requests,
        "errors": sum(w.errors for w in used),
        "errors_total": errors_total,
        "first_error": first_error,
        "seconds": seconds,
        "keys_per_request": per_request,
        "throughput_infer_per_sec": requests / seconds if seconds else 0.0,
        "throughput_keys_per_sec": requests * per_request / seconds if seconds else 0.0,
        "latency_us": summary,
        "client": {"send_us": send, "recv_us": recv, "network_server_send_recv_us": network},
        "server": server,
        "hit_rate": not_measured(),
        "hit_counts": None,
    }


def run_serve_bench(
    spec: ServeBenchSpec,
    status: Callable[[str], None] | None = None,
    warn: Callable[[str], None] | None = None,
) -> dict:
    """The concurrency sweep; the report document (schemas/bench_report.schema.json)."""
    from .report import hit_rate_text, keys_text

    say = status or (lambda message: None)
    warn = warn or say
    if spec.protocol not in ("http", "grpc"):
        raise InvalidInputError(
            f"unknown protocol '{spec.protocol}'", location="--protocol", hint="http or grpc"
        )
    if "://" in spec.url:
        raise InvalidInputError(
            f"give the server as HOST:PORT, not a URL with a scheme: '{spec.url}'",
            location="--url",
            hint="e.g. 127.0.0.1:8000",
        )
    started_at = _dt.datetime.now(_dt.timezone.utc)
    proto = _Protocol(spec.protocol, spec.url, spec.request_timeout_s)
    client = _connect(proto, spec.model)
    tables, dims = _model_tables(proto, client, spec)
    sources, keys_doc, config_dims = _sources(spec, tables)
    if config_dims is not None:
        if len(config_dims) != len(tables) or (dims and dims != config_dims):
            raise InvalidInputError(
                f"model '{spec.model}' of the server has tables {tables} with dims {dims}, "
                f"but {spec.config} describes dims {config_dims}",
                location="--config",
            )
        dims = config_dims
    scraper, metrics_url, not_measured_why = None, None, "give --metrics-url"
    if spec.metrics_url is not None:
        scraper = MetricsScraper(spec.metrics_url, spec.model, min(10.0, spec.request_timeout_s))
        metrics_url = scraper.url
        missing = scraper.missing_series(scraper.snapshot())
        if missing is None:
            not_measured_why = None
        else:
            not_measured_why = missing
            warn(f"{missing}: hit rates not measured")
            scraper = None
    say(keys_text(keys_doc))
    levels = []
    for concurrency in spec.concurrency:
        say(
            f"concurrency {concurrency}: windows of {spec.measurement_interval_ms} ms, "
            f"at most {spec.max_trials}"
        )
        level = _run_level(proto, client, spec, sources, dims, concurrency, scraper)
        levels.append(level)
        say(
            f"concurrency {concurrency}: {level['throughput_infer_per_sec']:.1f} infer/s, "
            f"p99 {level['latency_us']['p99'] or 0:.0f} us"
            + ("" if level["stable"] else " (not stable)")
            + (f"; {hit_rate_text(level['hit_rate'])}" if scraper is not None else "")
        )
        avg_ms = (level["latency_us"]["mean"] or 0.0) / 1e3
        if spec.latency_threshold_ms is not None and avg_ms > spec.latency_threshold_ms:
            say(f"average latency {avg_ms:.2f} ms is above the threshold: stopping the sweep")
            break
    return {
        "kind": "serve",
        "tool": "hps",
        "version": __version__,
        "date": started_at.isoformat(timespec="seconds"),
        "machine": machine(),
        "url": spec.url,
        "protocol": spec.protocol,
        "model": spec.model,
        "tables": [{"name": t, "dim": dims[i] if dims else None} for i, t in enumerate(tables)],
        "keys": keys_doc,
        "keys_per_request": spec.keys_per_request * len(tables),
        "binary": spec.binary if spec.protocol == "http" else True,
        "measurement_interval_ms": spec.measurement_interval_ms,
        "stability_percentage": spec.stability_percentage,
        "max_trials": spec.max_trials,
        "warmup_requests": spec.warmup_requests,
        "metrics_url": metrics_url,
        "hit_rate_not_measured": not_measured_why,
        "levels": levels,
    }
