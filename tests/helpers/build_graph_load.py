"""Load inference packages in a fresh process and predict the recorded samples.

    python tests/helpers/build_graph_load.py PACKAGE=NPZ [PACKAGE=NPZ ...]

Run by test_build_graph.py in a subprocess that never built the models (for tf_keras packages
with TF_USE_LEGACY_KERAS=1). For each package: ``hps_cli.tf.load_model``, ``predict`` on the
sample inputs recorded at training time (``in:<input>``; sparse inputs as their three
components), and ``hps.Shutdown()`` before the next package (HPS initializes once per
process). Prints one JSON line per package: the Keras module of the model, the largest
difference from the recorded predictions, and the lookup layers found.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import hps_cli.tf as hps  # noqa: E402 (registers the layers)

for arg in sys.argv[1:]:
    package, npz = arg.split("=", 1)
    model = hps.load_model(package)
    inference = hps.read_package(package).manifest["inference"]
    with np.load(npz) as data:
        feed = []
        for spec in inference["inputs"]:
            name = spec["name"]
            if spec["format"] == "sparse":
                feed.append(
                    tf.SparseTensor(
                        data[f"in:{name}:indices"],
                        data[f"in:{name}:values"],
                        data[f"in:{name}:dense_shape"],
                    )
                )
            else:
                feed.append(tf.constant(data[f"in:{name}"]))
        wanted = [data[k] for k in data.files if k.startswith("out:")]
    got = model.predict(feed, batch_size=len(wanted[0]), verbose=0)
    got = got if isinstance(got, list) else [got]
    print(
        json.dumps(
            {
                "package": package,
                "keras": type(model).__module__.split(".")[0],
                "max_abs_diff": max(float(np.max(np.abs(g - w))) for g, w in zip(got, wanted)),
                "shapes_equal": all(g.shape == w.shape for g, w in zip(got, wanted)),
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
