"""The admin endpoints' updates across server restarts and kill -9 (with and without a
persistent_db), and the non-finite policy on the wire: NaN/Inf inserts are 400 naming the key,
and a JSON response never carries a NaN literal."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers.runtime_configs import make_tables, ps_config, rocks_db
from helpers.serve_client import http_post
from hps_cli.runtime.table.synthetic import synthetic_vectors

from hps_cli.devtools.serve_process import ServeProcess

pytestmark = pytest.mark.slow

DIM = 4
TOKEN = "durable-admin-token-for-tests"


def _config(tmp_path, persistent: bool):
    tables = make_tables(tmp_path, {"t": (500, DIM)})
    doc = ps_config(
        tables,
        {"t": DIM},
        persistent=rocks_db(tmp_path / "db") if persistent else None,
        gpucache=True,
        gpucacheper=0.5,
        hit_rate_threshold=1.0,
    )
    path = tmp_path / "ps.json"
    path.write_text(json.dumps(doc))
    return path


def _server(config, *flags):
    # The NumPy reference stands in for the dynamic cache without a GPU (none is built then),
    # so that admin updates and their replay reach a cache too.
    env = {"HPS_ADMIN_TOKEN": TOKEN, "HPS_CACHE_BACKEND": "reference"}
    return ServeProcess(config, extra_args=list(flags), env=env).start()


def _update(server, op, keys, vectors=None):
    inputs = [{"name": "KEYS", "datatype": "INT64", "shape": [len(keys)], "data": keys}]
    if vectors is not None:
        inputs.append(
            {"name": "VECTORS", "datatype": "FP32", "shape": [len(keys), DIM], "data": vectors}
        )
    status, _, body = http_post(
        server.http_url,
        f"/v2/admin/models/m/tables/t/{op}",
        json.dumps({"inputs": inputs}).encode(),
        {"Authorization": f"Bearer {TOKEN}"},
    )
    return status, body


def _lookup(server, keys) -> tuple[np.ndarray, bytes]:
    """OUTPUT0 of a JSON lookup, and the raw body."""
    doc = {
        "inputs": [
            {"name": "KEYS", "datatype": "INT64", "shape": [1, len(keys)], "data": keys},
            {"name": "NUMKEYS", "datatype": "INT32", "shape": [1, 1], "data": [len(keys)]},
        ]
    }
    status, _, body = http_post(server.http_url, "/v2/models/m/infer", json.dumps(doc).encode())
    assert status == 200, body
    data = json.loads(body)["outputs"][0]["data"]
    values = np.array([np.nan if v is None else v for v in data], np.float32)
    return values.reshape(len(keys), DIM), body


def test_admin_updates_survive_restart_and_kill_9_with_a_persistent_db(tmp_path):
    config = _config(tmp_path, persistent=True)
    server = _server(config)
    try:
        status, body = _update(server, "insert", [10, 9999], [[1.5] * DIM, [2.5] * DIM])
        assert status == 200 and json.loads(body)["durable"] is True, body
        assert _update(server, "remove", [11])[0] == 200
    finally:
        assert server.stop() == 0
    server = _server(config)  # a clean restart
    try:
        got, _ = _lookup(server, [10, 9999, 11, 12])
        assert (got[0] == 1.5).all() and (got[1] == 2.5).all()  # 10 is in sparse_files too
        assert (got[2] == 0.0).all()
        np.testing.assert_array_equal(got[3], synthetic_vectors(np.array([12]), DIM)[0])
        assert _update(server, "insert", [12], [[4.5] * DIM])[0] == 200
    finally:
        server.kill()  # kill -9: no shutdown at all
    server = _server(config)
    try:
        got, _ = _lookup(server, [12, 10])
        assert (got[0] == 4.5).all() and (got[1] == 1.5).all()
    finally:
        assert server.stop() == 0


def test_without_a_persistent_db_an_update_lasts_until_restart_and_says_so(tmp_path):
    config = _config(tmp_path, persistent=False)
    server = _server(config)
    try:
        status, body = _update(server, "insert", [10], [[1.5] * DIM])
        answer = json.loads(body)
        assert status == 200 and answer["durable"] is False
        assert "until the server restarts" in answer["lasts"]
        assert (_lookup(server, [10])[0] == 1.5).all()
    finally:
        assert server.stop() == 0
    server = _server(config)
    try:
        np.testing.assert_array_equal(
            _lookup(server, [10])[0][0], synthetic_vectors(np.array([10]), DIM)[0]
        )
    finally:
        assert server.stop() == 0


def _binary_insert(server, keys, vectors):
    """An insert whose VECTORS travel as raw float32 bytes (the binary data extension): the way
    NaN and Inf reach the server, since JSON has no literal for them."""
    raw = np.ascontiguousarray(vectors, np.float32).tobytes()
    header = json.dumps(
        {
            "inputs": [
                {"name": "KEYS", "datatype": "INT64", "shape": [len(keys)], "data": keys},
                {
                    "name": "VECTORS",
                    "datatype": "FP32",
                    "shape": [len(keys), DIM],
                    "parameters": {"binary_data_size": len(raw)},
                },
            ]
        }
    ).encode()
    status, _, body = http_post(
        server.http_url,
        "/v2/admin/models/m/tables/t/insert",
        header + raw,
        {"Authorization": f"Bearer {TOKEN}", "Inference-Header-Content-Length": str(len(header))},
    )
    return status, body


def _json_insert(server, values: str):
    body = (
        '{"inputs":[{"name":"KEYS","datatype":"INT64","shape":[2],"data":[1,7]},'
        '{"name":"VECTORS","datatype":"FP32","shape":[2,4],'
        f'"data":[0,0,0,0,1,{values},1,1]}}]}}'
    ).encode()
    status, _, answer = http_post(
        server.http_url,
        "/v2/admin/models/m/tables/t/insert",
        body,
        {"Authorization": f"Bearer {TOKEN}"},
    )
    return status, answer


def test_non_finite_inserts_are_400_naming_the_key_and_json_never_carries_nan(tmp_path):
    config = _config(tmp_path, persistent=False)
    server = _server(config)
    try:
        for bad in ("1e39", "-1e39"):  # beyond float32: Inf once converted
            status, answer = _json_insert(server, bad)
            assert status == 400, answer
            assert b"key 7" in answer and b"hint" in answer, answer
        for bad in (np.nan, np.inf):
            vectors = np.ones((2, DIM), np.float32)
            vectors[1, 1] = bad
            status, answer = _binary_insert(server, [1, 7], vectors)
            assert status == 400, answer
            assert b"key 7" in answer and b"hint" in answer, answer
        for literal in ("NaN", "Infinity"):  # not JSON: refused by the parser
            status, answer = _json_insert(server, literal)
            assert status == 400 and b"invalid JSON" in answer, answer
        got, _ = _lookup(server, [1, 7])
        np.testing.assert_array_equal(got, synthetic_vectors(np.array([1, 7]), DIM))  # no write
    finally:
        assert server.stop() == 0
    server = _server(config, "--allow-non-finite")
    try:
        vectors = np.array([[1.0, np.nan, 2.0, np.inf]], np.float32)
        status, answer = _binary_insert(server, [7], vectors)
        assert status == 200, answer
        got, raw = _lookup(server, [7])
        assert b"NaN" not in raw and b"Infinity" not in raw  # null instead: valid JSON
        assert np.isnan(got[0, 1]) and np.isnan(got[0, 3]) and got[0, 0] == 1.0
    finally:
        assert server.stop() == 0
