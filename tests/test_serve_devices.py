"""Every device of ``deployed_device_list`` serves: `hps serve` spreads a model's batches over
its devices (one execution lane per device, each with its own caches and worker buffers), the
answers say which device served them (``DeviceID``), the metrics count per device, and admin
updates reach the caches of every device.

On the CPU the NumPy reference cache stands in for the devices (``HPS_CACHE_BACKEND=reference``:
one independent cache per device id). The ``gpu`` tests run the same on two real GPUs; they
skip with fewer (tests/helpers/gpus.py: ``HPS_REQUIRE_GPUS=2`` makes that a failure)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from helpers.gpus import need_gpus
from helpers.runtime_configs import make_tables, ps_config
from helpers.serve_client import http_get, http_post, lookup_inputs, scrape
from hps_cli.runtime.table.synthetic import synthetic_vectors

from hps_cli.devtools.serve_process import ServeProcess

# A GPU machine may lack the client stack; the reason shows in the skip line.
tgrpc = pytest.importorskip("tritonclient.grpc", reason="tritonclient is not installed")

TOKEN = "devices-admin-token-0123456"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ROWS, DIM = 4000, 8


def _config(tmp, devices=(0, 1)) -> dict:
    tables = make_tables(tmp, {"t": (ROWS, DIM)})
    return ps_config(
        tables,
        {"t": DIM},
        devices=devices,
        gpucache=True,
        gpucacheper=0.25,
        hit_rate_threshold=1.0,
        max_batch_size=8192,
        num_of_worker_buffer_in_pool=4,
    )


def _server(tmp, env: dict, devices=(0, 1), extra_args=()) -> ServeProcess:
    path = tmp / "ps.json"
    path.write_text(json.dumps(_config(tmp, devices)))
    return ServeProcess(path, env={"HPS_ADMIN_TOKEN": TOKEN, **env}, extra_args=list(extra_args))


def _lookup(server, keys: np.ndarray) -> tuple[np.ndarray, int]:
    """(vectors, DeviceID) of one binary HTTP lookup."""
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "KEYS",
                    "shape": [1, keys.size],
                    "datatype": "INT64",
                    "parameters": {"binary_data_size": keys.nbytes},
                },
                {"name": "NUMKEYS", "shape": [1, 1], "datatype": "INT32", "data": [keys.size]},
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    status, headers, body = http_post(
        server.http_url,
        "/v2/models/m/infer",
        header + keys.astype(np.int64).tobytes(),
        {"Inference-Header-Content-Length": str(len(header))},
    )
    assert status == 200, body
    size = int(headers["Inference-Header-Content-Length"])
    meta = json.loads(body[:size])
    vectors = np.frombuffer(body, np.float32, offset=size).reshape(keys.size, DIM)
    return vectors, meta["parameters"]["DeviceID"]


def _per_device(metrics: dict, name: str, device: int, **labels) -> float:
    """Sum of the samples of ``name`` with this device label (and the given labels)."""
    total = 0.0
    for key, value in metrics.items():
        if key.startswith(name + "{") and f'device="{device}"' in key:
            if all(f'{k}="{v}"' in key for k, v in labels.items()):
                total += value
    return total


def _spread_and_exact(server, clients: int = 8, rounds: int = 30) -> set[int]:
    """Sequential then concurrent lookups, every answer checked; the devices that answered."""
    devices: set[int] = set()
    rng = np.random.default_rng(1)
    for _ in range(6):  # one at a time: inline batches take the devices in turn
        keys = rng.integers(0, ROWS, 50)
        vectors, device = _lookup(server, keys)
        np.testing.assert_array_equal(vectors, synthetic_vectors(keys, DIM))
        devices.add(device)
    errors: list[BaseException] = []

    def client(seed: int) -> None:
        local = np.random.default_rng(seed)
        grpc_client = tgrpc.InferenceServerClient(server.grpc_url)
        try:
            for _ in range(rounds):
                keys = local.integers(0, ROWS, int(local.integers(1, 3000)))
                result = grpc_client.infer("m", lookup_inputs(tgrpc, keys, [keys.size]))
                got = result.as_numpy("OUTPUT0").reshape(keys.size, DIM)
                np.testing.assert_array_equal(got, synthetic_vectors(keys, DIM))
                devices.add(result.get_response().parameters["DeviceID"].int64_param)
        except BaseException as exc:  # noqa: BLE001 - asserted below
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    return devices


def _check_metrics(server, devices=(0, 1)) -> None:
    metrics = scrape(server.metrics_url)
    for device in devices:
        assert _per_device(metrics, "hps_executions_total", device, model="m") > 0, device
        assert _per_device(metrics, "hps_execution_samples_total", device, model="m") > 0
        assert _per_device(metrics, "hps_cache_keys_total", device, model="m", table="t") > 0
        assert f'hps_cache_capacity{{device="{device}",model="m",table="t"}}' in metrics
        assert f'hps_worker_buffer_waits_total{{device="{device}",model="m"}}' in metrics


def test_batches_spread_over_every_device_and_stay_exact(tmp_path):
    with _server(tmp_path, {"HPS_CACHE_BACKEND": "reference"}) as server:
        status, body = http_get(server.http_url, "/v2/models/m/config")
        assert status == 200, body
        config = json.loads(body)
        assert config["instance_group"] == [
            {"name": "m_0", "kind": "KIND_GPU", "count": 2, "gpus": [0, 1]}
        ]
        assert _spread_and_exact(server) == {0, 1}
        _check_metrics(server)


def _update(server, op: str, keys: np.ndarray, vectors: np.ndarray | None = None) -> None:
    inputs = [{"name": "KEYS", "shape": [keys.size], "datatype": "INT64", "data": keys.tolist()}]
    if vectors is not None:
        inputs.append(
            {
                "name": "VECTORS",
                "shape": list(vectors.shape),
                "datatype": "FP32",
                "data": vectors.ravel().tolist(),
            }
        )
    status, _, body = http_post(
        server.http_url,
        f"/v2/admin/models/m/tables/t/{op}",
        json.dumps({"inputs": inputs}).encode(),
        AUTH,
    )
    assert status == 200, body


def _updates_reach_every_device(server) -> None:
    """Lookups loop on both devices while rows are replaced and removed; every answer row is
    the old or the new value of its key (never a third), and once the updates are done, every
    device answers the final values."""
    hot = np.arange(0, 64, dtype=np.int64)  # updated
    cold = np.arange(2000, 2064, dtype=np.int64)  # never updated: always exact
    new = np.full((hot.size, DIM), 7.0, np.float32)
    old = synthetic_vectors(hot, DIM)
    stop, errors = threading.Event(), []

    def client(seed: int) -> None:
        grpc_client = tgrpc.InferenceServerClient(server.grpc_url)
        keys = np.concatenate([hot, cold])
        try:
            while not stop.is_set():
                got = (
                    grpc_client.infer("m", lookup_inputs(tgrpc, keys, [keys.size]))
                    .as_numpy("OUTPUT0")
                    .reshape(keys.size, DIM)
                )
                np.testing.assert_array_equal(got[hot.size :], synthetic_vectors(cold, DIM))
                for row, was, now in zip(got[: hot.size], old, new):
                    if not (
                        np.array_equal(row, was) or np.array_equal(row, now) or (row == 0).all()
                    ):
                        raise AssertionError(f"a row that is neither old, new nor default: {row}")
        except BaseException as exc:  # noqa: BLE001 - asserted below
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        for _ in range(5):
            _update(server, "insert", hot, new)
            _update(server, "remove", hot[:8])
            _update(server, "insert", hot[:8], new[:8])
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors[0]
    seen = set()
    for _ in range(8):  # in turn over the devices
        got, device = _lookup(server, hot)
        np.testing.assert_array_equal(got, new)
        seen.add(device)
    assert seen == {0, 1}


def test_admin_updates_reach_the_caches_of_every_device(tmp_path):
    with _server(tmp_path, {"HPS_CACHE_BACKEND": "reference"}) as server:
        _updates_reach_every_device(server)


def test_one_device_model_reports_its_device(tmp_path):
    with _server(tmp_path, {"HPS_CACHE_BACKEND": "reference"}, devices=(3,)) as server:
        _, device = _lookup(server, np.arange(10, dtype=np.int64))
        assert device == 3
        metrics = scrape(server.metrics_url)
        assert _per_device(metrics, "hps_executions_total", 3, model="m") >= 1


def test_the_batcher_runs_each_device_s_executions_side_by_side():
    """With one instance per device, two batches run at once, one on each device; a third
    waits for a device to be free and goes to the one that is."""
    from hps_cli.serve.batcher import Batcher
    from hps_cli.serve.models import ServedModel, Work
    from hps_cli.serve.protocol import InferRequest, InferResult

    class TwoDevices(ServedModel):
        devices = (0, 1)

        def __init__(self):
            super().__init__("two", None, "two", 1)  # one sample per batch: no coalescing
            self.runs: list[tuple[int, float, float]] = []
            self._lock = threading.Lock()

        def prepare(self, request):
            return Work(1, request, cost=1)

        def execute(self, works, device=None):
            started = time.perf_counter()
            time.sleep(0.2 if device == 0 else 0.05)
            with self._lock:
                self.runs.append((device, started, time.perf_counter()))
            return [InferResult([], {"DeviceID": device}) for _ in works]

    async def run(model):
        executor = ThreadPoolExecutor(4)
        batcher = Batcher(model, executor, instances=1)
        results = await asyncio.gather(
            *(batcher.submit(model.prepare(InferRequest("two"))) for _ in range(3))
        )
        await batcher.close()
        executor.shutdown()
        return [r.parameters["DeviceID"] for r in results]

    model = TwoDevices()
    served = asyncio.run(run(model))
    assert sorted(served) == [0, 1, 1]  # the third went to device 1, free first
    (d0, s0, e0), (d1, s1, e1) = sorted(model.runs)[0], sorted(model.runs)[1]
    assert d0 == 0 and d1 == 1 and s1 < e0 and s0 < e1  # device 0 and 1 overlapped


def test_requests_run_at_once_take_the_devices_in_turn_and_count_per_device():
    """A request nothing will join runs at once on the event loop (batcher.py): on the device
    a batch would take (idle devices in turn), reported to the metrics with that device."""
    from hps_cli.serve.batcher import Batcher
    from hps_cli.serve.models import ServedModel, Work
    from hps_cli.serve.protocol import InferRequest, InferResult

    class TwoDevices(ServedModel):
        devices = (0, 1)
        inline_cost = 10

        def __init__(self):
            super().__init__("two", None, "two", 4)
            self.on_loop: list[bool] = []

        def prepare(self, request):
            return Work(1, request, cost=1)

        def execute(self, works, device=None):
            self.on_loop.append(threading.current_thread() is threading.main_thread())
            return [InferResult([], {"DeviceID": device}) for _ in works]

    batches: list[tuple] = []

    async def run(model):
        executor = ThreadPoolExecutor(1)
        batcher = Batcher(model, executor, on_batch=lambda *batch: batches.append(batch))
        served = []
        for _ in range(4):
            result = await batcher.submit(model.prepare(InferRequest("two")))
            served.append(result.parameters["DeviceID"])
        await batcher.close()
        executor.shutdown()
        return served, batcher.stats

    model = TwoDevices()
    served, stats = asyncio.run(run(model))
    assert served == [0, 1, 0, 1]
    assert model.on_loop == [True] * 4
    assert batches == [("two", 1, 1, device) for device in served]
    assert (stats.executions, stats.success, stats.inferences) == (4, 4, 4)


def test_a_request_run_at_once_is_accounted_whether_it_succeeds_or_fails():
    """The one-request path (batcher.py ``_run_alone``) counts as a batch does: successes with
    their samples, a failure as a failed request that reaches its caller (and the metrics'
    batch callback), a missing or wrong result count as a failure."""
    from hps_cli.runtime.errors import InvalidInputError

    from hps_cli.serve.batcher import Batcher
    from hps_cli.serve.models import ServedModel, Work
    from hps_cli.serve.protocol import InferRequest, InferResult

    class Flaky(ServedModel):
        devices = (3,)
        inline_cost = 10

        def __init__(self):
            super().__init__("flaky", None, "flaky", 8)
            self.answers = ["ok", "raise", "two", "none", "ok"]

        def prepare(self, request):
            return Work(5, request, cost=1)

        def execute(self, works, device=None):
            answer = self.answers.pop(0)
            if answer == "raise":
                raise InvalidInputError("refused", location="KEYS")
            if answer == "none":
                return None
            return [InferResult([], {"DeviceID": device})] * (2 if answer == "two" else 1)

    batches: list[tuple] = []

    async def run(model):
        executor = ThreadPoolExecutor(1)
        batcher = Batcher(model, executor, on_batch=lambda *batch: batches.append(batch))
        outcomes = []
        for _ in range(5):
            try:
                result = await batcher.submit(model.prepare(InferRequest("flaky")))
                outcomes.append(result.parameters["DeviceID"])
            except Exception as exc:  # noqa: BLE001 - what the caller gets
                outcomes.append(type(exc).__name__)
        await batcher.close()
        executor.shutdown()
        return outcomes, batcher.stats

    outcomes, stats = asyncio.run(run(Flaky()))
    assert outcomes == [3, "InvalidInputError", "RuntimeError", "RuntimeError", 3]
    assert (stats.executions, stats.success, stats.fail, stats.inferences) == (5, 2, 3, 10)
    assert stats.compute_ns > 0 and stats.success_ns > 0 and stats.fail_ns > 0
    assert stats.queue_ns >= 0
    assert batches == [("flaky", 1, 5, 3)] * 5


# ---------------------------------------------------------------------------- two real GPUs


@pytest.mark.gpu
def test_two_gpus_spread_batches_and_stay_exact(tmp_path):
    need_gpus(2)
    with _server(tmp_path, {"HPS_CACHE_BACKEND": "gpu"}) as server:
        assert _spread_and_exact(server, clients=16, rounds=40) == {0, 1}
        _check_metrics(server)


@pytest.mark.gpu
def test_two_gpus_caches_stay_exact_under_concurrent_updates(tmp_path):
    need_gpus(2)
    with _server(tmp_path, {"HPS_CACHE_BACKEND": "gpu"}) as server:
        _updates_reach_every_device(server)
        _check_metrics(server)
