"""`hps serve` over a Redis Cluster volatile tier with RocksDB behind it: a Redis node killed
under load does not stop the server; its keys fall through to RocksDB and every answer stays
exact."""

from __future__ import annotations

import http.client
import json
import threading
import time

import numpy as np
import pytest
from helpers.runtime_configs import make_tables, ps_config
from helpers.serve_client import binary_lookup_body, binary_output, http_get, scrape
from hps_cli.runtime.table.synthetic import synthetic_vectors

from hps_cli.devtools.serve_process import ServeProcess

pytestmark = pytest.mark.redis


def test_killing_a_redis_node_under_load_keeps_the_server_answering(tmp_path):
    from hps_cli.devtools.redis_cluster import LocalRedisCluster

    tables = make_tables(tmp_path, {"t": (4000, 16)})
    with LocalRedisCluster(3) as cluster:
        doc = ps_config(
            tables,
            {"t": 16},
            defaults={"t": -1.0},
            volatile={"type": "redis_cluster", "address": cluster.address, "num_partitions": 12},
            persistent={"type": "rocks_db", "path": str(tmp_path / "db")},
        )
        path = tmp_path / "ps.json"
        path.write_text(json.dumps(doc))
        rng = np.random.default_rng(5)
        cases = []
        for _ in range(16):
            keys = rng.integers(-20, 4000, 200).astype(np.int64)
            expected = synthetic_vectors(keys, 16)
            expected[keys < 0] = -1.0
            cases.append((keys, expected.reshape(-1)))
        with ServeProcess(path, extra_args=["--access-log", "off"]) as server:
            stop = threading.Event()
            answers, errors = [0], []

            def load(index: int) -> None:
                host, port = server.http_url.split(":")
                conn = http.client.HTTPConnection(host, int(port), timeout=60)
                i = index
                while not stop.is_set():
                    keys, expected = cases[i % len(cases)]
                    body, headers = binary_lookup_body(keys, [keys.size])
                    try:
                        conn.request("POST", "/v2/models/m/infer", body, headers)
                        response = conn.getresponse()
                        data = response.read()
                        if response.status != 200:
                            errors.append(f"HTTP {response.status}: {data[:200]!r}")
                        elif not np.array_equal(
                            binary_output(dict(response.getheaders()), data), expected
                        ):
                            errors.append("wrong vectors")
                        else:
                            answers[0] += 1
                    except Exception as exc:  # noqa: BLE001 - asserted below
                        errors.append(f"{type(exc).__name__}: {exc}")
                        return
                    i += 4

            workers = [threading.Thread(target=load, args=(i,)) for i in range(4)]
            for w in workers:
                w.start()
            time.sleep(1.0)
            before_kill = answers[0]
            cluster.kill(1)
            killed_at = time.monotonic()
            deadline = killed_at + 30
            failures = 0.0
            while time.monotonic() < deadline:  # until the tier has seen the dead node
                metrics = scrape(server.metrics_url)
                failures = metrics.get(
                    'hps_table_keys_total{model="m",result="volatile_failure",table="t"}', 0
                )
                if failures > 0 and time.monotonic() - killed_at > 2.0:
                    break
                time.sleep(0.2)
            after_kill = answers[0]
            time.sleep(1.0)
            stop.set()
            for w in workers:
                w.join()
            assert not errors, errors[:5]
            assert before_kill > 0 and answers[0] > after_kill > before_kill
            assert failures > 0  # the dead node's keys fell through to RocksDB
            metrics = scrape(server.metrics_url)
            assert metrics['hps_table_keys_total{model="m",result="persistent_hit",table="t"}'] > 0
            assert http_get(server.http_url, "/v2/health/ready")[0] == 200
