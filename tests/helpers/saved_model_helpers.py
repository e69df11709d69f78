"""Helpers of the deployable-SavedModel tests: run SavedModels in a fresh process that cannot
import hps_cli (saved_model_load.py), and read what build-graph wrote next to them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def run_fresh(cases: dict[str, tuple[Path, dict]], work: Path) -> dict[str, dict]:
    """Run each ``name: (saved_model, feeds)`` in one ``python -I`` process with hps_cli
    blocked; returns ``name: {"doc": its JSON line, "outputs": {name: array}}``."""
    work.mkdir(parents=True, exist_ok=True)
    args, outs = [], {}
    for name, (path, feeds) in cases.items():
        feed_file, out_file = work / f"{name}.feed.npz", work / f"{name}.out.npz"
        np.savez(feed_file, **feeds)
        args.append(f"{path}={feed_file}={out_file}")
        outs[str(path)] = (name, out_file)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    done = subprocess.run(
        [sys.executable, "-I", str(HERE / "saved_model_load.py"), *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=work,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    results = {}
    for line in done.stdout.splitlines():
        if line.startswith("{"):
            doc = json.loads(line)
            name, out_file = outs[doc["saved_model"]]
            with np.load(out_file) as data:
                results[name] = {"doc": doc, "outputs": {k: data[k] for k in data.files}}
    assert sorted(results) == sorted(cases), done.stderr[-4000:]
    return results


def package_feeds(package: Path, recorded: dict) -> dict:
    """The SavedModel's inputs, by signature name, from a training run's recorded sample
    (``in:<input>``, sparse inputs as ``in:<input>:indices|values|dense_shape``)."""
    manifest = json.loads((package / "manifest.json").read_text())
    feeds = {}
    signature = [t["name"] for t in manifest["inference"]["saved_model"]["inputs"]]
    for spec in manifest["inputs"]:
        name = spec["name"]
        if spec["format"] == "sparse":
            parts = spec.get("components") or {
                p: f"{name}_{p}" for p in ("indices", "values", "dense_shape")
            }
            for part, tensor in parts.items():
                feeds[tensor] = recorded[f"in:{name}:{part}"]
        else:
            feeds[name] = recorded[f"in:{name}"]
    assert sorted(feeds) == sorted(signature)
    return feeds
