"""Importing TensorFlow and Keras on demand, quietly, with a typed error when they are missing.

TensorFlow's native load-time lines stay off stderr unless debugging is on: ``set_debug(True)``
(what ``hps --debug`` calls) or ``HPS_DEBUG=1`` in the environment (for programs that use the
library without the CLI).
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from contextlib import contextmanager, nullcontext

from ..runtime.errors import DependencyMissingError

_debug = False

# What TensorFlow's native libraries print while they load, before absl logging is set up (so
# TF_CPP_MIN_LOG_LEVEL cannot hide it): absl's preamble and info-level lines ("I0000 00:00:…
# port.cc:153] oneDNN custom operations are on…", "cudart_stub.cc:31] Could not find cuda
# drivers…") and the second line of cpu_feature_guard's. On a machine without a GPU (or
# without its driver) the device set-up adds "E… cuda_platform.cc:52] failed call to cuInit",
# at any TF_CPP_MIN_LOG_LEVEL below 3, which a parent process may have set: it says only that
# TensorFlow computes on the CPU.
_ABSL_PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called"
_ABSL_INFO = re.compile(r"I\d{4} \d+:\d+:\d+\.\d+\s+\d+ [^\s\]]+:\d+\] ")
_NO_GPU = re.compile(
    r"[IWE]\d{4} \d+:\d+:\d+\.\d+\s+\d+ "
    r"(cuda_platform\.cc:\d+\] failed call to cuInit|cudart_stub\.cc:\d+\] Could not find cuda)"
)
_CPU_FEATURES = "To enable the following instructions: "


def set_debug(enabled: bool) -> None:
    """Show TensorFlow's load-time log lines as they happen (``hps --debug``)."""
    global _debug
    _debug = enabled


def debug_enabled() -> bool:
    return _debug or os.environ.get("HPS_DEBUG", "") not in ("", "0")


def is_native_load_noise(line: str) -> bool:
    """Whether a stderr line is one of TensorFlow's load-time info lines, or one of the lines
    that say only that there is no GPU (other warnings and errors are kept)."""
    return (
        line.startswith((_ABSL_PREAMBLE, _CPU_FEATURES))
        or _ABSL_INFO.match(line) is not None
        or _NO_GPU.match(line) is not None
    )


@contextmanager
def quiet_native_stderr():
    """Capture file descriptor 2 meanwhile and write back everything but TensorFlow's load-time
    info lines. Other output of the window (another thread's log line, a native warning) comes
    back in order when the window closes. With debugging on (``set_debug``, HPS_DEBUG=1) everything
    shows as it happens."""
    if debug_enabled():
        yield
        return
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # stderr is no file (captured in process)
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), fd)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, fd)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode("utf-8", errors="replace")
            kept = [
                line for line in text.splitlines(keepends=True) if not is_native_load_noise(line)
            ]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def import_tensorflow(purpose: str = "hps dissect", *, command: bool = True):
    """Import TensorFlow quietly, or raise DependencyMissingError.

    In a command (``command=True``) TensorFlow sees no GPU: dissecting needs none, and hiding
    them keeps TensorFlow from reserving GPU memory that the serving runtime or other processes
    use; its native logging defaults to errors only (TF_CPP_MIN_LOG_LEVEL=3). In a user's
    program (``command=False``, the Keras layers) devices and logging stay as they are; the
    devices are only listed, which sets them up inside the quiet window.
    """
    fresh = "tensorflow" not in sys.modules
    if command:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with quiet_native_stderr() if fresh else nullcontext():
        try:
            import tensorflow as tf
        except ImportError as exc:
            raise DependencyMissingError("tensorflow", "tf", purpose) from exc
        if fresh:
            try:
                if command:
                    tf.config.set_visible_devices([], "GPU")
                else:
                    tf.config.list_physical_devices()
            except (RuntimeError, ValueError):
                pass  # devices already initialized by the caller: leave them as they are
    return tf


def import_keras3(purpose: str = "hps dissect"):
    import_tensorflow(purpose)
    try:
        import keras
    except ImportError as exc:
        raise DependencyMissingError("keras", "tf", purpose) from exc
    return keras


def import_tf_keras(purpose: str = "hps dissect"):
    """tf_keras (Keras 2), which reads .h5 models and tf_keras SavedModels."""
    import_tensorflow(purpose)
    try:
        import tf_keras
    except ImportError as exc:
        raise DependencyMissingError("tf_keras", "tf", purpose) from exc
    return tf_keras


def tensorflow_version() -> str | None:
    module = sys.modules.get("tensorflow")
    return getattr(module, "__version__", None) if module else None
