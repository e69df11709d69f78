"""Helpers of the benchmarks: run a step in a child process and measure its time and peak RSS."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time


def run_measured(argv: list[str], **kwargs) -> dict:
    """Run ``argv`` in a child process; return wall seconds and the child's peak RSS in MiB.

    Each call runs in a fresh wrapper process, so RUSAGE_CHILDREN covers this step only.
    """
    wrapper = (
        "import json,resource,subprocess,sys,time\n"
        "t=time.perf_counter(); r=subprocess.run(sys.argv[1:]); dt=time.perf_counter()-t\n"
        "rss=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss/1024\n"
        "print(json.dumps({'rc':r.returncode,'seconds':dt,'peak_rss_mib':rss}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", wrapper, *argv], capture_output=True, text=True, **kwargs
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["rc"] != 0:
        raise RuntimeError(f"{argv} failed: {out.stderr[-2000:]}")
    return result


def python_step(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def now() -> float:
    return time.perf_counter()


def peak_rss_self_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def dump(doc: dict) -> str:
    return json.dumps(doc, indent=2)


def ensure_table(work, keys: int, dim: int):
    """The synthetic table ``work/table`` of ``keys`` rows × ``dim`` (shuffled), regenerated in a
    wiped ``work`` when it is missing or of another size, then read once so that every run starts
    with it in the page cache. Returns its path."""
    import shutil

    from hps_cli.runtime.table import TableReader
    from hps_cli.runtime.table.synthetic import write_synthetic_table

    table = work / "table"
    try:
        with TableReader(table) as reader:
            fresh = reader.num_keys != keys or reader.dim != dim
    except Exception:  # noqa: BLE001 - missing or broken: regenerate
        fresh = True
    if fresh:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        write_synthetic_table(table, keys, dim, shuffle=True)
    subprocess.run(["bash", "-c", f"cat {table}/key {table}/emb_vector > /dev/null"], check=True)
    return table


# The DLRM-like Keras model that bench_build_graph and bench_saved_model both measure
# (`python -c BENCH_DLRM_BUILD PATH` saves it at PATH).
BENCH_DLRM_BUILD = r"""
import os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import keras
keras.utils.set_random_seed(0)
user = keras.Input((1,), dtype="int64", name="user")
items = keras.Input((3,), dtype="int64", name="items")
tags = keras.Input((5,), dtype="int64", name="tags")
dense = keras.Input((13,), dtype="float32", name="dense")
flat = keras.layers.Flatten
x = keras.layers.Concatenate()([
    flat()(keras.layers.Embedding(100_000, 32, name="user_emb")(user)),
    flat()(keras.layers.Embedding(200_000, 32, name="item_emb")(items)),
    flat()(keras.layers.Embedding(1_000, 16, name="tag_emb")(tags)),
    keras.layers.Dense(64, activation="relu", name="bottom")(dense)])
x = keras.layers.Dense(256, activation="relu", name="fc1")(x)
x = keras.layers.Dense(128, activation="relu", name="fc2")(x)
out = keras.layers.Dense(1, activation="sigmoid", name="ctr")(x)
keras.Model([user, items, tags, dense], out, name="bench_dlrm").save(sys.argv[1])
"""
