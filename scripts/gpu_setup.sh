# Sourced by the scripts that run on the GPU machine (gpu_check.sh, gpu_study.sh): from the
# checkout's root, install the carried wheels (.devwheels, see docs/gpu.md) and this package, and
# make $OUT (or ./gpu-out) the folder for logs and results.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
  .devwheels/*.whl >"$OUT/install.log" 2>&1 || { cat "$OUT/install.log"; exit 1; }
export PYTHONPATH=/tmp/site
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . >>"$OUT/install.log" 2>&1 \
  || { cat "$OUT/install.log"; exit 1; }
export PYTHONUNBUFFERED=1
