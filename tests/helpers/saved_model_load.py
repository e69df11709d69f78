"""Run deployable SavedModels in a fresh process that cannot import hps_cli.

    python -I tests/helpers/saved_model_load.py SAVED_MODEL=FEED_NPZ=OUT_NPZ [...]

Run by the SavedModel tests in a subprocess (``-I``: no script folder, working directory or
PYTHONPATH on sys.path). Before TensorFlow is imported, a sys.meta_path finder refuses every
``hps_cli`` module, and the script checks that ``import hps_cli`` fails. For each SavedModel:
``tf.saved_model.load``, the ``serving_default`` signature called with the FEED_NPZ arrays under
the signature's input names (cast to the signature's dtypes), the outputs saved to OUT_NPZ.
Prints one JSON line per model: its signature's inputs and outputs, and the hps modules loaded
(none, or the test fails).
"""

from __future__ import annotations

import json
import os
import sys


class _BlockHps:
    """Refuses to find hps_cli: the SavedModel must run on TensorFlow alone."""

    def find_spec(self, name, path=None, target=None):
        if name == "hps_cli" or name.startswith("hps_cli."):
            raise ImportError(f"{name} is blocked in this process")
        return None


sys.meta_path.insert(0, _BlockHps())
try:
    import hps_cli  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("hps_cli could be imported: the block does not work")

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

for arg in sys.argv[1:]:
    path, feed_npz, out_npz = arg.split("=")
    function = tf.saved_model.load(path).signatures["serving_default"]
    specs = function.structured_input_signature[1]
    with np.load(feed_npz) as data:
        feed = {name: tf.constant(data[name], spec.dtype) for name, spec in specs.items()}
    outputs = {name: value.numpy() for name, value in function(**feed).items()}
    np.savez(out_npz, **outputs)
    print(
        json.dumps(
            {
                "saved_model": path,
                "inputs": {n: [s.dtype.name, s.shape.as_list()] for n, s in specs.items()},
                "outputs": {n: [v.dtype.name, list(v.shape)] for n, v in outputs.items()},
                "hps_modules": sorted(m for m in sys.modules if m.split(".")[0] == "hps_cli"),
            }
        ),
        flush=True,
    )
