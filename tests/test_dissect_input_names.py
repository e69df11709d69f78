"""Input names TensorFlow rewrites, and tf_keras `.keras` archives (no third-party library).

- SavedModels whose inputs are upper-case (``C1``: the graph's placeholder is ``c1``) or
  punctuated (``User-ID``: signature ``User_ID``, placeholder ``user_id``), written by Keras 3
  ``export``, tf_keras ``save``, ``tf.saved_model.save`` of a tf_keras model and of a plain
  ``tf.Module``: the graph cut traces the ids to the signature's own names.
- ``.keras`` files written by tf_keras: read as tf_keras (``metadata.json``), the weight groups
  named after their layers, loaded with tf_keras.

Each is dissected (self-check within 1e-5), a few are built into packages and loaded in fresh
processes with int32 and int64 ids. The models: helpers/named_inputs_train.py, trained once per
session (helpers/named_models.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.cli import run_hps
from helpers.named_models import trained

pytestmark = [pytest.mark.tf, pytest.mark.slow]

HELPERS = Path(__file__).resolve().parent / "helpers"
KERAS_INPUTS = {"C1": "sparse_ids", "C2": "sparse_ids", "I1": "dense"}
# case -> (flavour that trained it, file, its Keras as dissect must read it, inputs)
CASES = {
    "keras3-keras": ("keras3", "plain.keras", "keras3", KERAS_INPUTS),
    "keras3-export": ("keras3", "plain_export", "keras3", KERAS_INPUTS),
    "tf_keras-keras": ("tf_keras", "plain.keras", "tf_keras", KERAS_INPUTS),
    "tf_keras-h5": ("tf_keras", "plain.h5", "tf_keras", KERAS_INPUTS),
    "tf_keras-savedmodel": ("tf_keras", "plain_sm", "tf_keras", KERAS_INPUTS),
    "tf_keras-tf-savedmodel": ("tf_keras", "plain_tf_sm", "tensorflow", KERAS_INPUTS),
    "tf-module-punctuated": (
        "keras3",
        "module_sm",
        "tensorflow",
        {"User_ID": "sparse_ids", "item_ids": "sparse_ids", "Dense2": "dense"},
    ),
}
PACKAGED = ("keras3-export", "tf_keras-keras", "tf_keras-tf-savedmodel", "tf-module-punctuated")


@pytest.fixture(scope="module")
def dissected(tmp_path_factory):
    from hps_cli.dissect.pipeline import DissectOptions, dissect

    base = tmp_path_factory.mktemp("named-inputs")
    out = {}
    for case, (flavour, path, _, _) in CASES.items():
        out[case] = dissect(trained() / flavour / path, base / case, DissectOptions())
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_dissect_traces_the_inputs_by_their_own_names(case, dissected):
    result = dissected[case]
    manifest = result.manifest
    _, _, keras, inputs = CASES[case]
    assert manifest["source"]["keras"] == keras
    assert {i["name"]: i["role"] for i in manifest["inputs"]} == inputs
    assert manifest["self_check"]["status"] == "passed"
    assert manifest["self_check"]["max_abs_diff"] <= 1e-5
    assert result.warnings == []
    if case != "tf-module-punctuated":  # tables named after their Embedding layers
        assert [t["name"] for t in manifest["tables"]] == ["emb_C1", "emb_C2"]
    dense_inputs = {d["name"] for d in manifest["dense"]["inputs"]}
    direct = [i for i in manifest["inputs"] if i["role"] == "dense"]
    assert all(i["dense_input"] in dense_inputs for i in direct)


def test_list_names_the_keras_that_wrote_a_tf_keras_archive():
    res = run_hps("dissect", "--list", str(trained() / "tf_keras" / "plain.keras"))
    assert res.returncode == 0, res.stderr
    first = res.stdout.splitlines()[0]
    assert "keras, written by tf_keras 2." in first
    res = run_hps("--json", "dissect", "--list", str(trained() / "tf_keras" / "plain.keras"))
    doc = json.loads(res.stdout)
    assert doc["source"]["keras"] == "tf_keras"
    # the layers' own names, not tf_keras's group names (embedding, embedding_1, dense, ...)
    assert [v["name"] for v in doc["variables"] if v["kind"] == "model"] == [
        "hidden/kernel",
        "hidden/bias",
        "score/kernel",
        "score/bias",
        "emb_C1/embeddings",
        "emb_C2/embeddings",
    ]


def test_archive_flavour_rules():
    from hps_cli.dissect.keras_files import archive_flavour, flavour_of_version

    assert flavour_of_version("2.21.0") == "tf_keras"
    assert flavour_of_version("3.0.0") == "keras3"
    assert flavour_of_version(None) is None and flavour_of_version("dev") is None
    assert archive_flavour({"keras_version": "2.15.0"}, {"module": "keras.src.x"}) == "tf_keras"
    assert archive_flavour({}, {"module": "tf_keras.src.engine.functional"}) == "tf_keras"
    assert archive_flavour({}, {"module": "keras.src.models.functional"}) == "keras3"


def test_tf_keras_weight_groups_map_to_layers_by_class_and_order():
    from hps_cli.dissect.keras_files import tf_keras_layer_paths

    config = {
        "class_name": "Functional",
        "config": {
            "layers": [
                {"class_name": "InputLayer", "config": {"name": "C1"}},
                {"class_name": "Embedding", "config": {"name": "emb_C1"}},
                {"class_name": "Embedding", "config": {"name": "emb_C2"}},
                {"class_name": "_Add", "config": {"name": "add"}},
                {"class_name": "CrossNet", "config": {"name": "cross"}},
                {"class_name": "Custom>CIN", "config": {"name": "cin"}},
            ]
        },
    }
    assert tf_keras_layer_paths(config) == {
        "layers/input_layer": ("C1", "InputLayer"),
        "layers/embedding": ("emb_C1", "Embedding"),
        "layers/embedding_1": ("emb_C2", "Embedding"),
        "layers/private__add": ("add", "_Add"),
        "layers/cross_net": ("cross", "CrossNet"),
        "layers/cin": ("cin", "CIN"),
    }


def test_packages_load_in_fresh_processes_with_int32_and_int64_ids(dissected, tmp_path):
    from hps_cli.build_graph import BuildOptions, build_graph

    args = {"keras3": [], "tf_keras": []}
    for case in PACKAGED:
        flavour = CASES[case][0]
        package = tmp_path / case
        result = build_graph(dissected[case].out_dir, package, BuildOptions())
        npz = trained() / flavour / ("module_sm.npz" if "module" in case else "plain.npz")
        args[result.manifest["inference"]["keras"]].append(f"{package}={npz}")
    procs = [
        subprocess.Popen(
            [sys.executable, str(HELPERS / "build_graph_load.py"), *items],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "TF_USE_LEGACY_KERAS": "1" if keras == "tf_keras" else "0"},
        )
        for keras, items in args.items()
        if items
    ]
    docs = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        docs += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert len(docs) == len(PACKAGED)
    for doc in docs:
        assert doc["shapes_equal"], doc
        assert doc["max_abs_diff"] <= 1e-5 and doc["max_abs_diff_other_ids"] <= 1e-5, doc
