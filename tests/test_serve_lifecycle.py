"""`hps serve` start-up and shutdown: SIGTERM lets in-flight requests finish, start-up errors
are one line with the documented exit code, a lookup-only server never loads TensorFlow."""

from __future__ import annotations

import json
import socket
import threading
import time

import numpy as np
import pytest
import tritonclient.grpc as tgrpc
from helpers.runtime_configs import make_tables, ps_config
from helpers.serve_client import (
    binary_lookup_body,
    binary_output,
    http_post,
    lookup_inputs,
    scrape,
)
from hps_cli.runtime import HPS
from hps_cli.runtime.errors import ExitCode

from hps_cli.devtools.serve_process import ServeProcess


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve-life")
    tables = make_tables(tmp, {"a": (1000, 8)})
    path = tmp / "ps.json"
    path.write_text(json.dumps(ps_config(tables, {"a": 8})))
    return path


def test_sigterm_lets_in_flight_requests_finish(config):
    runtime = HPS(config)
    keys = [np.arange(i, i + 5, dtype=np.int64) for i in range(6)]
    expected = [runtime.lookup_concatenated(k, [5], "m") for k in keys]
    runtime.close()
    # Requests wait up to 1.5 s in the batcher for company: SIGTERM arrives while they do.
    server = ServeProcess(config, extra_args=["--max-queue-delay-us", "1500000"]).start()
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def send(i: int) -> None:
        try:
            if i % 2:
                got = (
                    tgrpc.InferenceServerClient(server.grpc_url)
                    .infer("m", lookup_inputs(tgrpc, keys[i], [5]))
                    .as_numpy("OUTPUT0")
                    .reshape(-1)
                )
            else:
                body, headers = binary_lookup_body(keys[i], [5])
                status, resp_headers, data = http_post(
                    server.http_url, "/v2/models/m/infer", body, headers
                )
                assert status == 200, data
                got = binary_output(resp_headers, data)
            results[i] = got
        except BaseException as exc:  # noqa: BLE001 - asserted below
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while scrape(server.metrics_url).get("hps_inflight_requests", 0) < 6:
        assert time.monotonic() < deadline, "the requests never arrived"
        time.sleep(0.02)
    started = time.monotonic()
    code = server.stop(timeout=60)
    for t in threads:
        t.join()
    assert code == 0, server.log_text()[-2000:]
    assert not errors, errors
    for i in range(6):
        np.testing.assert_array_equal(results[i], expected[i])
    assert time.monotonic() - started < 30
    events = [e.get("event") for e in server.log_events()]
    assert events.index("draining") < events.index("stopped")
    with socket.socket() as s:  # nothing listens any more
        assert s.connect_ex(("127.0.0.1", server.ports["http"])) != 0


def test_a_lookup_only_server_does_not_load_tensorflow(config):
    with ServeProcess(config) as server:
        maps = open(f"/proc/{server.process.pid}/maps").read()
        assert "libtensorflow" not in maps and "_pywrap_tensorflow" not in maps
        assert "grpc" in maps  # the probe sees the server's libraries at all


def test_start_up_errors_are_one_line_with_exit_codes(config, tmp_path, hps):
    bad = tmp_path / "bad.json"
    bad.write_text('{"supportlonglong": true, "models": [{"model": "m"}]}')
    res = hps(
        "serve",
        "--config",
        str(bad),
        "--http-port",
        "0",
        "--grpc-port",
        "0",
        "--metrics-port",
        "0",
        timeout=60,
    )
    assert res.returncode == ExitCode.INVALID and "error:" in res.stderr
    assert "Traceback" not in res.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = hps(
            "serve",
            "--config",
            str(config),
            "--http-port",
            str(port),
            "--grpc-port",
            "0",
            "--metrics-port",
            "0",
            timeout=60,
        )
    assert res.returncode == ExitCode.INVALID
    assert "--http-port" in res.stderr and "cannot listen" in res.stderr
    token = tmp_path / "token"
    token.write_text("short")
    res = hps("serve", "--config", str(config), "--admin-token-file", str(token), timeout=60)
    assert res.returncode == ExitCode.INVALID and "at least 16 characters" in res.stderr
    res = hps(
        "serve",
        "--config",
        str(config),
        "--model-repository",
        str(tmp_path / "nope"),
        "--http-port",
        "0",
        "--grpc-port",
        "0",
        "--metrics-port",
        "0",
        timeout=60,
    )
    assert res.returncode == ExitCode.INVALID and "model repository" in res.stderr
