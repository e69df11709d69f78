# Sourced by the scripts that run on a GPU machine (gpu_check.sh, gpu_study.sh,
# gpu_bench_report.sh): from the checkout's root, install this package and make $OUT (default
# .bench/gpu, ignored by git) the folder for logs and raw results.
# A machine without network gets its dependencies from a folder of wheels you built for it
# ($HPS_WHEELS, default .devwheels; docs/gpu.md says how): they go into /tmp/site, on
# PYTHONPATH, so the system Python is left as it is. Without such a folder the dependencies must
# already be installed (e.g. pip install -e '.[gpu]').
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${OUT:-.bench/gpu}
mkdir -p "$OUT"
WHEELS=${HPS_WHEELS:-.devwheels}
: >"$OUT/install.log"
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
    "$WHEELS"/*.whl >>"$OUT/install.log" 2>&1 || { cat "$OUT/install.log"; exit 1; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . >>"$OUT/install.log" 2>&1 \
  || { cat "$OUT/install.log"; exit 1; }
export PYTHONUNBUFFERED=1
