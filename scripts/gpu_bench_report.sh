#!/usr/bin/env bash
# On a GPU machine: `hps bench lookup` on a GPU-cached config (Zipf keys over a table five times
# the cache), for docs/benchmarks.md. Output (text and CSV) goes to $OUT (default .bench/gpu).
set -uo pipefail
source "$(dirname "$0")/gpu_setup.sh"
WORK=$(mktemp -d)
python3 -m hps_cli -q table generate "$WORK/items" --keys 2000000 --dim 128 --shuffle --meta
cat > "$WORK/ps.json" <<JSON
{"supportlonglong": true,
 "volatile_db": {"type": "parallel_hash_map", "num_partitions": 8},
 "models": [{"model": "bench", "sparse_files": ["items"], "embedding_table_names": ["items"],
   "embedding_vecsize_per_table": [128], "maxnum_catfeature_query_per_table_per_sample": [64],
   "default_value_for_each_table": [0.0], "deployed_device_list": [0], "max_batch_size": 1024,
   "gpucache": true, "gpucacheper": 0.2, "hit_rate_threshold": 1.0}]}
JSON
python3 -m hps_cli bench lookup --config "$WORK/ps.json" --batch-size 2048,16384 \
  --distribution zipf:1.05 --warmup 100 --iterations 200 --csv "$OUT/bench_lookup_gpu.csv" \
  > "$OUT/bench_lookup_gpu.txt" 2> "$OUT/bench_lookup_gpu.err"
echo "bench exit code: $?"
cat "$OUT/bench_lookup_gpu.txt"; tail -5 "$OUT/bench_lookup_gpu.err"
