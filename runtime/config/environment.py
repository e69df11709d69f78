"""The environment variables hps reads: the one list behind docs/config.md's "Environment
variables" section (config/docs.py renders it) and the names ``hps --help`` ends with.

Each is read where it is used, when it is used (never at import), so setting one in a running
process affects what happens next.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EnvironmentVariable:
    name: str
    effect: str
    default: str
    read_by: str


ENVIRONMENT = (
    EnvironmentVariable(
        "HPS_CACHE_BACKEND",
        "Where the embedding caches keep their rows. `auto`: on the GPU when PyCUDA and the "
        "device are usable; without one, dynamic-cache tables are served from the CPU tiers "
        "(no cache; one start-up warning) and static/uvm tables from the NumPy reference; "
        "`reference`: every cache in the NumPy reference (same answers, on the CPU: tests, "
        "comparisons); `gpu`: a missing GPU is an error.",
        "`auto`",
        "the runtime, each time it builds a cache (`runtime/gpu/backend_choice.py`); "
        "`hps bench` reports it",
    ),
    EnvironmentVariable(
        "HPS_DIRECT_IO",
        "`0`: large table and SST files are written through the page cache instead of with "
        "`O_DIRECT` (file systems that refuse `O_DIRECT` always get buffered writes).",
        "`1`",
        "the table writer and the SST writer, at each file they open (`runtime/direct_io.py`): "
        "`hps convert`, `hps dissect`",
    ),
    EnvironmentVariable(
        "HPS_KERNEL_CACHE",
        "Folder of the compiled GPU kernels (cubins keyed by source, flags, architecture and "
        "nvcc version) and, in its `native/` folder, of the compiled hash-map probe (keyed by "
        "source, compiler command and platform).",
        "`$XDG_CACHE_HOME/hps/kernels`, else `~/.cache/hps/kernels`",
        "the runtime, when it compiles the kernels of a device (`runtime/gpu/kernels.py`) and "
        "at its first hash-map lookup (`runtime/native/loader.py`)",
    ),
    EnvironmentVariable(
        "HPS_NATIVE",
        "`0`: the hash maps (`hash_map`, `multi_process_hash_map`), key hashing and the GPU "
        "cache's inserts never use the compiled helpers of `runtime/native` and keep their "
        "NumPy paths (same answers, a fixed cost of tens of microseconds more per lookup batch). "
        "Otherwise each helper is compiled with `$CC` (else `cc`) at its first use in the "
        "process and cached; without a compiler the NumPy paths answer (one log line at INFO "
        "level).",
        "`1`",
        "the runtime, at each hash-map lookup, key hashing and GPU cache insert "
        "(`runtime/native/hash_probe.py`, `insert_rounds.py`)",
    ),
    EnvironmentVariable(
        "HPS_SERVE_UVLOOP",
        "`0`: `hps serve` runs on asyncio's own event loop instead of uvloop (to compare the two).",
        "uvloop when it is installed",
        "`hps serve`, at start (`hps_cli/serve/event_loop.py`)",
    ),
    EnvironmentVariable(
        "HPS_ADMIN_TOKEN",
        "Bearer token of `hps serve`'s admin endpoints (at least 16 characters) when "
        "`--admin-token-file` is not given.",
        "unset: the admin endpoints answer 403",
        "`hps serve`, at start (`hps_cli/serve/core.py`)",
    ),
    EnvironmentVariable(
        "HPS_DEBUG",
        "`1`: the same as `hps --debug` (full tracebacks on errors, and TensorFlow's load-time "
        "log lines); also read by programs that use the library without the CLI.",
        "unset",
        "`hps_cli/cli.py`, `hps_cli/common/tf_loader.py`, `hps_cli/serve/worker.py` (a worker "
        "of `hps serve --workers` reporting its start-up error)",
    ),
    EnvironmentVariable(
        "TF_USE_LEGACY_KERAS",
        "TensorFlow's switch: `1` (or `true`, `yes`) makes `tf.keras` tf_keras (Keras 2) "
        "instead of Keras 3; the HPS layers of `hps_cli.tf` follow whichever `tf.keras` is.",
        "unset: Keras 3",
        "TensorFlow at import; `hps_cli/tf/flavour.py`",
    ),
    EnvironmentVariable(
        "HPS_CRASH_AT",
        "Tests only: the name of a crash point (`runtime/crash_points.py` lists them, e.g. "
        "`rocksdb.ingested`); the process kills itself with SIGKILL when it reaches it, to "
        "prove that a kill at that step leaves the old or the new output and no leftovers. "
        "`<point>:TERM` or `<point>:INT` sends SIGTERM or SIGINT instead.",
        "unset",
        "`runtime/crash_points.py`, at each point: `hps convert`, start-up loads",
    ),
    EnvironmentVariable(
        "HPS_REQUIRE_GPU",
        "`1`: a `gpu` test that would be skipped (no device, driver or PyCUDA) fails instead "
        "(set on GPU machines).",
        "unset",
        "the test suite (`tests/conftest.py`)",
    ),
    EnvironmentVariable(
        "HPS_REQUIRE_GPUS",
        "`N`: the machine has N GPUs: a test needing up to N GPUs (two-device serving) that "
        "would be skipped fails instead (scripts/gpu_check.sh sets it to the GPU count).",
        "unset",
        "the test suite (`tests/helpers/gpus.py`)",
    ),
)
