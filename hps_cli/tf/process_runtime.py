"""The process-wide HPS runtime behind the TensorFlow layers: initialized once, thread-safe.

As in NVIDIA's plugin, initialization is a process-wide call-once: ``Init(global_batch_size,
ps_config_file)`` (or the first lookup of a layer that names a ``ps_config_file``) builds one
``hps_cli.runtime.HPS`` for the config; a later ``Init`` or layer with another file is ignored
with a warning, and its lookups go to the runtime already running. ``shutdown()`` (an extension)
closes it so that a later ``Init`` can load another config.

Relative config paths resolve against the *package base* when one is set
(``package_base(dir)``: ``load_model`` and ``hps build-graph`` set it to the inference
package), else against the working directory, as HPS does.
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import threading
import warnings
from pathlib import Path
from typing import Iterator

from ..runtime.config import PsConfig, load_config
from ..runtime.errors import InvalidInputError

_BASE: contextvars.ContextVar[Path | None] = contextvars.ContextVar(
    "hps_tf_package_base", default=None
)


@contextlib.contextmanager
def package_base(folder: Path | str) -> Iterator[Path]:
    """Resolve relative ``ps_config_file`` / SavedModel paths against ``folder`` in the block."""
    token = _BASE.set(Path(folder).resolve())
    try:
        yield Path(folder).resolve()
    finally:
        _BASE.reset(token)


def resolve_path(path: str | Path) -> Path:
    """Absolute path: relative ones against the package base, else the working directory."""
    path = Path(path).expanduser()
    if path.is_absolute():
        return path
    base = _BASE.get()
    return (base / path if base is not None else Path.cwd() / path).resolve()


def check_global_batch_size(value: object, where: str = "global_batch_size") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInputError(
            f"global_batch_size must be an integer >= 1, got {value!r}", location=where
        )
    return int(value)


class _Runtime:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.hps = None
        self.path: Path | None = None
        self.global_batch_size = 0
        self.ignored: set[Path] = set()
        self.configs: dict[tuple[Path, int], PsConfig] = {}
        self.atexit_registered = False


_STATE = _Runtime()


def _replicas() -> int:
    """Replicas of the distribution strategy in scope (1 outside any)."""
    import tensorflow as tf

    return int(tf.distribute.get_strategy().num_replicas_in_sync)


def _check_batch(config: PsConfig, global_batch_size: int, path: Path) -> None:
    """HPS's init checks: global_batch_size splits evenly over the replicas, each replica's
    share fits every model's max_batch_size, and with several replicas every model lists one
    device per replica (replica r looks up on ``deployed_device_list[r]``)."""
    replicas = _replicas()
    if global_batch_size % replicas:
        raise InvalidInputError(
            f"global_batch_size {global_batch_size} is not divisible by the "
            f"{replicas} replicas in sync",
            location="global_batch_size",
        )
    for i, model in enumerate(config.models):
        if replicas > 1 and len(model.deployed_device_list) != replicas:
            raise InvalidInputError(
                f"model '{model.model}' lists {len(model.deployed_device_list)} device(s) in "
                f"deployed_device_list but {replicas} replicas are in sync",
                location=f"{path} $.models[{i}].deployed_device_list",
                hint=f"list one device per replica (replica r uses entry r), e.g. "
                f"{list(range(replicas))}",
            )
        if global_batch_size // replicas > model.max_batch_size:
            raise InvalidInputError(
                f"global_batch_size {global_batch_size} exceeds max_batch_size "
                f"{model.max_batch_size} of model '{model.model}'"
                + (f" ({global_batch_size // replicas} per replica)" if replicas > 1 else ""),
                location=f"{path} $.models[{i}].max_batch_size",
                hint="raise max_batch_size in the config or lower global_batch_size",
            )


def _warn_ignored(path: Path) -> None:
    if path not in _STATE.ignored:
        _STATE.ignored.add(path)
        warnings.warn(
            f"HPS is already initialized from {_STATE.path}; {path} is ignored "
            "(initialization is once per process, as in HPS)",
            RuntimeWarning,
            stacklevel=3,
        )


def init(global_batch_size: int, ps_config_file: str | Path) -> str:
    """Initialize the runtime once per process; returns "OK" as HPS's ``Init`` does."""
    global_batch_size = check_global_batch_size(global_batch_size)
    if not isinstance(ps_config_file, (str, Path)) or not str(ps_config_file):
        raise InvalidInputError(
            "ps_config_file must name an HPS config file", location="ps_config_file"
        )
    path = resolve_path(ps_config_file)
    with _STATE.lock:
        if _STATE.hps is not None:
            if path != _STATE.path:
                _warn_ignored(path)
            return "OK"
        from ..runtime.hps import HPS

        config = load_config(path, check_files=True)
        _check_batch(config, global_batch_size, path)
        _STATE.hps = HPS(config)
        _STATE.path = path
        _STATE.global_batch_size = global_batch_size
        if not _STATE.atexit_registered:
            atexit.register(shutdown)
            _STATE.atexit_registered = True
    return "OK"


def active():
    """The running ``HPS`` runtime, or None before initialization."""
    return _STATE.hps


def active_path() -> Path | None:
    return _STATE.path


def runtime(ps_config_file: str | Path | None, global_batch_size: int):
    """The runtime, initializing it from ``ps_config_file`` on first use (lazy initialization)."""
    hps = _STATE.hps
    if hps is not None:
        if ps_config_file:
            path = resolve_path(ps_config_file)
            if path != _STATE.path:
                with _STATE.lock:
                    _warn_ignored(path)
        return hps
    if not ps_config_file:
        raise InvalidInputError(
            "HPS is not initialized",
            location="ps_config_file",
            hint="call hps.Init(global_batch_size, ps_config_file) first, or give the layer a "
            "ps_config_file for lazy initialization",
        )
    init(global_batch_size, ps_config_file)
    return _STATE.hps


def config_for(ps_config_file: str | Path | None) -> PsConfig | None:
    """The config a layer is checked against when it is traced: its own file (parsed, tables
    not loaded), else the running runtime's; None when neither is known yet."""
    if ps_config_file:
        path = resolve_path(ps_config_file)
        if path == _STATE.path and _STATE.hps is not None:
            return _STATE.hps.config
        try:
            stamp = path.stat().st_mtime_ns
        except OSError:
            raise InvalidInputError(
                "the HPS config file does not exist", location=str(path)
            ) from None
        key = (path, stamp)
        config = _STATE.configs.get(key)
        if config is None:
            config = load_config(path, check_files=False)
            _STATE.configs[key] = config
        return config
    return _STATE.hps.config if _STATE.hps is not None else None


def shutdown() -> None:
    """Close the runtime (an extension of HPS's API); a later ``Init`` starts a new one."""
    with _STATE.lock:
        hps, _STATE.hps = _STATE.hps, None
        _STATE.path = None
        _STATE.global_batch_size = 0
        _STATE.ignored.clear()
    if hps is not None:
        hps.close()
