"""The repository API for lookup models (Triton's repository extension, HTTP and gRPC, behind
the admin token): load from a model block or a ps.json, reload from the server's ps.json with
changed tables while 8 clients loop (every answer all-old or all-new, no error), unload
(requests drained, memory freed), and the errors of a bad config: 400 with its JSON path."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from helpers.runtime_configs import make_tables, ps_config, rocks_db
from helpers.serve_client import (
    binary_lookup_body,
    binary_output,
    http_get,
    http_post,
    lookup_inputs,
    scrape,
)
from hps_cli.runtime.table import write_table
from hps_cli.runtime.table.synthetic import synthetic_vectors, write_synthetic_table

from hps_cli.devtools.serve_process import ServeProcess

TOKEN = "repository-admin-token-0123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
GRPC_AUTH = {"authorization": f"Bearer {TOKEN}"}
ENV = {"HPS_ADMIN_TOKEN": TOKEN, "HPS_CACHE_BACKEND": "reference"}


def _block(doc: dict) -> dict:
    return doc["models"][0]


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A server over ps.json (model m: tables a, b; RocksDB behind the hash map; caches on
    devices 0 and 1) and spare tables for models loaded at run time."""
    tmp = tmp_path_factory.mktemp("serve-repository")
    tables = make_tables(tmp, {"a": (3000, 8), "b": (1000, 4)})
    spare = make_tables(tmp, {"x": (500, 16)}, seed=3)
    doc = ps_config(
        tables,
        {"a": 8, "b": 4},
        persistent=rocks_db(tmp / "db"),
        devices=(0, 1),
        gpucache=True,
        gpucacheper=0.5,
        hit_rate_threshold=1.0,
        max_batch_size=4096,
    )
    path = tmp / "ps.json"
    path.write_text(json.dumps(doc))
    server = ServeProcess(path, env=ENV).start()
    yield {"server": server, "tmp": tmp, "doc": doc, "tables": tables, "spare": spare}
    assert server.stop() == 0


def _infer(server, model: str, keys: np.ndarray, counts) -> np.ndarray:
    body, headers = binary_lookup_body(keys, counts)
    status, resp_headers, data = http_post(
        server.http_url, f"/v2/models/{model}/infer", body, headers
    )
    assert status == 200, data
    return binary_output(resp_headers, data)


def _load(server, model: str, parameters: dict | None = None, token: str = TOKEN):
    body = json.dumps({"parameters": parameters} if parameters is not None else {}).encode()
    return http_post(
        server.http_url,
        f"/v2/repository/models/{model}/load",
        body,
        {"Authorization": f"Bearer {token}"},
    )


def test_load_a_model_block_and_a_document_then_unload_over_http_and_grpc(repo):
    server, spare = repo["server"], repo["spare"]
    block = _block(ps_config(spare, {"x": 16}, model="extra", gpucache=True))
    keys = np.array([0, 7, 499, 500], np.int64)  # 500: not in the table: default 0
    http_client = thttp.InferenceServerClient(server.http_url)
    grpc_client = tgrpc.InferenceServerClient(server.grpc_url)

    http_client.load_model("extra", headers=AUTH, config=json.dumps(block))
    got = _infer(server, "extra", keys, [4]).reshape(4, 16)
    np.testing.assert_array_equal(got[:3], synthetic_vectors(keys[:3], 16, seed=3))
    assert (got[3] == 0).all()
    index = {m["name"]: m["state"] for m in http_client.get_model_repository_index(headers=AUTH)}
    assert index == {"m": "READY", "extra": "READY"}
    config = http_client.get_model_config("extra")
    assert config["instance_group"][0]["gpus"] == [0]

    grpc_client.unload_model("extra", headers=GRPC_AUTH)
    status, _ = http_get(server.http_url, "/v2/models/extra/ready")
    assert status == 404
    index = {m["name"]: m["state"] for m in http_client.get_model_repository_index(headers=AUTH)}
    assert index == {"m": "READY"}  # loaded from a request: gone once unloaded

    # a whole ps.json document (its top-level blocks equal the server's) over gRPC
    document = {**{k: v for k, v in repo["doc"].items() if k != "models"}, "models": [block]}
    grpc_client.load_model("extra", headers=GRPC_AUTH, config=json.dumps(document))
    np.testing.assert_array_equal(_infer(server, "extra", keys, [4]).reshape(4, 16), got)
    # a ps.json file of the server's machine, relative table paths resolved against it
    relative = dict(block, sparse_files=["x"])
    (repo["tmp"] / "extra.json").write_text(json.dumps({**document, "models": [relative]}))
    status, _, body = _load(server, "extra", {"ps_config": str(repo["tmp"] / "extra.json")})
    assert status == 200, body
    np.testing.assert_array_equal(_infer(server, "extra", keys, [4]).reshape(4, 16), got)
    http_client.unload_model("extra", headers=AUTH)
    assert any(e.get("event") == "model_unloaded" for e in server.log_events())


@pytest.mark.parametrize(
    ("parameters", "status", "text"),
    [
        ({"config": '{"model": "bad", "sparse_files": ['}, 400, "parameters.config:1:"),
        ({"config": json.dumps({"model": "other"})}, 400, "$.model"),
        ({"ps_config": "/no/such/ps.json"}, 404, "does not exist"),
        ({"config": "{}", "ps_config": "x"}, 400, "not both"),
        ({"files": "x"}, 400, "unknown load parameter"),
    ],
    ids=["json", "name", "file", "both", "unknown"],
)
def test_malformed_load_parameters(repo, parameters, status, text):
    got, _, body = _load(repo["server"], "bad", parameters)
    assert got == status and text in json.loads(body)["error"], body


def test_a_bad_config_is_400_with_its_json_path_and_changes_nothing(repo):
    server, spare, tmp = repo["server"], repo["spare"], repo["tmp"]
    block = _block(ps_config(spare, {"x": 16}, model="bad"))
    nan_vectors = np.zeros((4, 16), np.float32)
    nan_vectors[2, 5] = np.nan
    write_table(tmp / "nan_x", np.arange(4, dtype=np.int64), nan_vectors, allow_non_finite=True)
    cases = [
        (dict(block, embedding_vecsize_per_table=[8]), "$.sparse_files[0]", "dim"),
        (dict(block, sparse_files=[str(tmp / "nan_x")]), "$.sparse_files[0]", "NaN"),
        (dict(block, sparse_files=[str(tmp / "missing")]), "$.sparse_files[0]", ""),
        (dict(block, max_batch_size="many"), "$.max_batch_size", ""),
        (dict(block, deployed_device_list=[]), "$.deployed_device_list", ""),
    ]
    for fragment, path, text in cases:
        status, _, body = _load(server, "bad", {"config": json.dumps(fragment)})
        error = json.loads(body)["error"]
        assert status == 400 and f"parameters.config {path}" in error and text in error, error
    other_stores = {"supportlonglong": True, "volatile_db": {"type": "hash_map"}}
    status, _, body = _load(
        server, "bad", {"config": json.dumps({**other_stores, "models": [block]})}
    )
    error = json.loads(body)["error"]
    assert status == 400 and "parameters.config $.volatile_db" in error, error
    top = {k: v for k, v in repo["doc"].items() if k != "models"}
    broken = dict(block, sparse_files=[str(tmp / "missing")])
    doc = {**top, "models": [dict(block, model="fine"), broken]}  # the path is the document's
    status, _, body = _load(server, "bad", {"config": json.dumps(doc)})
    assert status == 400 and "$.models[1].sparse_files[0]" in json.loads(body)["error"], body
    status, _, _ = _load(server, "bad", {"config": json.dumps(block)}, token="wrong-token-xxxxxxx")
    assert status == 401
    index = thttp.InferenceServerClient(server.http_url).get_model_repository_index(headers=AUTH)
    assert [m["name"] for m in index] == ["m"]


def test_reload_with_changed_tables_under_load_is_atomic(repo):
    """8 clients loop (HTTP and gRPC) while the table files are rewritten (atomically, as hps
    convert writes them) and model m is reloaded from the server's ps.json: every answer is
    wholly the old or wholly the new version, none fails, and once the reload returned every
    answer is new."""
    server, tables = repo["server"], repo["tables"]
    versions = {"old": 0, "new": 1}
    errors: list[str] = []
    seen: list[tuple[float, str]] = []
    stop = threading.Event()

    def which(keys: np.ndarray, got: np.ndarray) -> str | None:
        a, b = keys[:40], keys[40:]
        for name, seed in versions.items():
            want = np.concatenate(
                [
                    synthetic_vectors(a, 8, seed=seed).ravel(),
                    synthetic_vectors(b, 4, seed=seed).ravel(),
                ]
            )
            if np.array_equal(got, want):
                return name
        return None

    def client(i: int) -> None:
        grpc_client = tgrpc.InferenceServerClient(server.grpc_url) if i % 2 else None
        local = np.random.default_rng(i)
        while not stop.is_set():
            keys = np.concatenate([local.integers(0, 3000, 40), local.integers(0, 1000, 20)])
            started = time.monotonic()
            try:
                if grpc_client is not None:
                    got = (
                        grpc_client.infer("m", lookup_inputs(tgrpc, keys, [40, 20]))
                        .as_numpy("OUTPUT0")
                        .reshape(-1)
                    )
                else:
                    got = _infer(server, "m", keys, [40, 20])
            except Exception as exc:  # noqa: BLE001 - counted and asserted below
                errors.append(repr(exc))
                continue
            version = which(keys, got)
            if version is None:
                errors.append("an answer mixing versions")
            seen.append((started, version))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        write_synthetic_table(tables["a"], 3000, 8, shuffle=True, seed=1, overwrite=True)
        write_synthetic_table(tables["b"], 1000, 4, shuffle=True, seed=1, overwrite=True)
        status, _, body = _load(server, "m")
        reloaded = time.monotonic()
        assert status == 200, body
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join()
        for name, spec in (("a", (3000, 8)), ("b", (1000, 4))):  # back to the fixture's tables
            write_synthetic_table(tables[name], *spec, shuffle=True, seed=0, overwrite=True)
    assert not errors, errors[:5]
    assert {v for _, v in seen} == {"old", "new"}, len(seen)
    assert all(v == "new" for t, v in seen if t > reloaded)
    status, _, body = _load(server, "m")  # back to the original tables for the other tests
    assert status == 200, body
    keys = np.arange(0, 60, dtype=np.int64)
    assert which(keys, _infer(server, "m", keys, [40, 20])) == "old"
    events = [e for e in server.log_events() if e.get("event") == "model_replaced"]
    assert events and events[-1]["model"] == "m"


def test_unload_drains_in_flight_requests_and_frees_memory(tmp_path):
    """Requests queued when the unload arrives are answered; afterwards the model is 404, and
    the server's resident memory drops by most of what the model's tables took (a hash map
    holding every row, a reference cache of half of them, on each of two devices)."""
    rows, dim = 300_000, 32
    tables = make_tables(tmp_path, {"t": (rows, dim)})
    doc = ps_config(
        tables,
        {"t": dim},
        devices=(0, 1),
        gpucache=True,
        gpucacheper=0.5,
        hit_rate_threshold=1.0,
        max_batch_size=4096,
    )
    path = tmp_path / "ps.json"
    path.write_text(json.dumps({**doc, "models": [dict(_block(doc), model="keep")]}))
    with ServeProcess(path, env=ENV, extra_args=["--max-queue-delay-us", "300000"]) as server:

        def rss() -> float:
            return scrape(server.metrics_url)["process_resident_memory_bytes"]

        before = rss()
        status, _, body = _load(
            server, "big", {"config": json.dumps(dict(_block(doc), model="big"))}
        )
        assert status == 200, body
        loaded = rss()
        keys = np.arange(0, rows, rows // 50, dtype=np.int64)
        answers: list = []

        def request() -> None:
            answers.append(_infer(server, "big", keys, [keys.size]))

        senders = [threading.Thread(target=request) for _ in range(4)]
        for t in senders:
            t.start()
        time.sleep(0.1)  # queued: they wait up to 0.3 s for company
        status, _, body = http_post(server.http_url, "/v2/repository/models/big/unload", b"", AUTH)
        assert status == 200, body
        for t in senders:
            t.join()
        assert len(answers) == 4
        for got in answers:
            np.testing.assert_array_equal(got.reshape(-1, dim), synthetic_vectors(keys, dim))
        status, _ = http_get(server.http_url, "/v2/models/big/ready")
        assert status == 404
        after = rss()
        event = [e for e in server.log_events() if e.get("event") == "model_unloaded"][-1]
    table_bytes = rows * (8 + 4 * dim)
    grown, freed = loaded - before, loaded - after
    print(
        f"rss: before {before / 2**20:.0f} MiB, loaded {loaded / 2**20:.0f} MiB, after unload "
        f"{after / 2**20:.0f} MiB; table {table_bytes / 2**20:.0f} MiB; unload event {event}"
    )
    assert grown > table_bytes  # the hash map's copy alone is the table's size
    assert freed > 0.8 * grown, (before, loaded, after)
