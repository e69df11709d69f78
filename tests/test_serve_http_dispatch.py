"""`hps serve`'s HTTP request handler: infer requests on plain paths skip aiohttp's router and
middleware (http_app.py ``dispatch``); every other path, and infer paths the short way does not
take (a query, percent-escapes, ``Expect: 100-continue``), get the router's answer. Both ways
answer the same vectors, the same errors and the same metrics."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest
from helpers.runtime_configs import make_tables, ps_config
from helpers.serve_client import binary_lookup_body, binary_output, http_get, http_post, scrape
from hps_cli.runtime import HPS

from hps_cli.devtools.serve_process import ServeProcess

KEYS = np.arange(10, 138, dtype=np.int64)
COUNTS = np.array([128], np.int32)


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve-dispatch")
    tables = make_tables(tmp, {"a": (1_000, 8)})
    path = tmp / "ps.json"
    path.write_text(json.dumps(ps_config(tables, {"a": 8}, max_batch_size=1024)))
    return path


@pytest.fixture(scope="module")
def expected(config):
    runtime = HPS(config)
    try:
        return runtime.lookup_concatenated(KEYS, COUNTS, "m")
    finally:
        runtime.close()


@pytest.fixture(scope="module")
def server(config):
    with ServeProcess(config) as s:
        yield s


def _infer_count(server) -> float:
    return sum(
        v
        for k, v in scrape(server.metrics_url).items()
        if k.startswith("hps_requests_total{") and 'model="m"' in k and 'protocol="http"' in k
    )


@pytest.mark.parametrize(
    "path",
    [
        "/v2/models/m/infer",  # the short way
        "/v2/models/m/versions/1/infer",  # the short way, with a version
        "/v2/models/m/infer?trace=1",  # a query: the router
        "/v2/models/%6D/infer",  # an escaped name ("m"): the router
        "/v2/models/%6D/versions/%31/infer",
    ],
)
def test_infer_paths_answer_the_same_vectors_and_count_once(server, expected, path):
    body, headers = binary_lookup_body(KEYS, COUNTS)
    before = _infer_count(server)
    status, resp_headers, data = http_post(server.http_url, path, body, headers)
    assert status == 200, data[:300]
    assert resp_headers["Server"] == "hps"
    np.testing.assert_array_equal(binary_output(resp_headers, data), expected)
    assert _infer_count(server) == before + 1


@pytest.mark.parametrize(
    "path, status, needle",
    [
        ("/v2/models/nope/infer", 404, "unknown model 'nope'"),
        ("/v2/models/m/versions/7/infer", 404, "has no version '7'"),
        ("/v2/models/%6E%6F/infer", 404, "unknown model 'no'"),  # via the router
    ],
)
def test_infer_errors_are_the_same_both_ways(server, path, status, needle):
    body, headers = binary_lookup_body(KEYS, COUNTS)
    got, resp_headers, data = http_post(server.http_url, path, body, headers)
    assert got == status
    assert resp_headers["Content-Type"] == "application/json"
    assert needle in json.loads(data)["error"]


def test_a_bad_body_on_the_short_way_is_a_json_400(server):
    got, _, data = http_post(
        server.http_url, "/v2/models/m/infer", b"{not json", {"Content-Type": "application/json"}
    )
    assert got == 400
    assert "invalid JSON" in json.loads(data)["error"]


def test_other_methods_and_paths_still_go_through_the_router(server):
    status, data = http_get(server.http_url, "/v2/models/m/infer")
    assert status == 405
    assert "method GET is not allowed" in json.loads(data)["error"]
    status, data = http_get(server.http_url, "/v2/models/m/infer/extra")
    assert status == 404
    assert http_get(server.http_url, "/v2/health/live")[0] == 200


def test_expect_100_continue_gets_its_interim_answer(server, expected):
    """``Expect: 100-continue`` is the router's to answer: the client hears 100 Continue
    before it sends the body, then the vectors."""
    body, headers = binary_lookup_body(KEYS, COUNTS)
    host, port = server.http_url.split(":")
    head = (
        "POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
        + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head)
        interim = sock.recv(1024)
        assert interim.startswith(b"HTTP/1.1 100 Continue"), interim
        sock.sendall(body)
        answer = b""
        while chunk := sock.recv(1 << 16):
            answer += chunk
    head_part, _, payload = answer.partition(b"\r\n\r\n")
    assert head_part.startswith(b"HTTP/1.1 200"), head_part
    fields = dict(
        line.split(": ", 1) for line in head_part.decode().split("\r\n")[1:] if ": " in line
    )
    np.testing.assert_array_equal(binary_output(fields, payload), expected)


def test_the_runner_puts_the_dispatch_in_front_of_the_router():
    """The connections' request handler is the app's dispatch (else every request would take
    the router: same answers, slower)."""
    import asyncio

    from aiohttp import web

    from hps_cli.serve.http_protocol import DISPATCH, GuardedRunner

    async def main():
        async def dispatch(request):
            return web.Response(text="dispatched")

        app = web.Application()
        app[DISPATCH] = dispatch
        runner = GuardedRunner(app, header_timeout_s=5.0, access_log=None)
        await runner.setup()
        try:
            return runner.server.request_handler is dispatch
        finally:
            await runner.cleanup()

    assert asyncio.run(main())
