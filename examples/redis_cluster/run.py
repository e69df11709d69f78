"""Serving from a Redis Cluster: the volatile tier shared by many servers, as in HPS.

    python examples/redis_cluster/run.py [--work DIR] [--keep]

Needs `redis-server` and `redis-cli` (Debian: apt-get install redis-server). Steps:

1. start a local Redis Cluster of 3 masters on free loopback ports;
2. `hps table generate` a table, write a ps.json with `volatile_db: redis_cluster` (HPS's
   layout: hashes `hps_et{hps_et.<model>.<table>/p<N>}v` of raw key bytes → raw vectors) and a
   RocksDB persistent tier behind it; `hps validate-config`;
3. `hps serve`: start-up loads the table into Redis and RocksDB; query it with tritonclient;
4. kill one Redis node while querying: its keys fall through to RocksDB and the server keeps
   answering, with the same vectors;
5. shut down cleanly and stop the cluster.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from hps_cli.devtools.redis_cluster import LocalRedisCluster
from hps_cli.devtools.serve_process import ServeProcess

DIM = 32


def hps(*args: str) -> None:
    print(f"$ hps {' '.join(shlex.quote(a) for a in args)}", flush=True)
    subprocess.run([sys.executable, "-m", "hps_cli", *args], check=True)


def lookup(client, keys: np.ndarray) -> np.ndarray:
    import tritonclient.http as httpclient

    tensor = httpclient.InferInput("KEYS", [1, keys.size], "INT64")
    tensor.set_data_from_numpy(keys[None, :])
    counts = httpclient.InferInput("NUMKEYS", [1, 1], "INT32")
    counts.set_data_from_numpy(np.array([[keys.size]], dtype=np.int32))
    return client.infer("redis_model", [tensor, counts]).as_numpy("OUTPUT0").reshape(-1, DIM)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    if not shutil.which("redis-server"):
        raise SystemExit("redis-server is not installed (Debian: apt-get install redis-server)")
    work = args.work or Path(tempfile.mkdtemp(prefix="hps-redis-"))
    try:
        print("\n=== 1. a local Redis Cluster (3 masters)", flush=True)
        with LocalRedisCluster(3) as cluster:
            print(f"cluster at {cluster.address}", flush=True)

            print("\n=== 2. a table and its config", flush=True)
            hps(
                "table",
                "generate",
                str(work / "tables" / "items"),
                "--keys",
                "50000",
                "--dim",
                str(DIM),
                "--shuffle",
            )
            config = {
                "supportlonglong": True,
                "volatile_db": {
                    "type": "redis_cluster",
                    "address": cluster.address,
                    "num_partitions": 8,
                    "num_node_connections": 2,
                },
                "persistent_db": {
                    "type": "rocks_db",
                    "path": str(work / "rocksdb"),
                    "num_threads": 2,
                },
                "models": [
                    {
                        "model": "redis_model",
                        "sparse_files": ["tables/items"],
                        "embedding_table_names": ["items"],
                        "embedding_vecsize_per_table": [DIM],
                        "maxnum_catfeature_query_per_table_per_sample": [16],
                        "default_value_for_each_table": [0.0],
                        "deployed_device_list": [0],
                        "max_batch_size": 256,
                        "hit_rate_threshold": 1.0,
                        # no GPU cache in front, so every lookup reaches Redis (and shows the
                        # fall-through when a node dies)
                        "gpucache": False,
                    }
                ],
            }
            (work / "ps.json").write_text(json.dumps(config, indent=2))
            hps("validate-config", str(work / "ps.json"))

            print("\n=== 3. serve it", flush=True)
            import tritonclient.http as httpclient
            from hps_cli.runtime.table import TableReader
            from hps_cli.runtime.table.synthetic import synthetic_vectors

            with TableReader(work / "tables" / "items") as reader:
                table_keys = np.array(reader.keys())
            rng = np.random.default_rng(5)
            with ServeProcess(work / "ps.json", log_path=work / "server.log", echo=True) as server:
                client = httpclient.InferenceServerClient(url=server.http_url)
                keys = rng.choice(table_keys, 200)
                if not np.array_equal(lookup(client, keys), synthetic_vectors(keys, DIM)):
                    raise SystemExit("FAILED: vectors from Redis differ from the table")
                print("200 keys from Redis: equal to the table", flush=True)

                print("\n=== 4. kill one Redis node while querying", flush=True)
                cluster.kill(1)
                for _ in range(20):
                    keys = rng.choice(table_keys, 200)
                    if not np.array_equal(lookup(client, keys), synthetic_vectors(keys, DIM)):
                        raise SystemExit("FAILED: wrong vectors after a node died")
                print(
                    "20 more lookups after the kill: all answered, all exact (the dead "
                    "node's keys came from RocksDB)",
                    flush=True,
                )
                print("\n=== 5. shut down (SIGTERM) and stop the cluster", flush=True)
        print("\nredis_cluster passed", flush=True)
    finally:
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
