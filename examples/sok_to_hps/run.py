"""From a SOK dump to a served HPS model, in one checked command per step.

    python examples/sok_to_hps/run.py [--work DIR] [--keep]

HugeCTR's SOK (`sok.dump(path, vars, optimizer)`) writes, per variable, `<name>-key` and
`<name>-weight` (and optimizer slots `<name>-<Optimizer>-<slot>`), each starting with a 296-byte
header: the table name (256 bytes, space padded), a big-endian uint32 file type (0 key, 1
weight, 2 optimizer state), the slot name (32 bytes) and a big-endian uint32 dtype index
(1 int64, 5 float32, ...); the raw little-endian array follows. HPS needs `key` + `emb_vector`
without the header; the HPS notebooks strip it by hand. Here:

1. write a SOK v2 dump of two tables with Adam slots (the bytes `sok.dump` lays out);
2. `hps convert --list` shows what it found, then `hps convert` checks the headers and writes
   one HPS table per variable (optimizer files are reported and skipped);
3. write a ps.json for them, `hps validate-config` it;
4. `hps serve` it and query the Triton HPS backend contract (KEYS / NUMKEYS) with tritonclient:
   the vectors must equal the dump's weights;
5. shut down cleanly.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from hps_cli.devtools.serve_process import ServeProcess

HEADER = 296
DTYPE_INDEX = {np.dtype("int64"): 1, np.dtype("float32"): 5}


def hps(*args: str) -> None:
    print(f"$ hps {' '.join(shlex.quote(a) for a in args)}", flush=True)
    subprocess.run([sys.executable, "-m", "hps_cli", *args], check=True)


def sok_file(path: Path, table: str, file_type: int, array: np.ndarray, slot: str = "") -> None:
    header = (
        table.rjust(256).encode("ascii")
        + file_type.to_bytes(4, "big")
        + slot.rjust(32).encode("ascii")
        + DTYPE_INDEX[array.dtype].to_bytes(4, "big")
    )
    assert len(header) == HEADER
    path.write_bytes(
        header + np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()
    )


def write_dump(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A sok.dump of two dynamic variables (real keys, sorted) with Adam's m and v slots."""
    rng = np.random.default_rng(3)
    tables = {
        "user_table": (np.sort(rng.choice(10**9, 5000, replace=False)), 16),
        "item_table": (np.sort(rng.choice(10**12, 8000, replace=False)), 32),
    }
    folder.mkdir(parents=True)
    out = {}
    for name, (keys, dim) in tables.items():
        keys = keys.astype(np.int64)
        weights = rng.standard_normal((keys.size, dim)).astype(np.float32)
        sok_name = f"{name}_0"  # SOK replaces the ':' of "user_table:0" by '_'
        sok_file(folder / f"{sok_name}-key", sok_name, 0, keys)
        sok_file(folder / f"{sok_name}-weight", sok_name, 1, weights)
        for slot in ("m", "v"):
            sok_file(folder / f"{sok_name}-Adam-{slot}", sok_name, 2, np.zeros_like(weights), slot)
        out[sok_name] = (keys, weights)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="hps-sok-"))
    try:
        print("\n=== 1. a SOK v2 dump (two tables, Adam slots)", flush=True)
        dump = write_dump(work / "sok_dump")
        print(
            f"wrote {work / 'sok_dump'}: "
            + ", ".join(sorted(p.name for p in (work / "sok_dump").iterdir()))
        )

        print("\n=== 2. convert it into HPS tables", flush=True)
        hps("convert", "--list", str(work / "sok_dump"))
        hps("convert", str(work / "sok_dump"), str(work / "tables"))

        print("\n=== 3. an HPS config for them", flush=True)
        names = sorted(dump)
        config = {
            "supportlonglong": True,
            "volatile_db": {"type": "parallel_hash_map", "num_partitions": 4},
            "models": [
                {
                    "model": "sok_model",
                    "sparse_files": [f"tables/{n}" for n in names],
                    "embedding_table_names": names,
                    "embedding_vecsize_per_table": [dump[n][1].shape[1] for n in names],
                    "maxnum_catfeature_query_per_table_per_sample": [10] * len(names),
                    "default_value_for_each_table": [0.0] * len(names),
                    "deployed_device_list": [0],
                    "max_batch_size": 256,
                    "hit_rate_threshold": 1.0,
                    "gpucacheper": 0.5,
                }
            ],
        }
        (work / "ps.json").write_text(json.dumps(config, indent=2))
        hps("validate-config", str(work / "ps.json"))

        print("\n=== 4. serve it and query with the stock Triton client", flush=True)
        import tritonclient.http as httpclient

        with ServeProcess(work / "ps.json", log_path=work / "server.log", echo=True) as server:
            client = httpclient.InferenceServerClient(url=server.http_url)
            rng = np.random.default_rng(4)
            picks = [dump[n][0][rng.integers(0, dump[n][0].size, 6)] for n in names]
            keys = httpclient.InferInput("KEYS", [1, 12], "INT64")
            keys.set_data_from_numpy(np.concatenate(picks)[None, :])
            counts = httpclient.InferInput("NUMKEYS", [1, 2], "INT32")
            counts.set_data_from_numpy(np.array([[6, 6]], dtype=np.int32))
            got = client.infer("sok_model", [keys, counts]).as_numpy("OUTPUT0").reshape(-1)
            want = np.concatenate(
                [
                    dump[n][1][np.searchsorted(dump[n][0], k)].reshape(-1)
                    for n, k in zip(names, picks)
                ]
            )
            if not np.array_equal(got, want):
                raise SystemExit("FAILED: served vectors differ from the SOK dump")
            print(f"12 keys over {len(names)} tables: served vectors equal the dump's weights")
            print("\n=== 5. shut down (SIGTERM)", flush=True)
        print("\nsok_to_hps passed", flush=True)
    finally:
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
