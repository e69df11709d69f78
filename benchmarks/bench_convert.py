"""Benchmark `hps convert` against its baselines, measured in the same run.

    python benchmarks/bench_convert.py --gib 2 --dim 128 --rows 5000000 --rdim 64

1. SOK v2 -> HPS: a SOK v2 dump of ``--gib`` GiB (296-byte headers, int64 keys, float32
   weights) converted into an HPS table, vs `cp` of the same two files (also `cp` + sync of the
   copies, since convert fsyncs its output). Target: at least 50 % of cp's throughput, peak RSS
   under 300 MB.
2. HPS -> RocksDB: a ``--rows`` x ``--rdim`` table bulk-loaded into a column family, vs a plain
   loop of per-row ``WriteBatch.put`` (flushing every 10 000 rows) into a fresh database opened
   with HPS's options. Target: at least 3x the loop's rows/s.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _measure import python_step, run_measured  # noqa: E402

_MAKE_SOK = """
import sys, numpy as np
from hps_cli.formats.sok_v2 import SokHeader
folder, rows, dim = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(0)
step = 1 << 18
with open(folder + "/emb-key", "wb") as k, open(folder + "/emb-weight", "wb") as w:
    k.write(SokHeader("", 0, "", 1).to_bytes()); w.write(SokHeader("", 1, "", 5).to_bytes())
    for s in range(0, rows, step):
        n = min(step, rows - s)
        (np.arange(s, s + n, dtype=np.int64) * 2654435761 % (1 << 62)).tofile(k)
        rng.standard_normal((n, dim), dtype=np.float32).tofile(w)
"""

_PUT_LOOP = """
import sys, numpy as np
from hps_cli.runtime.persistent.rocksdb_families import open_db, family
from hps_cli.runtime.table import TableReader
import rocksdict
src, db_path = sys.argv[1], sys.argv[2]
db = open_db(db_path, create=True)
cf = family(db, "hps_et.m.t", create=True)
handle = db.get_column_family_handle("hps_et.m.t")
with TableReader(src) as reader:
    for chunk in reader.chunks(100_000):
        kb = chunk.keys.tobytes(); vb = chunk.vectors.tobytes(); rb = 4 * reader.dim
        batch = rocksdict.WriteBatch(raw_mode=True)
        batch.set_default_column_family(handle)
        for i in range(chunk.keys.size):
            batch.put(kb[8 * i:8 * i + 8], vb[rb * i:rb * (i + 1)])
            if batch.len() >= 10_000:
                db.write(batch); batch = rocksdict.WriteBatch(raw_mode=True)
                batch.set_default_column_family(handle)
        db.write(batch)
db.flush(); del cf; db.close()
"""


def bench_sok(work: Path, gib: float, dim: int, repeat: int, settle: float = 1.0) -> dict:
    rows = int(gib * (1 << 30) / (8 + 4 * dim))
    dump = work / "sok"
    dump.mkdir()
    run_measured(python_step(_MAKE_SOK) + [str(dump), str(rows), str(dim)])
    files = [dump / "emb-key", dump / "emb-weight"]
    size = sum(p.stat().st_size for p in files)
    run_measured(["bash", "-c", f"cat {files[0]} {files[1]} > /dev/null"])  # warm equally
    copy, out = work / "cp", work / "hps"
    steps = {
        "cp": lambda: ["cp", *map(str, files), str(copy)],
        "cp_sync": lambda: [
            "bash",
            "-c",
            f"cp {files[0]} {files[1]} {copy} && sync -f {copy}/emb-key {copy}/emb-weight",
        ],
        "convert": lambda: [sys.executable, "-m", "hps_cli", "-q", "convert", str(dump), str(out)],
    }
    # Rounds interleave the three steps, so each round's ratios compare runs made under the same
    # load and write-back state (both vary a lot on a shared VM); medians are over rounds. The
    # order rotates from round to round: deleting the previous step's 2 GB output (a synced
    # one makes ext4 discard its blocks) slows whichever step comes next, so no step may always
    # follow the same one. A pause after the sync lets that settle.
    runs: dict[str, list] = {name: [] for name in steps}
    names = list(steps)
    for round_no in range(repeat):
        for name in names[round_no % len(names) :] + names[: round_no % len(names)]:
            shutil.rmtree(copy, ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)
            copy.mkdir()
            subprocess.run(["sync"])  # no writeback of an earlier step may slow this one
            time.sleep(settle)
            runs[name].append(run_measured(steps[name]()))
    shutil.rmtree(copy, ignore_errors=True)

    def summary(name):
        secs = sorted(r["seconds"] for r in runs[name])
        return {
            "seconds": secs[len(secs) // 2],
            "all_seconds": [round(r["seconds"], 3) for r in runs[name]],
            "peak_rss_mib": max(r["peak_rss_mib"] for r in runs[name]),
        }

    cp, cp_sync, conv = summary("cp"), summary("cp_sync"), summary("convert")
    per_round = [
        {"cp": c["seconds"] / v["seconds"], "cp_sync": s["seconds"] / v["seconds"]}
        for c, s, v in zip(runs["cp"], runs["cp_sync"], runs["convert"])
    ]
    median = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    if not out.exists():  # the last round did not end with convert: make its output again
        run_measured(steps["convert"]())
    check = run_measured(
        [
            sys.executable,
            "-m",
            "hps_cli",
            "-q",
            "table",
            "verify",
            str(out / "emb"),
            "--trust-sidecar",
        ]
    )
    shutil.rmtree(out)
    shutil.rmtree(dump)
    gbs = lambda s: size / s / 1e9  # noqa: E731
    return {
        "rows": rows,
        "dim": dim,
        "bytes": size,
        "cp": {**cp, "GB_per_s": gbs(cp["seconds"])},
        "cp_sync": {**cp_sync, "GB_per_s": gbs(cp_sync["seconds"])},
        "convert": {
            **conv,
            "GB_per_s": gbs(conv["seconds"]),
            "ratio_to_cp": median([r["cp"] for r in per_round]),
            "ratio_to_cp_sync": median([r["cp_sync"] for r in per_round]),
            "ratios_per_round": [{k: round(v, 3) for k, v in r.items()} for r in per_round],
        },
        "verify_output": check["rc"] == 0,
        "settle_seconds": settle,
        "order": "rotating per round",
    }


def bench_rocksdb(work: Path, rows: int, dim: int, repeat: int) -> dict:
    table = work / "table"
    run_measured(
        [
            sys.executable,
            "-m",
            "hps_cli",
            "-q",
            "table",
            "generate",
            str(table),
            "--keys",
            str(rows),
            "--dim",
            str(dim),
            "--shuffle",
        ]
    )
    run_measured(["bash", "-c", f"cat {table}/key {table}/emb_vector > /dev/null"])
    loop_db, conv_db = work / "loop_db", work / "conv_db"
    steps = {
        "put_loop": lambda: python_step(_PUT_LOOP) + [str(table), str(loop_db)],
        "convert": lambda: [
            sys.executable,
            "-m",
            "hps_cli",
            "-q",
            "convert",
            str(table),
            str(conv_db),
            "--to",
            "rocksdb",
            "--model",
            "m",
        ],
    }
    runs: dict[str, list] = {name: [] for name in steps}
    for _ in range(repeat):  # interleaved rounds, as in bench_sok
        for name, make in steps.items():
            shutil.rmtree(loop_db, ignore_errors=True)
            shutil.rmtree(conv_db, ignore_errors=True)
            subprocess.run(["sync"])
            runs[name].append(run_measured(make()))
    shutil.rmtree(loop_db, ignore_errors=True)
    shutil.rmtree(conv_db, ignore_errors=True)
    shutil.rmtree(table)
    median = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731

    def summary(name):
        secs = [r["seconds"] for r in runs[name]]
        return {
            "seconds": median(secs),
            "all_seconds": [round(x, 3) for x in secs],
            "peak_rss_mib": max(r["peak_rss_mib"] for r in runs[name]),
            "M_rows_per_s": rows / median(secs) / 1e6,
        }

    per_round = [
        loop["seconds"] / conv["seconds"] for loop, conv in zip(runs["put_loop"], runs["convert"])
    ]
    return {
        "rows": rows,
        "dim": dim,
        "put_loop": summary("put_loop"),
        "convert": {
            **summary("convert"),
            "ratio_to_put_loop": median(per_round),
            "ratios_per_round": [round(x, 3) for x in per_round],
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=float, default=2.0)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--rdim", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=1, help="runs per step; the median is kept")
    ap.add_argument("--only", choices=("sok", "rocksdb"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/hps-bench-convert"))
    args = ap.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    result = {"date": date.today().isoformat(), "cpu": platform.processor() or platform.machine()}
    try:
        if args.only != "rocksdb":
            result["sok_v2_to_hps"] = bench_sok(args.work, args.gib, args.dim, args.repeat)
        if args.only != "sok":
            result["hps_to_rocksdb"] = bench_rocksdb(args.work, args.rows, args.rdim, args.repeat)
    finally:
        shutil.rmtree(args.work, ignore_errors=True)
    print(json.dumps(result, indent=2))
    ok = True
    if "sok_v2_to_hps" in result:
        sok = result["sok_v2_to_hps"]["convert"]
        ok &= sok["ratio_to_cp"] >= 0.5 and sok["peak_rss_mib"] < 300
    if "hps_to_rocksdb" in result:
        ok &= result["hps_to_rocksdb"]["convert"]["ratio_to_put_loop"] >= 3
    print("targets met" if ok else "TARGETS MISSED", file=sys.stderr)


if __name__ == "__main__":
    main()
