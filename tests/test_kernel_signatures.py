"""The argument formats the driver packs match the kernels' parameter lists in cuda/.

The lean launcher (kernels.Launcher) packs plain numbers with ``struct`` by these formats;
a kernel parameter added, removed or retyped without its format would shift every later
argument. Read from the sources themselves, so this runs without a GPU or nvcc.
"""

from __future__ import annotations

import re
import struct

import pytest
from hps_cli.runtime.gpu.gpu_dynamic import (
    DUMP_ARGS,
    FLAGGED_GATHER_ARGS,
    INVALIDATE_ARGS,
    MARK_ARGS,
    PUBLISHED_QUERY_ARGS,
    QUERY_ARGS,
    REPLACE_ROUND_ARGS,
    UPDATE_ARGS,
)
from hps_cli.runtime.gpu.gpu_indexed import INDEXED_QUERY_ARGS
from hps_cli.runtime.gpu.kernels import TILE_WIDTHS, Launcher
from hps_cli.runtime.resources import cuda_dir

# C parameter types of the kernels -> struct codes (pointers are "P" whatever they point to)
_SCALARS = {
    "int64_t": "q",
    "uint64_t": "Q",
    "int": "i",
    "uint32_t": "I",
    "unsigned": "I",
    "float": "f",
}


def _parameter_codes(source: str, kernel: str) -> str:
    text = (cuda_dir() / source).read_text(encoding="utf-8")
    if kernel.endswith("_t##T"):  # the tile-width instances, written once in a macro
        text = text.replace("\\\n", "\n")
    match = re.search(
        r'extern "C" __global__ void (?:\w+ )*' + re.escape(kernel) + r"\s*\(([^)]*)\)", text
    )
    assert match, f"kernel {kernel} not found in {source}"
    codes = ""
    for param in match.group(1).split(","):
        param = param.replace("__restrict__", "").replace("const", "").strip()
        if "*" in param:
            codes += "P"
        else:
            ctype = param.rsplit(maxsplit=1)[0].strip()
            codes += _SCALARS[ctype]
    return codes


@pytest.mark.parametrize(
    "source,kernel,fmt,size",
    [
        ("dynamic_cache.cu", "dc_query", QUERY_ARGS, 120),
        ("dynamic_cache.cu", "dc_query_published", PUBLISHED_QUERY_ARGS, 136),
        ("dynamic_cache.cu", "dc_replace_round", REPLACE_ROUND_ARGS, 80),
        ("dynamic_cache.cu", "dc_update_t##T", UPDATE_ARGS, 56),
        ("dynamic_cache.cu", "dc_invalidate_t##T", INVALIDATE_ARGS, 56),
        ("dynamic_cache.cu", "dc_dump", DUMP_ARGS, 32),
        ("indexed_table.cu", "it_query", INDEXED_QUERY_ARGS, 104),
        ("batch_ops.cu", "mark_positions", MARK_ARGS, 24),
        ("batch_ops.cu", "gather_flagged_rows_t##T", FLAGGED_GATHER_ARGS, 48),
    ],
)
def test_launch_format_matches_the_kernel(source, kernel, fmt, size):
    assert _parameter_codes(source, kernel) == fmt
    # CUDA lays parameters out at their natural alignment, as C and native struct do
    assert struct.calcsize(fmt) == size


def test_every_tile_width_is_instantiated():
    text = (cuda_dir() / "dynamic_cache.cu").read_text(encoding="utf-8")
    assert sorted(int(t) for t in re.findall(r"^HPS_TILED\((\d+)\)", text, re.M)) == sorted(
        TILE_WIDTHS
    )


def test_launcher_hands_the_packed_arguments_to_the_driver_call():
    class Recorder:
        def _launch_kernel(self, grid, block, buffer, shared, stream):
            self.call = (grid, block, bytes(buffer), shared, stream)

    recorder = Recorder()
    Launcher(recorder, "PqIf")((3, 1), (256, 1, 1), "stream", 0x7F00_0000_1000, -5, 7, 0.5)
    grid, block, buffer, shared, stream = recorder.call
    assert (grid, block, shared, stream) == ((3, 1), (256, 1, 1), 0, "stream")
    assert buffer == struct.pack("PqIf", 0x7F00_0000_1000, -5, 7, 0.5)
    assert len(buffer) == 24  # the int64 at offset 8, after the pointer; no tail padding
