#!/usr/bin/env bash
# Run on a GPU machine (see docs/gpu.md): install (gpu_setup.sh), run the gpu-marked tests with
# HPS_REQUIRE_GPU=1 (and HPS_REQUIRE_GPUS=<GPUs here>: a test needing no more GPUs than the machine
# has may not skip), then the GPU benchmarks (the kernels, then HPS.lookup with its CPU tiers,
# and with two GPUs or more the serve devices benchmark). Logs and JSON go to $OUT (default
# .bench/gpu). SKIP_BENCH=1: tests only; BENCH_ARGS: extra arguments of bench_gpu_cache.py
# (--quick: a smoke run); DEVICES_BENCH_ARGS: extra arguments of bench_serve_devices.py;
# TEST_TIMEOUT / BENCH_TIMEOUT: seconds.
set -uo pipefail
source "$(dirname "$0")/gpu_setup.sh"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
# Only the modules that hold gpu tests: the others may import what this machine lacks.
GPU_TESTS=$(grep -l "mark.gpu" tests/test_*.py)
GPUS=$(nvidia-smi --list-gpus | wc -l)
HPS_REQUIRE_GPU=1 HPS_REQUIRE_GPUS=$GPUS timeout "${TEST_TIMEOUT:-900}" python3 -m pytest -q \
  -m gpu $GPU_TESTS -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests.log" | tail -15
tests_rc=${PIPESTATUS[0]}
timeout "${TEST_TIMEOUT:-900}" python3 -m pytest -q tests/test_cache_reference.py \
  tests/test_kernels_compile.py -p no:cacheprovider 2>&1 | tail -3 | tee -a "$OUT/gpu_tests.log"
if [ "${SKIP_BENCH:-0}" != 1 ]; then
  timeout "${BENCH_TIMEOUT:-900}" python3 benchmarks/bench_gpu_cache.py \
    --out "$OUT/bench_gpu_cache.json" ${BENCH_ARGS:-} >/dev/null 2>"$OUT/bench_gpu_cache.log"
  echo "bench_gpu_cache exit code: $?"
  timeout "${BENCH_TIMEOUT:-900}" python3 benchmarks/bench_gpu_lookup.py \
    --out "$OUT/bench_gpu_lookup.json" >/dev/null 2>"$OUT/bench_gpu_lookup.log"
  echo "bench_gpu_lookup exit code: $?"
  grep -A40 "^summary" "$OUT/bench_gpu_cache.log" || tail -20 "$OUT/bench_gpu_cache.log"
  grep -A20 "^summary" "$OUT/bench_gpu_lookup.log" || tail -20 "$OUT/bench_gpu_lookup.log"
  if [ "$GPUS" -ge 2 ]; then
    timeout "${BENCH_TIMEOUT:-900}" python3 benchmarks/bench_serve_devices.py \
      --out "$OUT/bench_serve_devices.json" ${DEVICES_BENCH_ARGS:-} \
      >"$OUT/bench_serve_devices.out" 2>"$OUT/bench_serve_devices.log"
    echo "bench_serve_devices exit code: $?"
    tail -40 "$OUT/bench_serve_devices.out"
  else
    echo "bench_serve_devices: skipped ($GPUS GPU; it needs 2)"
  fi
fi
echo "gpu tests exit code: $tests_rc"
exit "$tests_rc"
