"""Benchmark: the deployable SavedModel of ``hps build-graph`` — memory held, and latency served.

    python benchmarks/bench_saved_model.py --keys 2000000 --dim 32 --rounds 30

1. Memory (target: a table is held once, RSS ≤ 1.3× its raw bytes). A table of ``--keys`` ×
   ``--dim`` random rows under keys 7·i + 3 (not a range, so the SavedModel holds the keys
   too), written in random order (the export sorts them), looked up by a Keras 3 model
   (LookupLayer → Dense) exported with ``hps_cli.tf.export_saved_model`` in a child process
   (its time and peak RSS reported too). A fresh child process imports TensorFlow, runs one op,
   reads VmRSS, loads the SavedModel, reads VmHWM and VmRSS, runs ``--calls`` predictions of
   1,024 × 4 ids drawn uniformly over all keys, reads them again. Ratios are (value − VmRSS
   before loading) / raw bytes (8-byte keys + 4 × dim-byte rows): the peak while loading, and
   the peak and RSS after the predictions.
2. Latency (target: the SavedModel served by ``hps serve`` ≤ 1.2× the original package served
   by the same server). The DLRM-like model of bench_build_graph.py (three Embedding tables,
   100,000 × 32, 200,000 × 32 and 1,000 × 16, fed 1, 3 and 5 ids per sample; 13 dense
   features; MLP 256-128-1; random weights) → ``hps dissect`` → ``hps build-graph``; and the
   same package with every key moved to 7·row + 3 (built from a spec over the same dense
   part), whose SavedModel must search its keys where the first one holds row-index keys (a
   range: no search). One ``hps serve`` (config: the package's ps.json; access log off) serves
   each package (lookups through the HPS runtime, then the dense SavedModel) and its Triton
   entry (the deployable SavedModel). One tritonclient HTTP client sends requests of
   ``--batches`` samples (ids uniform over each table's keys), one at a time, alternating
   package and SavedModel every round (order swapped every round); the median request latency
   of each, and their ratio. For reference, in one child process: the original Keras model
   (``keras.models.load_model``) called through ``tf.function``, its own Keras export
   (``model.export``, the same restored-signature call path) and ``predict``, against the
   deployable SavedModel's signature, in interleaved rounds; outputs must agree (≤ 1e-5).

Prints one JSON document (raw per-round numbers included: keep them out of git).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import BENCH_DLRM_BUILD as BUILD  # noqa: E402
from _measure import run_measured  # noqa: E402

EXPORT = r"""
import json, os, sys, time
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import hps_cli.tf as hps
work, dim = sys.argv[1], int(sys.argv[2])
layers = hps.layers_for("keras3")
keras = layers.keras
ids = keras.Input((4,), dtype="int64", name="ids")
emb = layers.LookupLayer("m", 0, dim, "float32", ps_config_file=f"{work}/ps.json")(ids)
out = keras.layers.Dense(1, name="score")(keras.layers.Flatten()(emb))
started = time.perf_counter()
result = hps.export_saved_model(keras.Model(ids, out), f"{work}/saved_model/1")
doc = {"seconds": time.perf_counter() - started, "raw_bytes": result.raw_bytes}
open(f"{work}/export.json", "w").write(json.dumps(doc))
"""

LOAD = r"""
import json, os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np
def status():
    out = {}
    for line in open("/proc/self/status"):
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) * 1024
    return out
import tensorflow as tf
(tf.constant([1]) + 1).numpy()
path, keys, calls = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
before = status()
serve = tf.saved_model.load(path).signatures["serving_default"]
loaded = status()
rng = np.random.default_rng(0)
for _ in range(calls):
    serve(ids=tf.constant(rng.integers(0, keys, (1024, 4)) * 7 + 3))
ran = status()
print(json.dumps({"before": before, "loaded": loaded, "ran": ran}))
"""

IN_PROCESS = r"""
import json, os, statistics, sys, time
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np, tensorflow as tf, keras
original_path, saved, batch, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
original = keras.models.load_model(original_path)
keras_export = os.path.join(os.path.dirname(original_path), "keras_export")
original.export(keras_export, verbose=False)
exported = tf.saved_model.load(keras_export).signatures["serving_default"]
serve = tf.saved_model.load(saved).signatures["serving_default"]
rng = np.random.default_rng(1)
x = [rng.integers(0, 100_000, (batch, 1)), rng.integers(0, 200_000, (batch, 3)),
     rng.integers(0, 1_000, (batch, 5)), rng.normal(size=(batch, 13)).astype("float32")]
names = ["user", "items", "tags", "dense"]
xt = [tf.constant(a) for a in x]
feed = dict(zip(names, xt))
call = tf.function(lambda v: original(v))
want = original.predict(x, batch_size=batch, verbose=0)
got = serve(**feed)["ctr"].numpy()
runs = {
    "original_function": lambda: call(xt),
    "original_export": lambda: exported(**feed),
    "saved_model": lambda: serve(**feed),
    "original_predict": lambda: original.predict(x, batch_size=batch, verbose=0),
}
for fn in runs.values():
    fn(); fn()
times = {k: [] for k in runs}
for r in range(rounds):
    order = list(runs) if r % 2 == 0 else list(runs)[::-1]
    for name in order:
        start = time.perf_counter()
        runs[name]()
        times[name].append((time.perf_counter() - start) * 1e3)
print(json.dumps({"max_abs_diff": float(np.max(np.abs(got - want))),
                  "median_ms": {k: statistics.median(v) for k, v in times.items()}}))
"""


def _run(argv: list[str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{argv[:4]} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def _last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def scattered_table(dest: Path, keys: int, dim: int, seed: int = 0) -> None:
    """``keys`` random rows under keys 7·i + 3 (not a range: the SavedModel holds them and
    searches them), written in random order."""
    from hps_cli.runtime.table import TableWriter

    rng = np.random.default_rng(seed)
    order = rng.permutation(keys).astype(np.int64) * 7 + 3
    with TableWriter(dest, dim) as writer:
        for first in range(0, keys, 1 << 18):
            part = order[first : first + (1 << 18)]
            writer.append(part, rng.random((part.size, dim), np.float32))


def memory(work: Path, keys: int, dim: int, calls: int) -> dict:
    work.mkdir(parents=True)
    scattered_table(work / "table", keys, dim)
    config = {
        "supportlonglong": True,
        "models": [
            {
                "model": "m",
                "sparse_files": [str(work / "table")],
                "embedding_table_names": ["t"],
                "embedding_vecsize_per_table": [dim],
                "maxnum_catfeature_query_per_table_per_sample": [4],
                "default_value_for_each_table": [0.0],
                "deployed_device_list": [0],
                "max_batch_size": 1024,
            }
        ],
    }
    (work / "ps.json").write_text(json.dumps(config))
    build = run_measured([sys.executable, "-c", EXPORT, str(work), str(dim)])
    export = json.loads((work / "export.json").read_text())
    raw = export["raw_bytes"]
    mem = _last_json(
        _run([sys.executable, "-c", LOAD, str(work / "saved_model" / "1"), str(keys), str(calls)])
    )
    base = mem["before"]["VmRSS"]
    mib = 1 << 20
    return {
        "keys": keys,
        "dim": dim,
        "raw_bytes": raw,
        "raw_mib": raw / mib,
        "export_seconds": export["seconds"],
        "export_peak_rss_mib": build["peak_rss_mib"],
        "saved_model_mib": sum(
            p.stat().st_size for p in (work / "saved_model").rglob("*") if p.is_file()
        )
        / mib,
        "rss_before_load_mib": base / mib,
        "peak_while_loading_ratio": (mem["loaded"]["VmHWM"] - base) / raw,
        "rss_after_load_ratio": (mem["loaded"]["VmRSS"] - base) / raw,
        "peak_after_predictions_ratio": (mem["ran"]["VmHWM"] - base) / raw,
        "rss_after_predictions_ratio": (mem["ran"]["VmRSS"] - base) / raw,
        "predictions": calls,
        "target_ratio": 1.3,
    }


ROWS = {"user": 100_000, "items": 200_000, "tags": 1_000}
WIDTH = {"user": 1, "items": 3, "tags": 5}


def _request(module, batch: int, rng, scattered: bool) -> list:
    inputs = []
    for name, rows in ROWS.items():
        array = rng.integers(0, rows, (batch, WIDTH[name]))
        array = array * 7 + 3 if scattered else array
        tensor = module.InferInput(name, list(array.shape), "INT64")
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    dense = rng.normal(size=(batch, 13)).astype(np.float32)
    tensor = module.InferInput("dense", list(dense.shape), "FP32")
    tensor.set_data_from_numpy(dense)
    return inputs + [tensor]


def scattered_package(work: Path, dissected: Path) -> Path:
    """The dissected model with its tables' keys moved to 7·row + 3 (rows unchanged): a
    package whose SavedModel searches its keys. Built from a spec over the same dense part."""
    from hps_cli.runtime.table import TableReader, write_table

    manifest = json.loads((dissected / "manifest.json").read_text())
    config = json.loads((dissected / "ps.json").read_text())
    model = config["models"][0]
    for i, table in enumerate(manifest["tables"]):
        with TableReader(dissected / table["dir"]) as reader:
            write_table(
                work / "tables" / table["name"], reader.keys() * 7 + 3, np.array(reader.vectors())
            )
        model["sparse_files"][i] = str(work / "tables" / table["name"])
    (work / "ps.json").write_text(json.dumps(config))
    inputs = []
    for spec in manifest["inputs"]:
        doc = {"name": spec["name"]}
        if spec.get("lookups"):
            doc["lookups"] = [
                {k: lk[k] for k in ("table", "combiner", "dense_input")} for lk in spec["lookups"]
            ]
        if spec.get("dense_input"):
            doc["dense_input"] = spec["dense_input"]
        inputs.append(doc)
    spec = {"dense": str(dissected / "dense"), "ps_config": str(work / "ps.json"), "inputs": inputs}
    (work / "spec.json").write_text(json.dumps(spec))
    _run(
        [
            sys.executable,
            "-m",
            "hps_cli",
            "-q",
            "build-graph",
            str(work / "spec.json"),
            str(work / "package"),
        ]
    )
    return work / "package"


def _served(client, module, pair: tuple[str, str], batches, rounds, requests, scattered):
    rng = np.random.default_rng(3)
    check = _request(module, 16, rng, scattered)
    outs = [client.infer(m, check).as_numpy("ctr") for m in pair]
    doc = {"max_abs_diff": float(np.max(np.abs(outs[0] - outs[1])))}
    for batch in batches:
        times = {name: [] for name in pair}
        for r in range(rounds):
            inputs = _request(module, batch, rng, scattered)
            for name in pair if r % 2 == 0 else pair[::-1]:
                client.infer(name, inputs)  # warm this batch shape
                for _ in range(requests):
                    start = time.perf_counter()
                    client.infer(name, inputs)
                    times[name].append((time.perf_counter() - start) * 1e3)
        pkg, sm = (statistics.median(times[name]) for name in pair)
        doc[str(batch)] = {
            "package_ms": pkg,
            "saved_model_ms": sm,
            "ratio": sm / pkg,
            "requests_each": len(times[pair[1]]),
        }
    return doc


def latency(work: Path, batches: list[int], rounds: int, requests: int) -> dict:
    import tritonclient.http as thttp

    from hps_cli.devtools.serve_process import ServeProcess

    work.mkdir(parents=True)
    model = work / "model.keras"
    hps = [sys.executable, "-m", "hps_cli", "-q"]
    _run([sys.executable, "-c", BUILD, str(model)])
    _run(hps + ["dissect", str(model), str(work / "dissected"), "--max-batch-size", "1024"])
    package = work / "package"
    _run(hps + ["build-graph", str(work / "dissected"), str(package)])
    scattered = scattered_package(work / "scattered", work / "dissected")
    repo = work / "repo"
    repo.mkdir()
    (repo / "pkg").symlink_to(package)
    (repo / "sm").symlink_to(package / "triton" / "bench_dlrm")
    (repo / "pkg_scattered").symlink_to(scattered)
    (repo / "sm_scattered").symlink_to(scattered / "triton" / "bench_dlrm")
    in_process = _last_json(
        _run(
            [
                sys.executable,
                "-c",
                IN_PROCESS,
                str(model),
                str(package / "saved_model" / "1"),
                str(max(batches)),
                str(rounds),
            ]
        )
    )
    args = ("--access-log", "off")
    with ServeProcess(
        package / "ps.json", model_repository=repo, extra_args=args, echo=False
    ) as server:
        client = thttp.InferenceServerClient(server.http_url)
        served = {
            "row_index_keys": _served(
                client, thttp, ("pkg", "sm"), batches, rounds, requests, False
            ),
            "scattered_keys": _served(
                client, thttp, ("pkg_scattered", "sm_scattered"), batches, rounds, requests, True
            ),
        }
    ms = in_process["median_ms"]
    return {
        "served": served,
        "in_process": {
            "batch": max(batches),
            "max_abs_diff": in_process["max_abs_diff"],
            "median_ms": ms,
            "ratio_to_original_function": ms["saved_model"] / ms["original_function"],
            "ratio_to_original_export": ms["saved_model"] / ms["original_export"],
            "ratio_to_original_predict": ms["saved_model"] / ms["original_predict"],
        },
        "target_ratio": 1.2,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", choices=["memory", "latency", "all"], default="all")
    ap.add_argument("--keys", type=int, default=2_000_000)
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--batches", default="1,64,1024")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--requests", type=int, default=5)
    ap.add_argument("--work", type=Path, default=Path("/tmp/hps-bench-saved-model"))
    args = ap.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    doc = {
        "date": date.today().isoformat(),
        "machine": f"{platform.node()} ({platform.machine()}, {platform.python_version()})",
        "command": "python benchmarks/bench_saved_model.py " + " ".join(sys.argv[1:]),
    }
    if args.part in ("memory", "all"):
        doc["memory"] = memory(args.work / "memory", args.keys, args.dim, args.calls)
    if args.part in ("latency", "all"):
        batches = [int(b) for b in args.batches.split(",")]
        doc["latency"] = latency(args.work / "latency", batches, args.rounds, args.requests)
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
