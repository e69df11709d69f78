"""Load inference packages in a fresh process and predict the recorded samples.

    python tests/helpers/build_graph_load.py PACKAGE=NPZ [PACKAGE=NPZ ...]

Run by test_build_graph.py in a subprocess that never built the models (for tf_keras packages
with TF_USE_LEGACY_KERAS=1). For each package: ``hps_cli.tf.load_model``, ``predict`` on the
sample inputs recorded at training time (``in:<input>``; sparse inputs as their three
components), again with the integer inputs cast to the other id dtype (int32 <-> int64: a
package takes both), and ``hps.Shutdown()`` before the next package (HPS initializes once per
process). Prints one JSON line per package: the Keras module of the model, the largest
difference from the recorded predictions (``max_abs_diff``; ``max_abs_diff_other_ids`` with
the cast ids), and the lookup layers found.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import hps_cli.tf as hps  # noqa: E402 (registers the layers)

OTHER = {"int32": np.int64, "int64": np.int32}


def ids(value: np.ndarray, other: bool) -> np.ndarray:
    return value.astype(OTHER[value.dtype.name]) if other and value.dtype.name in OTHER else value


def feed(data, inference: dict, other: bool) -> list:
    out = []
    for spec in inference["inputs"]:
        name = spec["name"]
        if spec["format"] == "sparse":
            out.append(
                tf.SparseTensor(
                    data[f"in:{name}:indices"],
                    ids(data[f"in:{name}:values"], other),
                    data[f"in:{name}:dense_shape"],
                )
            )
        else:
            out.append(tf.constant(ids(data[f"in:{name}"], other)))
    return out


def compare(model, inputs: list, wanted: list) -> tuple[float, bool]:
    got = model.predict(inputs, batch_size=len(wanted[0]), verbose=0)
    got = got if isinstance(got, list) else [got]
    diff = max(float(np.max(np.abs(g - w))) for g, w in zip(got, wanted))
    return diff, all(g.shape == w.shape for g, w in zip(got, wanted))


for arg in sys.argv[1:]:
    package, npz = arg.split("=", 1)
    model = hps.load_model(package)
    inference = hps.read_package(package).manifest["inference"]
    with np.load(npz) as data:
        wanted = [data[k] for k in data.files if k.startswith("out:")]
        diff, shapes_equal = compare(model, feed(data, inference, False), wanted)
        other_diff, _ = compare(model, feed(data, inference, True), wanted)
    print(
        json.dumps(
            {
                "package": package,
                "keras": type(model).__module__.split(".")[0],
                "max_abs_diff": diff,
                "max_abs_diff_other_ids": other_diff,
                "shapes_equal": shapes_equal,
                "layers": sorted(
                    type(layer).__name__
                    for layer in model.layers
                    if type(layer).__name__
                    in ("LookupLayer", "SparseLookupLayer", "DenseSavedModel")
                ),
            }
        ),
        flush=True,
    )
    hps.Shutdown()
