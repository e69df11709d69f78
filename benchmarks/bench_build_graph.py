"""Benchmark: ``predict`` of an ``hps build-graph`` package vs the original TensorFlow model.

    python benchmarks/bench_build_graph.py --batch 1024 --rounds 40 --calls 1

Target (issue "TF plugin and build-graph"): on the CPU, ``model.predict`` of the built model
(hps_cli.tf lookup layers → the runtime → the dense SavedModel) at most 1.5× the time of the
original Keras model's ``predict`` at batch 1,024, both measured in the same process.

Steps: a DLRM-like Keras 3 functional model (three Embedding tables of 100,000 × 32,
200,000 × 32 and 1,000 × 16 fed 1, 3 and 5 ids per sample, 13 dense features, MLP 256-128-1;
random weights, no training needed) is saved as ``.keras``; ``hps dissect`` and ``hps
build-graph`` run in child processes; then a fresh child process loads the original with
``keras.models.load_model`` and the package with ``hps_cli.tf.load_model``, checks that their
predictions agree, and times ``predict`` of both in interleaved rounds (each round: ``--calls``
calls of one model, then of the other, order alternating), so that the load of the shared
machine hits both alike. Reported: the median call time of each, their ratio, and the median of
the per-round ratios; plain calls ``model(x)`` and calls of ``tf.function(model)`` (no Keras
predict loop: the lookups' own cost shows) are timed the same way for reference.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import BENCH_DLRM_BUILD as BUILD  # noqa: E402

TIME = r"""
import json, os, statistics, sys, time
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np, tensorflow as tf, keras
import hps_cli.tf as hps
original_path, package, batch, rounds, calls = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:])
original = keras.models.load_model(original_path)
built = hps.load_model(package)
rng = np.random.default_rng(1)
x = [rng.integers(0, 100_000, (batch, 1)), rng.integers(0, 200_000, (batch, 3)),
     rng.integers(0, 1_000, (batch, 5)), rng.normal(size=(batch, 13)).astype("float32")]
want = original.predict(x, batch_size=batch, verbose=0)
got = built.predict(x, batch_size=batch, verbose=0)
diff = float(np.max(np.abs(got - want)))
xt = [tf.constant(a) for a in x]
runs = {
    "original_predict": lambda: original.predict(x, batch_size=batch, verbose=0),
    "built_predict": lambda: built.predict(x, batch_size=batch, verbose=0),
    "original_call": lambda: original(xt),
    "built_call": lambda: built(xt),
}
compiled = {"original": tf.function(lambda v: original(v)),
            "built": tf.function(lambda v: built(v))}
runs["original_function"] = lambda: compiled["original"](xt)
runs["built_function"] = lambda: compiled["built"](xt)
for fn in runs.values():
    fn(); fn()  # trace and warm up
times = {k: [] for k in runs}
for r in range(rounds):
    for pair in (("original_predict", "built_predict"), ("original_call", "built_call"),
                 ("original_function", "built_function")):
        for name in (pair if r % 2 == 0 else pair[::-1]):
            start = time.perf_counter()
            for _ in range(calls):
                runs[name]()
            times[name].append((time.perf_counter() - start) / calls * 1e3)
ratios = {kind: statistics.median(b / o for o, b in zip(times[f"original_{kind}"],
                                                         times[f"built_{kind}"]))
          for kind in ("predict", "call", "function")}
from hps_cli.tf import process_runtime
fronts = sorted({type(f).__name__ for f in process_runtime.active()._fronts.values()})
print(json.dumps({"max_abs_diff": diff, "ms": {k: statistics.median(v) for k, v in times.items()},
                  "round_ratios": ratios, "all_ms": times, "front_caches": fronts}))
"""


def _run(argv: list[str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{argv[:4]} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--calls", type=int, default=1)
    ap.add_argument("--work", type=Path, default=Path("/tmp/hps-bench-build-graph"))
    args = ap.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    model = args.work / "model.keras"
    hps = [sys.executable, "-m", "hps_cli", "-q"]
    _run([sys.executable, "-c", BUILD, str(model)])
    _run(
        hps
        + ["dissect", str(model), str(args.work / "dissected"), "--max-batch-size", str(args.batch)]
    )
    _run(hps + ["build-graph", str(args.work / "dissected"), str(args.work / "package")])
    out = _run(
        [
            sys.executable,
            "-c",
            TIME,
            str(model),
            str(args.work / "package"),
            str(args.batch),
            str(args.rounds),
            str(args.calls),
        ]
    )
    result = json.loads(out.strip().splitlines()[-1])
    ms = result["ms"]
    doc = {
        "date": date.today().isoformat(),
        "machine": f"{platform.node()} ({platform.machine()}, {platform.python_version()})",
        "command": " ".join(
            [
                "python",
                "benchmarks/bench_build_graph.py",
                "--batch",
                str(args.batch),
                "--rounds",
                str(args.rounds),
                "--calls",
                str(args.calls),
            ]
        ),
        "batch": args.batch,
        "max_abs_diff": result["max_abs_diff"],
        "front_caches": result["front_caches"],
        "median_ms": ms,
        "ratio_predict": ms["built_predict"] / ms["original_predict"],
        "ratio_call": ms["built_call"] / ms["original_call"],
        "ratio_function": ms["built_function"] / ms["original_function"],
        "median_round_ratio": result["round_ratios"],
        "all_ms": result["all_ms"],
        "target_ratio_predict": 1.5,
    }
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
