"""The trained models of the dissect tests, built once per test session.

``trained_models()`` runs ``dissect_train.py`` for Keras 3, tf_keras and a bare checkpoint in
three parallel subprocesses (tf_keras needs TF_USE_LEGACY_KERAS=1 before TensorFlow loads) and
returns the folder holding ``keras3/``, ``tf_keras/`` and ``plain/``.
"""

from __future__ import annotations

import atexit
import shutil
import subprocess
import sys
import tempfile
from functools import cache
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
FLAVOURS = ("keras3", "tf_keras", "plain")


@cache
def trained_models() -> Path:
    base = Path(tempfile.mkdtemp(prefix="hps-dissect-models-"))
    atexit.register(shutil.rmtree, base, True)
    procs = [
        (
            flavour,
            subprocess.Popen(
                [sys.executable, str(HERE / "dissect_train.py"), flavour, str(base / flavour)],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            ),
        )
        for flavour in FLAVOURS
    ]
    for flavour, proc in procs:
        output, _ = proc.communicate(timeout=900)
        if proc.returncode != 0 or not (base / flavour / "DONE").is_file():
            raise RuntimeError(f"training the {flavour} models failed:\n{output[-4000:]}")
    return base


def expected(path: Path) -> dict[str, np.ndarray]:
    """The ``<model>.npz`` saved by the training run."""
    with np.load(path) as data:
        return {k: data[k] for k in data.files}
