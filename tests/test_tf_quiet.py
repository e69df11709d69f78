"""TensorFlow's load-time info lines stay off stderr; everything else written meanwhile stays."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from hps_cli.common.tf_loader import is_native_load_noise

# Lines TensorFlow 2.21 prints while loading on a machine without a GPU (copied from a run).
_NOISE = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
    "I0000 00:00:1795839531.514604    8748 port.cc:153] oneDNN custom operations are on. You may "
    "see slightly different numerical results\n",
    "I0000 00:00:1795839531.514990    8748 cudart_stub.cc:31] Could not find cuda drivers on your "
    "machine, GPU will not be used.\n",
    "I1127 13:05:59.123456 140245 cpu_feature_guard.cc:210] This TensorFlow binary is optimized\n",
    "To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild "
    "TensorFlow with the appropriate compiler flags.\n",
    # No GPU (or no driver): printed at device set-up when TF_CPP_MIN_LOG_LEVEL is below 3,
    # e.g. inherited from a parent process.
    "E0000 00:00:1795839532.0 8748 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA "
    "error: Failed call to cuInit: UNKNOWN ERROR (303)\n",
    "W0000 00:00:1795839532.0 8748 cudart_stub.cc:31] Could not find cuda drivers on this host\n",
]
_KEPT = [
    "W0000 00:00:1795839531.5 8748 tf_logging.cc:1] a warning stays\n",
    "E0000 00:00:1795839532.0 8748 cuda_executor.cc:52] an error of a GPU that is there\n",
    '{"level": "info", "event": "listening"}\n',
    "Traceback (most recent call last):\n",
    "I0000 is not a log line without its source location\n",
]


def test_only_load_time_info_lines_are_noise():
    assert all(is_native_load_noise(line) for line in _NOISE)
    assert not any(is_native_load_noise(line) for line in _KEPT)


def _run(code: str, **env) -> subprocess.CompletedProcess:
    environ = {
        k: v for k, v in os.environ.items() if k not in ("HPS_DEBUG", "TF_CPP_MIN_LOG_LEVEL")
    }
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


_WINDOW = """
import os, sys
from hps_cli.common.tf_loader import quiet_native_stderr
print("before", file=sys.stderr, flush=True)
with quiet_native_stderr():
    os.write(2, {noise!r}.encode())
    os.write(2, b"native warning\\n")
    print("python line", file=sys.stderr)
    os.write(2, {noise!r}.encode())
print("after", file=sys.stderr, flush=True)
""".format(noise="".join(_NOISE))


def test_the_window_drops_the_noise_and_keeps_the_rest_in_order():
    res = _run(_WINDOW)
    assert res.returncode == 0, res.stderr
    assert res.stderr == "before\nnative warning\npython line\nafter\n"


def test_hps_debug_shows_everything():
    res = _run(_WINDOW, HPS_DEBUG="1")
    assert res.returncode == 0, res.stderr
    assert res.stderr.count("oneDNN") == 2 and "native warning" in res.stderr


def test_set_debug_shows_everything():
    """What `hps --debug` calls: the setting, not the environment, turns the filter off."""
    code = "from hps_cli.common.tf_loader import set_debug\nset_debug(True)\n" + _WINDOW
    res = _run(code)
    assert res.returncode == 0, res.stderr
    assert res.stderr.count("oneDNN") == 2 and "native warning" in res.stderr


@pytest.mark.tf
@pytest.mark.parametrize("level", ["", "0", "2"])
def test_importing_tensorflow_prints_nothing(level):
    """Whatever TF_CPP_MIN_LOG_LEVEL a parent passes down (the quickstart's children)."""
    pytest.importorskip("tensorflow")
    res = _run(
        "from hps_cli.common.tf_loader import import_tensorflow\n"
        "tf = import_tensorflow()\nprint(tf.__version__, float(tf.constant(2.0) * 2))",
        **({"TF_CPP_MIN_LOG_LEVEL": level} if level else {}),
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().endswith("4.0") and res.stderr == ""


@pytest.mark.tf
@pytest.mark.parametrize("level", ["", "0"])
def test_importing_the_keras_layers_prints_nothing(level):
    """``import hps_cli.tf`` in a user's program: quiet, devices and log level left alone."""
    pytest.importorskip("tensorflow")
    res = _run(
        "import os\nimport hps_cli.tf\nimport tensorflow as tf\n"
        "print(float(tf.constant(2.0) * 2), os.environ.get('TF_CPP_MIN_LOG_LEVEL'))",
        **({"TF_CPP_MIN_LOG_LEVEL": level} if level else {}),
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["4.0", level or "None"] and res.stderr == ""
