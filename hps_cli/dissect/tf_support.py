"""Importing TensorFlow and Keras on demand, quietly, with a typed error when they are missing."""

from __future__ import annotations

import os
import sys

from ..runtime.errors import DependencyMissingError


def import_tensorflow(purpose: str = "hps dissect"):
    """Import TensorFlow quietly, without GPUs, or raise DependencyMissingError.

    Dissecting needs no GPU; hiding them keeps TensorFlow from reserving GPU memory that the
    serving runtime or other processes use.
    """
    fresh = "tensorflow" not in sys.modules
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        import tensorflow as tf
    except ImportError as exc:
        raise DependencyMissingError("tensorflow", "tf", purpose) from exc
    if fresh:
        try:
            tf.config.set_visible_devices([], "GPU")
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
