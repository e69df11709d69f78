#!/usr/bin/env bash
# Run on a GPU machine: the query-kernel tuning study (benchmarks/gpu_query_variants.py), then
# an ncu profile of the default query and gather at dim 32. Logs and JSON go to $OUT (default
# .bench/gpu, see gpu_setup.sh).
set -uo pipefail
source "$(dirname "$0")/gpu_setup.sh"
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD/benchmarks
# variants NAME [VAR=VALUE ...]: the study with those environment settings, logs as NAME
variants() {
  local name=$1; shift
  env "$@" python3 benchmarks/gpu_query_variants.py --out "$OUT/variants_$name.json" \
    ${STUDY_ARGS:-} >"$OUT/variants_$name.log" 2>&1
  tail -12 "$OUT/variants_$name.log"
}
for ways in ${WAYS_LIST:-8}; do
  echo "== sets of $ways ways"
  variants "ways$ways" STUDY_WAYS="$ways"
done
for bytes in ${FETCH_BYTES:-}; do
  echo "== L2 fetch granularity $bytes B"
  variants "fetch$bytes" HPS_STUDY_L2_FETCH_BYTES="$bytes"
done
for mb in ${PERSIST_MB:-}; do
  variants "persist$mb" HPS_STUDY_L2_PERSIST_MB="$mb"
done
if [ "${PROFILE:-1}" = 1 ]; then
  ncu --query-metrics >"$OUT/ncu_metrics.txt" 2>&1
  metrics=dram__bytes_read.sum,dram__bytes_write.sum,lts__t_sectors_op_read.sum,lts__t_sectors_op_read_lookup_miss.sum,lts__t_sectors_op_red.sum,lts__t_sectors_op_red_lookup_miss.sum,lts__t_sectors_op_write.sum,lts__t_sectors_op_write_lookup_miss.sum,gpu__time_duration.sum
  for hits in 1 0; do
    ncu --clock-control none --cache-control none --kernel-name regex:'dc_query|gather_rows' \
      --launch-count 3 --metrics "$metrics" \
      python3 benchmarks/gpu_query_variants.py --profile --dims 32 --hits $hits ${PROFILE_ARGS:-} \
      >"$OUT/ncu_hits$hits.txt" 2>&1
    grep -E "dc_query|gather_rows|dram__|lts__|gpu__time|ERR|rror" "$OUT/ncu_hits$hits.txt" | head -40
  done
fi
