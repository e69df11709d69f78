"""Models of a third-party recommender library (DeepCTR, from PyPI) end to end.

WDL, DCN and xDeepFM (custom layers Concat, DNN, Linear, CrossNet, CIN, ...; 52 Embedding
tables each; upper-case input names C1..C26, I1..I13; int32 ids) are trained briefly on
synthetic data under tf_keras and saved as a SavedModel, an .h5 and a .keras file. Each of
the nine goes through `hps dissect` (the Keras files with `--custom-objects
deepctr.layers:custom_objects`, the SavedModels without any code) -> `hps build-graph` ->
`hps_cli.tf.load_model` in a fresh process (int32 and int64 ids) -> one `hps serve` for all
(INT32 and INT64 ids), each prediction within 1e-5 of the trained model's.

Everything that imports DeepCTR runs in a subprocess with ``deepctr_offline`` imported first
(helpers/deepctr_offline.py: DeepCTR's import asks PyPI for its version otherwise).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from helpers.cli import run_hps

from hps_cli.devtools.serve_process import ServeProcess

pytestmark = [
    pytest.mark.tf,
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("deepctr") is None,
        reason="needs deepctr (the dev extra) and tf_keras",
    ),
]

HELPERS = Path(__file__).resolve().parent / "helpers"
MODELS = ("WDL", "DCN", "xDeepFM")
FORMATS = {"saved_model": "saved_model", "h5": "model.h5", "keras": "model.keras"}
CASES = [(m, f) for m in MODELS for f in FORMATS]
IDS = [f"{m}-{f}" for m, f in CASES]
# Repeatable: the first only keeps DeepCTR's import off PyPI, the second is what users pass.
CUSTOM = [
    "--custom-objects",
    "deepctr_offline",
    "--custom-objects",
    "deepctr.layers:custom_objects",
]
PARALLEL = 2  # processes at once, one per core: TensorFlow in each


def _env(**extra) -> dict:
    path = os.pathsep.join(p for p in (str(HELPERS), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "TF_CPP_MIN_LOG_LEVEL": "3", **extra}


def _hps(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hps_cli", *args],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _json(res: subprocess.CompletedProcess) -> dict:
    """The --json document: all of stdout (what DeepCTR prints goes to stderr)."""
    return json.loads(res.stdout)


def _in_parallel(jobs: dict) -> dict:
    with ThreadPoolExecutor(PARALLEL) as pool:
        futures = {key: pool.submit(job) for key, job in jobs.items()}
        return {key: future.result() for key, future in futures.items()}


def _served(server: ServeProcess, name: str, sample: dict, dtype) -> np.ndarray:
    import tritonclient.http as thttp

    client = thttp.InferenceServerClient(url=server.http_url)
    metadata = client.get_model_metadata(name)
    inputs = []
    for spec in metadata["inputs"]:
        value = sample[f"in:{spec['name']}"]
        ids = value.dtype.kind == "i"
        value = value.astype(dtype) if ids else value
        tensor = thttp.InferInput(
            spec["name"],
            list(value.shape),
            ("INT64" if dtype == np.int64 else "INT32") if ids else spec["datatype"],
        )
        tensor.set_data_from_numpy(value)
        inputs.append(tensor)
    result = client.infer(name, inputs)
    return result.as_numpy(metadata["outputs"][0]["name"])


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    base = tmp_path_factory.mktemp("deepctr")
    models = base / "models"
    trained = subprocess.run(
        [sys.executable, str(HELPERS / "deepctr_train.py"), str(models), *MODELS],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert trained.returncode == 0 and (models / "DONE").is_file(), trained.stderr[-4000:]

    def dissect(model: str, fmt: str):
        code = [] if fmt == "saved_model" else CUSTOM  # a SavedModel needs no code
        out = base / "dissected" / f"{model}-{fmt}"
        return _hps("--json", "dissect", str(models / model / FORMATS[fmt]), str(out), *code)

    dissected = _in_parallel({case: (lambda c=case: dissect(*c)) for case in CASES})
    repo = base / "repo"

    # One process builds every package (build-graph's command line is tested elsewhere); it
    # imports the code each dissect output records, deepctr_offline first.
    pairs = {
        case: (base / "dissected" / f"{case[0]}-{case[1]}", repo / f"{case[0]}_{case[1]}")
        for case in CASES
    }
    builder = subprocess.run(
        [sys.executable, str(HELPERS / "build_packages.py")]
        + [f"{src}={dst}" for case, (src, dst) in pairs.items() if not dissected[case].returncode],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    built = {
        doc["out_dir"]: doc
        for doc in (json.loads(line) for line in builder.stdout.splitlines() if line[:1] == "{")
    }
    packages = {case: dst for case, (_, dst) in pairs.items() if built.get(str(dst), {}).get("ok")}
    npz = {case: models / case[0] / "sample.npz" for case in CASES}
    # A fresh process that never saw DeepCTR's models, tf_keras as the packages were built.
    loader = subprocess.run(
        [
            sys.executable,
            str(HELPERS / "build_graph_load.py"),
            *(f"{packages[case]}={npz[case]}" for case in packages),
        ],
        env=_env(TF_USE_LEGACY_KERAS="1"),
        capture_output=True,
        text=True,
        timeout=900,
    )
    loaded = {
        doc["package"]: doc
        for doc in (json.loads(line) for line in loader.stdout.splitlines() if line[:1] == "{")
    }
    served, refused = {}, None
    if packages:
        first = next(iter(packages.values()))
        with ServeProcess(
            first / "ps.json",
            model_repository=repo,
            extra_args=["--custom-objects", "deepctr_offline"],
            env=_env(),
            ready_timeout=600,
        ) as server:
            for case, package in packages.items():
                with np.load(npz[case]) as data:
                    sample = {k: data[k] for k in data.files}
                want = next(v for k, v in sample.items() if k.startswith("out:"))
                served[case] = {
                    dtype.__name__: float(
                        np.max(np.abs(_served(server, package.name, sample, dtype) - want))
                    )
                    for dtype in (np.int32, np.int64)
                }
            refused = _refusal(server, packages[CASES[0]].name)
            warnings = [  # the one start-up warning of a machine without a GPU is expected
                e
                for e in server.log_events()
                if e.get("level") == "warning"
                and not str(e.get("message", "")).startswith("no usable GPU")
            ]
    return {
        "base": base,
        "models": models,
        "dissected": dissected,
        "built": built,
        "builder": builder,
        "pairs": pairs,
        "loaded": loaded,
        "loader": loader,
        "packages": packages,
        "served": served,
        "refused": refused,
        "serve_warnings": warnings if packages else None,
    }


def _refusal(server: ServeProcess, name: str) -> tuple[int, str]:
    """Float ids: the 400 says which id types are taken."""
    from helpers.serve_client import http_post

    body = {
        "inputs": [
            {"name": f"C{i}", "datatype": "FP32", "shape": [1, 1], "data": [1.0]}
            for i in range(1, 27)
        ]
        + [
            {"name": f"I{i}", "datatype": "FP32", "shape": [1, 1], "data": [0.5]}
            for i in range(1, 14)
        ]
    }
    status, _, text = http_post(
        server.http_url, f"/v2/models/{name}/infer", json.dumps(body).encode()
    )
    return status, json.loads(text)["error"]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_dissect_cuts_the_model_and_checks_itself(case, pipeline):
    res = pipeline["dissected"][case]
    assert res.returncode == 0, res.stderr[-3000:]
    doc = _json(res)
    manifest = doc["manifest"]
    assert doc["warnings"] == []  # ids per sample are known from the loaded model
    assert manifest["self_check"]["status"] == "passed"
    assert manifest["self_check"]["max_abs_diff"] <= 1e-5
    assert len(manifest["tables"]) == 52
    assert {t["name"] for t in manifest["tables"]} >= {"sparse_emb_C1", "linear0sparse_emb_C26"}
    roles = {i["name"]: i["role"] for i in manifest["inputs"]}  # names as the model has them
    assert roles == {
        **{f"C{i}": "sparse_ids" for i in range(1, 27)},
        **{f"I{i}": "dense" for i in range(1, 14)},
    }
    # the file says which Keras wrote it (the .keras archive is tf_keras's, not Keras 3's)
    assert manifest["source"]["keras"] == "tf_keras"
    assert manifest["source"]["keras_version"].startswith("2.")
    if case[1] == "saved_model":
        assert "custom_objects" not in manifest
    else:
        assert manifest["custom_objects"] == ["deepctr_offline", "deepctr.layers:custom_objects"]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_build_graph_records_the_code_and_picks_tf_keras(case, pipeline):
    doc = pipeline["built"].get(str(pipeline["pairs"][case][1]))
    assert doc is not None and doc["ok"], doc or pipeline["builder"].stderr[-3000:]
    assert doc["warnings"] == []
    manifest = json.loads((pipeline["packages"][case] / "manifest.json").read_text())
    assert manifest["inference"]["keras"] == "tf_keras"
    dtypes = {i["name"]: i["dtype"] for i in manifest["inference"]["inputs"]}
    assert {dtypes[f"C{i}"] for i in range(1, 27)} == {"int64"}  # int32 ids are taken too
    if case[1] != "saved_model":
        assert manifest["custom_objects"] == ["deepctr_offline", "deepctr.layers:custom_objects"]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_package_predicts_like_the_trained_model_in_a_fresh_process(case, pipeline):
    result = pipeline["loaded"].get(str(pipeline["packages"].get(case)))
    assert result is not None, pipeline["loader"].stderr[-3000:]
    assert result["keras"] == "tf_keras" and result["shapes_equal"]
    assert result["max_abs_diff"] <= 1e-5  # int32 ids, as trained
    assert result["max_abs_diff_other_ids"] <= 1e-5  # int64 ids


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_served_predictions_equal_the_trained_model(case, pipeline):
    assert pipeline["served"][case] == pytest.approx({"int32": 0, "int64": 0}, abs=1e-5)


def test_serve_takes_int32_and_int64_ids_and_says_so(pipeline):
    status, error = pipeline["refused"]
    assert status == 400
    assert "C1" in error and "INT32 or INT64" in error and "FP32" in error
    assert pipeline["serve_warnings"] == []  # every recorded module imported


def test_without_the_code_the_error_names_the_classes_and_the_option(pipeline):
    model = pipeline["models"] / "DCN" / "model.h5"
    res = run_hps("dissect", str(model), str(pipeline["base"] / "no-code"), timeout=600)
    assert res.returncode == 3, res.stderr
    text = " ".join(res.stderr.split())
    assert "Unknown layer" in text and "CrossNet" in text and "Concat" in text
    assert "--custom-objects MODULE[:ATTR]" in text and "deepctr.layers:custom_objects" in text
    assert not (pipeline["base"] / "no-code").exists()


def test_tables_only_warns_once_and_build_graph_says_what_to_do(pipeline):
    model = pipeline["models"] / "WDL" / "model.h5"
    out = pipeline["base"] / "tables-only"
    res = run_hps("dissect", "--no-dense", str(model), str(out), timeout=600)
    assert res.returncode == 0, res.stderr
    warnings = [line for line in res.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "52 tables" in warnings[0], res.stderr
    assert "ids per sample unknown" in warnings[0]
    notes = json.loads((out / "manifest.json").read_text())["notes"]
    assert sum("ids per sample unknown" in n for n in notes) == 52  # the details stay there
    res = run_hps("build-graph", str(out), str(pipeline["base"] / "tables-only-pkg"))
    assert res.returncode == 3
    hint = " ".join(res.stderr.split())
    assert "--no-dense" in hint and "--custom-objects" in hint and str(model) in hint
    assert "not a checkpoint" not in hint
