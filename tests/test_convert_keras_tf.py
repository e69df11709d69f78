"""`hps convert` of a Keras 2 .h5 written by real tf_keras ``model.save``."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from helpers.convert_builders import read_hps

from hps_cli.convert import ConvertOptions, convert

pytestmark = pytest.mark.tf

_SAVE = """
import os, sys
os.environ["TF_USE_LEGACY_KERAS"] = "1"
import numpy as np, tf_keras as keras
u = keras.Input((1,), name="u"); i = keras.Input((1,), name="i")
eu = keras.layers.Embedding(300, 8, name="user_emb")(u)
ei = keras.layers.Embedding(120, 4, name="item_emb")(i)
x = keras.layers.Concatenate()([keras.layers.Flatten()(eu), keras.layers.Flatten()(ei)])
model = keras.Model([u, i], keras.layers.Dense(1, name="head")(x))
model.compile("adam", "mse")
model.save(sys.argv[1])
model.save_weights(sys.argv[1][:-3] + "_weights.h5")  # Keras 2 layout (".weights.h5": Keras 3's)
for name in ("user_emb", "item_emb"):
    np.save(sys.argv[1] + "." + name + ".npy", model.get_layer(name).get_weights()[0])
"""


def test_real_tf_keras_h5(tmp_path):
    h5 = tmp_path / "model.h5"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    subprocess.run(
        [sys.executable, "-c", _SAVE, str(h5)],
        check=True,
        env=env,
        timeout=300,
        capture_output=True,
    )
    result = convert(ConvertOptions(src=h5, dst=tmp_path / "out"))
    assert result.format == "hdf5"
    assert sorted(t.name for t in result.tables) == ["item_emb", "user_emb"]
    for name in ("user_emb", "item_emb"):
        expected = np.load(f"{h5}.{name}.npy")
        keys, vectors, _ = read_hps(tmp_path / "out" / name)
        assert np.array_equal(keys, np.arange(len(expected)))
        assert vectors.tobytes() == expected.astype(np.float32).tobytes()
    # save_weights puts layer_names on the root instead of under model_weights
    result = convert(ConvertOptions(src=tmp_path / "model_weights.h5", dst=tmp_path / "w"))
    assert sorted(t.name for t in result.tables) == ["item_emb", "user_emb"]
    assert (
        read_hps(tmp_path / "w" / "user_emb")[1].tobytes()
        == np.load(f"{h5}.user_emb.npy").tobytes()
    )
