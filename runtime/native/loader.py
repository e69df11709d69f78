"""Compile a C source of this package at first use and load it with ctypes, once per process.

The shared library is cached on disk under ``<kernel cache>/native`` (``HPS_KERNEL_CACHE``, as
the GPU kernels), named by a hash of the source, the compiler command and flags, and the
platform, so an edited source or another compiler never loads a stale library. It is compiled
to a temporary name in the cache folder and renamed into place, so processes that start
together (``hps serve --workers N``) never load a half-written file: each either finds the
finished library or compiles its own copy and renames it over the same name.

Without a compiler, or when compiling or loading fails, ``load_library`` returns None and logs
one line (the callers keep their NumPy paths).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shlex
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Callable, Sequence, TypeVar

log = logging.getLogger("hps_cli.runtime")

# Portable flags (no -march=native): the cache folder may be shared by machines of one
# architecture, and the key names the architecture, not the CPU model.
FLAGS = ("-O2", "-std=c99", "-shared", "-fPIC")
_COMPILE_TIMEOUT_S = 120
_HERE = Path(__file__).resolve().parent

_lock = threading.Lock()
_libraries: dict[str, ctypes.CDLL | None] = {}
_helpers: dict[str, object] = {}  # stem -> its wrapper (None: unavailable), made once

Helper = TypeVar("Helper")


def native_enabled() -> bool:
    """False when ``HPS_NATIVE=0`` (read at each call, as every hps variable).

    Every lookup of a hash map asks, so on POSIX the value is read from ``os.environ``'s own
    bytes mapping (what ``os.environ.get`` reads too, after encoding the name; both miss a
    change made with ``os.putenv`` alone): 0.2 µs instead of 0.8."""
    data = getattr(os.environ, "_data", None) if os.name == "posix" else None
    if isinstance(data, dict):
        raw = data.get(b"HPS_NATIVE")
        return raw is None or raw.strip() != b"0"
    return os.environ.get("HPS_NATIVE", "1").strip() != "0"


def compiler_command() -> list[str]:
    """The C compiler and its flags: ``$CC`` (may hold arguments) or ``cc``."""
    return [*shlex.split(os.environ.get("CC") or "cc"), *FLAGS]


def library_name(stem: str, source: bytes, command: Sequence[str]) -> str:
    """File name of the library compiled from ``source`` with ``command`` on this platform."""
    digest = hashlib.sha256()
    for part in (source, "\0".join(command).encode(), platform.system().encode()):
        digest.update(part)
        digest.update(b"\0")
    digest.update(platform.machine().encode())
    return f"{stem}-{digest.hexdigest()[:24]}.so"


def cache_dir() -> Path:
    """``native`` in the kernel cache folder (``HPS_KERNEL_CACHE``, else the user's cache)."""
    base = os.environ.get("HPS_KERNEL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "hps", "kernels"
    )
    return Path(base) / "native"


def build(source_path: Path, cache: Path) -> Path:
    """The library of ``source_path`` in ``cache``: the cached one, or compiled now."""
    source = source_path.read_bytes()
    command = compiler_command()
    target = cache / library_name(source_path.stem, source, command)
    if target.is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=".partial", dir=cache)
    os.close(fd)
    try:
        subprocess.run(
            [*command, "-o", partial, str(source_path)],
            check=True,
            capture_output=True,
            text=True,
            timeout=_COMPILE_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return target


def load_library(stem: str) -> ctypes.CDLL | None:
    """``<stem>.c`` of this package compiled and loaded (once per process, thread-safe), or
    None when that is not possible."""
    try:
        return _libraries[stem]
    except KeyError:
        pass
    with _lock:
        if stem not in _libraries:
            _libraries[stem] = _compile_and_load(stem)
        return _libraries[stem]


def native_helper(stem: str, wrap: Callable[[ctypes.CDLL], Helper]) -> Helper | None:
    """``wrap`` of the library ``<stem>.c`` (its functions bound once per process); None when
    ``HPS_NATIVE=0`` or when the library cannot be compiled (the callers' NumPy paths answer)."""
    if not native_enabled():
        return None
    try:
        return _helpers[stem]  # type: ignore[return-value]
    except KeyError:
        pass
    library = load_library(stem)
    helper = wrap(library) if library is not None else None
    return _helpers.setdefault(stem, helper)  # another thread may have got here first


def _compile_and_load(stem: str) -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(str(build(_HERE / f"{stem}.c", cache_dir())))
    except subprocess.CalledProcessError as exc:
        reason = (exc.stderr or "").strip().splitlines()[-1:] or [f"exit status {exc.returncode}"]
        why = f"{shlex.join(exc.cmd[:1])} failed: {reason[0]}"
    except (OSError, subprocess.SubprocessError) as exc:  # no compiler, unwritable cache, ...
        why = f"{type(exc).__name__}: {exc}"
    log.info("native %s unavailable (%s); using the NumPy path", stem, why)
    return None
