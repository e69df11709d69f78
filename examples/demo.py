"""The README's main job: the hps pipeline end to end on the embedded default (no GPU, no server).

Each step runs the real `hps` command and shows it, so the output doubles as a tutorial.
Today's steps: make a table, inspect and verify it, write an HPS config for it and validate it.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path


def hps(*args: str) -> None:
    print(f"\n$ hps {' '.join(shlex.quote(a) for a in args)}", flush=True)
    subprocess.run([sys.executable, "-m", "hps_cli", *args], check=True)


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="hps-demo-"))
    table = work / "tables" / "items"
    hps("table", "generate", str(table), "--keys", "100000", "--dim", "32", "--shuffle", "--meta")
    hps("table", "info", str(table))
    hps("table", "verify", str(table), "--dim", "32")
    config = work / "ps.json"
    config.write_text(json.dumps({
        "supportlonglong": True,
        "volatile_db": {"type": "parallel_hash_map", "num_partitions": 4},
        "persistent_db": {"type": "rocks_db", "path": str(work / "rocksdb")},
        "models": [{
            "model": "demo", "sparse_files": ["tables/items"], "deployed_device_list": [0],
            "max_batch_size": 1024, "default_value_for_each_table": [0.0],
            "maxnum_catfeature_query_per_table_per_sample": [8],
            "embedding_vecsize_per_table": [32], "embedding_table_names": ["items"],
            "hit_rate_threshold": 1.0, "gpucacheper": 0.2}],
    }, indent=2))
    hps("validate-config", str(config))
    print(f"\ndemo finished; files are in {work}")


if __name__ == "__main__":
    main()
