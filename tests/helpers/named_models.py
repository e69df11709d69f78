"""The models of named_inputs_train.py, trained once per test session.

``trained()`` runs the script for Keras 3 and tf_keras in two parallel subprocesses (tf_keras
needs TF_USE_LEGACY_KERAS=1 before TensorFlow loads) and returns the folder holding
``keras3/`` and ``tf_keras/``.
"""

from __future__ import annotations

import atexit
import shutil
import subprocess
import sys
import tempfile
from functools import cache
from pathlib import Path

HERE = Path(__file__).resolve().parent


@cache
def trained() -> Path:
    base = Path(tempfile.mkdtemp(prefix="hps-named-inputs-"))
    atexit.register(shutil.rmtree, base, True)
    procs = {
        flavour: subprocess.Popen(
            [sys.executable, str(HERE / "named_inputs_train.py"), flavour, str(base / flavour)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=HERE,  # imports custom_layers.py from here
        )
        for flavour in ("keras3", "tf_keras")
    }
    for flavour, proc in procs.items():
        output, _ = proc.communicate(timeout=900)
        if proc.returncode or not (base / flavour / "DONE").is_file():
            raise RuntimeError(f"training the {flavour} models failed:\n{output[-4000:]}")
    return base
