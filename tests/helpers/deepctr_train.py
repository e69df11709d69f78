"""Train tiny DeepCTR models and save each as a SavedModel, an .h5 and a tf_keras .keras file.

    python tests/helpers/deepctr_train.py OUT_DIR MODEL [MODEL ...]   (WDL, DCN, xDeepFM)

Run in a subprocess: DeepCTR builds its layers on ``tf.keras``, which is tf_keras only with
TF_USE_LEGACY_KERAS=1 set before TensorFlow is imported (under Keras 3 DeepCTR 0.9.4 cannot
build its models). Synthetic Criteo-like data: sparse features C1..C26 (int32 ids, 3 to 39
values each, dim 4), dense features I1..I13 (float32), 256 rows, one epoch. For each model,
``OUT_DIR/<MODEL>/`` gets ``saved_model/`` (tf_keras ``model.save``), ``model.h5``,
``model.keras`` and ``sample.npz`` in the layout of the other test models (``in:<input>``:
eight rows of inputs; ``out:<output>``: the trained model's predictions for them).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import deepctr_offline  # noqa: E402,F401  (before deepctr: no call to PyPI)
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from deepctr.feature_column import DenseFeat, SparseFeat, get_feature_names  # noqa: E402
from deepctr.models import DCN, WDL, xDeepFM  # noqa: E402

tf.config.set_visible_devices([], "GPU")
tf.random.set_seed(0)
SPARSE = [f"C{i}" for i in range(1, 27)]
DENSE = [f"I{i}" for i in range(1, 14)]
VOCAB = {name: 3 + (i * 7) % 37 for i, name in enumerate(SPARSE)}  # 3 .. 39 rows
ROWS = 256


def columns() -> list:
    sparse = [SparseFeat(name, vocabulary_size=VOCAB[name], embedding_dim=4) for name in SPARSE]
    return sparse + [DenseFeat(name, 1) for name in DENSE]


def data(rows: int, seed: int) -> tuple[dict, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = {n: rng.integers(0, VOCAB[n], size=(rows, 1), dtype=np.int32) for n in SPARSE}
    x.update({n: rng.random((rows, 1)).astype(np.float32) for n in DENSE})
    y = ((x["C1"][:, 0] % 2) ^ (x["I1"][:, 0] > 0.5)).astype(np.float32)
    return x, y


def build(name: str):
    cols = columns()
    if name == "WDL":
        return WDL(cols, cols, dnn_hidden_units=(8,))
    if name == "DCN":
        return DCN(cols, cols, cross_num=1, dnn_hidden_units=(8,))
    if name == "xDeepFM":
        return xDeepFM(cols, cols, dnn_hidden_units=(8,), cin_layer_size=(4, 4))
    raise SystemExit(f"unknown model {name}")


def main() -> None:
    out = Path(sys.argv[1])
    names = get_feature_names(columns())
    x, y = data(ROWS, 0)
    sample, _ = data(8, 1)
    for model_name in sys.argv[2:]:
        folder = out / model_name
        folder.mkdir(parents=True, exist_ok=True)
        model = build(model_name)
        model.compile("adam", "binary_crossentropy")
        model.fit({n: x[n] for n in names}, y, batch_size=64, epochs=1, verbose=0)
        pred = model.predict({n: sample[n] for n in names}, verbose=0)
        arrays = {f"in:{n}": sample[n] for n in names}
        arrays[f"out:{model.output_names[0]}"] = pred
        np.savez(folder / "sample.npz", **arrays)
        model.save(folder / "saved_model", save_format="tf")
        model.save(folder / "model.h5")
        model.save(folder / "model.keras")
    (out / "DONE").write_text(" ".join(sys.argv[2:]))


main()
