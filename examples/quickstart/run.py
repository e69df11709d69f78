"""Quickstart: train a small DLRM-like model, then deploy it with hps, end to end.

    python examples/quickstart/run.py [--work DIR] [--keep]

Steps (each one the real `hps` command, shown as it runs):

1. train a Keras model on synthetic click data: user and item ids through two Embedding
   tables, dense features through an MLP, a click probability out;
2. `hps dissect`       the .keras file → one HPS table per embedding, the dense part, ps.json;
3. `hps validate-config` the generated ps.json;
4. `hps build-graph`   an inference package (HPS lookup layers + dense SavedModel);
5. `hps serve`         in the background, on the embedded default tiers (in-process hash map
                       and RocksDB in the work folder; the cache runs on the GPU when there is
                       one, else lookups go straight to the CPU tiers);
6. query the server with the stock Triton client (tritonclient): the inference model's
   predictions must equal the original model's, and the lookup model's vectors the tables';
   (`hps bench lookup` measures the same config in process before the server starts;)
7. `hps bench serve`: a short benchmark of the lookup model through the server, with the
   share of keys each tier answered (the server's metrics port);
8. shut the server down cleanly (SIGTERM, exit code 0).

Exit code 0 when every check passed.
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

from hps_cli.devtools.serve_process import ServeProcess

USERS, ITEMS, DENSE = 500, 2000, 4
HERE = Path(__file__).resolve().parent


def step(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def hps(*args: str, capture: bool = False) -> subprocess.CompletedProcess:
    print(f"$ hps {' '.join(shlex.quote(a) for a in args)}", flush=True)
    return subprocess.run(
        [sys.executable, "-m", "hps_cli", *args], check=True, capture_output=capture, text=True
    )


def train(work: Path):
    """A small DLRM-like model on synthetic clicks; returns (model path, sample inputs, preds)."""
    import numpy as np

    # Through hps's loader: TensorFlow's native load-time lines stay off the terminal, and the
    # log level it sets (errors only, unless TF_CPP_MIN_LOG_LEVEL is set) is what the hps
    # commands below inherit.
    from hps_cli.common.tf_loader import import_keras3

    keras = import_keras3("the quickstart's training")

    rng = np.random.default_rng(7)
    n = 20_000
    users = rng.integers(0, USERS, n)
    items = rng.integers(0, ITEMS, n)
    dense = rng.standard_normal((n, DENSE)).astype(np.float32)
    taste = rng.standard_normal(USERS)[users] * rng.standard_normal(ITEMS)[items]
    clicks = (taste + dense[:, 0] > 0).astype(np.float32)

    user_in = keras.Input((1,), dtype="int64", name="user")
    item_in = keras.Input((1,), dtype="int64", name="item")
    dense_in = keras.Input((DENSE,), name="dense")
    u = keras.layers.Flatten()(keras.layers.Embedding(USERS, 16, name="user_emb")(user_in))
    i = keras.layers.Flatten()(keras.layers.Embedding(ITEMS, 16, name="item_emb")(item_in))
    d = keras.layers.Dense(16, activation="relu", name="bottom")(dense_in)
    x = keras.layers.Concatenate()([u, i, d, u * i])
    x = keras.layers.Dense(32, activation="relu", name="top1")(x)
    out = keras.layers.Dense(1, activation="sigmoid", name="click")(x)
    model = keras.Model([user_in, item_in, dense_in], out, name="dlrm")
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    model.fit([users[:, None], items[:, None], dense], clicks, batch_size=256, epochs=3, verbose=2)
    path = work / "dlrm.keras"
    model.save(path)
    sample = {"user": users[:64, None], "item": items[:64, None], "dense": dense[:64]}
    preds = model.predict([sample["user"], sample["item"], sample["dense"]], verbose=0)
    return path, sample, preds


def query(http_url: str, sample: dict, expected, dissected: Path) -> None:
    import numpy as np
    import tritonclient.http as httpclient
    from hps_cli.runtime.table import TableReader

    client = httpclient.InferenceServerClient(url=http_url)
    inputs = []
    for name, value in sample.items():
        arr = np.ascontiguousarray(value)
        dtype = "INT64" if arr.dtype == np.int64 else "FP32"
        tensor = httpclient.InferInput(name, list(arr.shape), dtype)
        tensor.set_data_from_numpy(arr)
        inputs.append(tensor)
    result = client.infer("ctr", inputs)
    output = result.get_response()["outputs"][0]["name"]
    served = result.as_numpy(output).reshape(expected.shape)
    diff = float(np.max(np.abs(served - expected)))
    print(
        f"inference model 'ctr': {served.shape[0]} predictions, max |served - original| = "
        f"{diff:.2e}",
        flush=True,
    )
    if diff > 1e-5:
        raise SystemExit("FAILED: served predictions differ from the original model's")

    # The lookup model: the Triton HPS backend contract (KEYS / NUMKEYS -> vectors).
    user_keys = np.array([0, 5, 499], dtype=np.int64)
    item_keys = np.array([7, 1999], dtype=np.int64)
    keys = httpclient.InferInput("KEYS", [1, 5], "INT64")
    keys.set_data_from_numpy(np.concatenate([user_keys, item_keys])[None, :])
    counts = httpclient.InferInput("NUMKEYS", [1, 2], "INT32")
    counts.set_data_from_numpy(np.array([[3, 2]], dtype=np.int32))
    vectors = client.infer("dlrm", [keys, counts]).as_numpy("OUTPUT0").reshape(-1)
    with TableReader(dissected / "user_emb") as users, TableReader(dissected / "item_emb") as items:
        want = np.concatenate(
            [
                np.asarray(users.vectors())[user_keys].reshape(-1),
                np.asarray(items.vectors())[item_keys].reshape(-1),
            ]
        )
    if not np.array_equal(vectors, want):
        raise SystemExit("FAILED: the lookup model's vectors differ from the tables")
    print("lookup model 'dlrm': 5 keys over 2 tables equal the table rows", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=None, help="work folder (default: a temp one)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    ap.add_argument("--no-bench", action="store_true", help="skip the benchmark step")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="hps-quickstart-"))
    work.mkdir(parents=True, exist_ok=True)
    server = None
    try:
        step("1. train a DLRM-like Keras model on synthetic clicks")
        model_path, sample, expected = train(work)

        step("2. dissect it into HPS tables, a dense SavedModel and ps.json")
        dissected = work / "dissected"
        hps("dissect", str(model_path), str(dissected), "--model-name", "dlrm")

        step("3. validate the generated config")
        hps("validate-config", str(dissected / "ps.json"))

        step("4. build the inference package")
        repo = work / "repository"
        # The package folder's name is the inference model's name; the HPS model inside it
        # ("dlrm") is also served as a lookup model under its own name.
        hps("build-graph", str(dissected), str(repo / "ctr"))

        step(
            "5. a serving config on the embedded default tiers (hash map + RocksDB), "
            "benchmarked in process, then served"
        )
        config = json.loads((repo / "ctr" / "ps.json").read_text())
        for i, path in enumerate(config["models"][0]["sparse_files"]):
            config["models"][0]["sparse_files"][i] = str((repo / "ctr" / path).resolve())
        config["volatile_db"] = {"type": "parallel_hash_map", "num_partitions": 4}
        config["persistent_db"] = {
            "type": "rocks_db",
            "path": str(work / "rocksdb"),
            "num_threads": 2,
        }
        serve_config = work / "serve_ps.json"
        serve_config.write_text(json.dumps(config, indent=2))
        hps("validate-config", str(serve_config))
        if not args.no_bench:
            # In process first: the server will hold the RocksDB database's lock.
            hps(
                "bench",
                "lookup",
                "--config",
                str(serve_config),
                "--batch-size",
                "1024",
                "--iterations",
                "200",
                "--distribution",
                "zipf:1.05",
            )
        server = ServeProcess(
            serve_config,
            model_repository=repo,
            extra_args=("--access-log", str(work / "access.log")),
            log_path=work / "server.log",
            echo=True,
        ).start()
        http_url = server.http_url

        step("6. query it with the stock Triton client")
        query(http_url, sample, expected, dissected)

        if not args.no_bench:
            step("7. benchmark the lookup model through the server")
            hps(
                "bench",
                "serve",
                "--url",
                http_url,
                "--model",
                "dlrm",
                # the tables' own keys, Zipf-distributed as in step 5
                "--config",
                str(serve_config),
                "--distribution",
                "zipf:1.05",
                # the server's Prometheus port: where the keys were answered, per level
                "--metrics-url",
                f"127.0.0.1:{server.ports['metrics']}",
                "--concurrency-range",
                "1:4",
                "--measurement-interval",
                "1000",
            )

        step("8. shut the server down (SIGTERM)")
        code = server.stop()
        server = None
        if code != 0:
            raise SystemExit(f"FAILED: hps serve exited with {code}")
        print("server stopped cleanly", flush=True)
        print(f"\nquickstart passed: predictions match; files in {work}", flush=True)
    finally:
        if server is not None:
            server.stop(timeout=5)
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
