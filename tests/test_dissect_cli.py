"""`hps dissect` as users run it: --list shows real names, bad input fails cleanly.

Every failure must be one `error: <location>: <message>` line plus a hint, with the documented
exit code, and leave neither OUT_DIR nor a hidden temporary folder behind.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers.dissect_models import trained_models
from hps_cli.runtime.errors import ExitCode

pytestmark = pytest.mark.tf

SYNTHETIC_NAME = re.compile(
    r"(^|/)(_operations|_all_variables|variables|layer_with_weights-\d+|"
    r"_variables|_trainable_variables)(/|$)"
)
# path, real names that must be listed, names that must be table candidates
LISTINGS = [
    (
        "keras3/dlrm.keras",
        {"user_emb/embeddings", "item_emb/embeddings", "fc1/kernel", "ctr/bias"},
        {"user_emb/embeddings", "item_emb/embeddings"},
    ),
    (
        "keras3/dlrm_export",
        {"user_emb/embeddings", "item_emb/embeddings", "bottom/kernel"},
        {"user_emb/embeddings", "item_emb/embeddings"},
    ),
    (
        "keras3/dlrm_ckpt",
        {"user_emb/embeddings", "item_emb/embeddings", "fc1/kernel"},
        {"user_emb/embeddings", "item_emb/embeddings"},
    ),
    ("keras3/notebook_sm", {"params", "notebook_dnn/fc_1/kernel"}, {"params"}),
    ("keras3/notebook_ckpt", {"params", "notebook_dnn/fc_1/kernel"}, set()),
    ("keras3/lookup.keras", {"id_emb/embeddings", "score/kernel"}, {"id_emb/embeddings"}),
    (
        "tf_keras/dlrm.h5",
        {"user_emb/embeddings", "item_emb/embeddings", "fc1/kernel"},
        {"user_emb/embeddings", "item_emb/embeddings"},
    ),
    (
        "tf_keras/dlrm_sm",
        {"user_emb/embeddings", "item_emb/embeddings", "fc1/bias"},
        {"user_emb/embeddings", "item_emb/embeddings"},
    ),
    (
        "tf_keras/dlrm_weights",
        {"user_emb/embeddings", "item_emb/embeddings", "fc1/kernel"},
        {"user_emb/embeddings", "item_emb/embeddings"},
    ),
    ("tf_keras/notebook_sm", {"params", "notebook_dnn/fc_1/kernel"}, {"params"}),
    ("tf_keras/notebook_weights.h5", {"params", "notebook_dnn/fc_2/kernel"}, set()),
    ("tf_keras/lookup_sm", {"id_emb/embeddings", "score/kernel"}, {"id_emb/embeddings"}),
    ("plain/plain_ckpt", {"item_table", "head_kernel", "head_bias"}, set()),
]


@pytest.fixture(scope="module")
def models() -> Path:
    return trained_models()


def assert_clean_failure(res, code: int, out_dir: Path, *fragments: str) -> None:
    assert res.returncode == code, (res.returncode, res.stderr[-2000:])
    assert "Traceback" not in res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, res.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    assert not out_dir.exists()
    if out_dir.parent.exists():
        assert not [p for p in out_dir.parent.iterdir() if ".hps-" in p.name]


@pytest.mark.parametrize("path,names,tables", LISTINGS, ids=[x[0] for x in LISTINGS])
def test_list_shows_real_variable_names(path, names, tables, models, hps):
    res = hps("dissect", str(models / path), "--list", "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    listed = {v["name"]: v for v in doc["variables"]}
    assert names <= set(listed)
    model_vars = [v for v in doc["variables"] if v["kind"] == "model"]
    assert not [v["name"] for v in model_vars if SYNTHETIC_NAME.search(v["name"])]
    assert {v["name"] for v in doc["variables"] if v["embedding_candidate"]} == tables
    assert all(not v["embedding_candidate"] for v in doc["variables"] if v["kind"] != "model")
    for name in names:
        assert listed[name]["shape"] and listed[name]["dtype"] == "float32"


def test_list_as_text_and_optimizer_slots_are_skipped(models, hps):
    res = hps("dissect", str(models / "keras3" / "dlrm_ckpt"), "--list")
    assert res.returncode == 0, res.stderr
    assert "user_emb/embeddings" in res.stdout and "100x8" in res.stdout
    assert "Keras Embedding" in res.stdout or "Embedding weight" in res.stdout
    assert "momentum" not in res.stdout and "optimizer variable(s)" in res.stdout
    doc = json.loads(
        hps("dissect", str(models / "keras3" / "dlrm_ckpt"), "--list", "--json").stdout
    )
    slots = [v for v in doc["variables"] if v["kind"] == "optimizer"]
    assert any("user_emb_embeddings_momentum" in v["name"] for v in slots)


def test_list_and_no_dense_explain_integer_lookup_keys(models, tmp_path, hps):
    for path in ("keras3/lookup.keras", "tf_keras/lookup.h5", "tf_keras/lookup_sm"):
        res = hps("dissect", str(models / path), "--list")
        assert res.returncode == 0, res.stderr
        text = " ".join(res.stdout.split())
        assert "IntegerLookup 'id_lookup'" in text and "default value in HPS" in text
    out = tmp_path / "out"
    res = hps("dissect", str(models / "keras3" / "lookup.keras"), str(out), "--no-dense")
    assert res.returncode == 0, res.stderr
    assert "keys are row indices, but the model maps raw ids" in " ".join(res.stderr.split())
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dense"] is None and manifest["tables"][0]["keys"]["source"] == "row_index"


def test_dissect_json_and_overwrite(models, tmp_path, hps):
    out = tmp_path / "out"
    res = hps(
        "dissect",
        str(models / "tf_keras" / "lookup.h5"),
        str(out),
        "--json",
        "--model-name",
        "ranker",
    )
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["ok"] and doc["manifest"]["model_name"] == "ranker"
    assert json.loads((out / "ps.json").read_text())["models"][0]["model"] == "ranker"
    marker = out / "manifest.json"
    before = marker.read_text()
    res = hps("dissect", str(models / "keras3" / "lookup.keras"), str(out))
    assert_exists = out.exists() and marker.read_text() == before
    assert res.returncode == ExitCode.CONFLICT and assert_exists
    res = hps("dissect", str(models / "keras3" / "lookup.keras"), str(out), "--overwrite")
    assert res.returncode == 0, res.stderr
    assert json.loads(marker.read_text())["source"]["format"] == "keras"
    assert hps("validate-config", str(out / "ps.json")).returncode == 0


def test_not_a_model(tmp_path, hps):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    empty = tmp_path / "empty"
    empty.mkdir()
    archive = tmp_path / "model.keras"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("readme.txt", "no config here")
    import h5py

    with h5py.File(tmp_path / "data.h5", "w") as h5:
        h5["x"] = np.zeros((3, 3))
    for bad, words in (
        (text, "not a model"),
        (empty, "not a model"),
        (archive, "not a Keras archive"),
        (tmp_path / "data.h5", "not one Keras wrote"),
    ):
        out = tmp_path / "out"
        res = hps("dissect", str(bad), str(out))
        assert_clean_failure(res, ExitCode.INVALID, out, str(bad), words)


def test_checkpoint_without_rank2_variable(models, tmp_path, hps):
    out = tmp_path / "out"
    res = hps("dissect", str(models / "plain" / "norank2_ckpt"), str(out))
    assert_clean_failure(res, ExitCode.INVALID, out, "no rank-2 variable")


def test_no_table_detected_points_to_table_option(models, tmp_path, hps):
    out = tmp_path / "out"
    res = hps("dissect", str(models / "plain" / "plain_ckpt"), str(out))
    assert_clean_failure(res, ExitCode.INVALID, out, "no embedding table detected", "item_table")
    assert "--table" in res.stderr


def test_table_naming_a_missing_or_unsuitable_variable(models, tmp_path, hps):
    path = str(models / "keras3" / "dlrm_ckpt")
    out = tmp_path / "out"
    res = hps("dissect", path, str(out), "--table", "no/such/var")
    assert_clean_failure(res, ExitCode.INVALID, out, "no variable named 'no/such/var'")
    res = hps("dissect", path, str(out), "--table", "adam/user_emb_embeddings_momentum")
    assert_clean_failure(res, ExitCode.INVALID, out, "optimizer state")
    res = hps("dissect", path, str(out), "--table", "fc1/bias")
    assert_clean_failure(res, ExitCode.INVALID, out, "not [rows, dim]")
    res = hps("dissect", path, str(out), "--table", "user_emb/embeddings=bad name")
    assert_clean_failure(res, ExitCode.INVALID, out, "not valid in HPS configs")


def test_unreadable_paths(models, tmp_path, hps):
    out = tmp_path / "out"
    res = hps("dissect", str(tmp_path / "missing" / "model.keras"), str(out))
    assert_clean_failure(res, ExitCode.INVALID, out, "no such file or folder")
    # A checkpoint whose data file is a folder: the index reads, the tensor bytes do not.
    ckpt = tmp_path / "ckpt"
    shutil.copytree(models / "plain" / "plain_ckpt", ckpt)
    data = next(ckpt.glob("ckpt.data-*"))
    data.unlink()
    data.mkdir()
    res = hps("dissect", str(ckpt), str(out), "--table", "item_table")
    assert_clean_failure(res, ExitCode.INVALID, out, str(data), "not a regular file")
    if os.geteuid() != 0:  # root reads everything: permission bits cannot be tested as root
        locked = tmp_path / "locked.keras"
        shutil.copy(models / "keras3" / "dlrm.keras", locked)
        locked.chmod(0)
        res = hps("dissect", str(locked), str(out))
        assert_clean_failure(res, ExitCode.INVALID, out, "cannot read")


def test_truncated_checkpoint_fails_mid_write_and_leaves_nothing(models, tmp_path, hps):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(models / "plain" / "plain_ckpt", ckpt)
    data = next(ckpt.glob("ckpt.data-*"))
    data.write_bytes(data.read_bytes()[:4000])
    out = tmp_path / "deep" / "out"
    res = hps("dissect", str(ckpt), str(out), "--table", "item_table", "--no-check")
    assert_clean_failure(res, ExitCode.INVALID, out, "truncated")
    assert not (tmp_path / "deep").exists()  # parents it created are removed too


def test_failed_self_check_exits_7_and_leaves_nothing(tmp_path, hps):
    """A model whose outputs are random cannot be reproduced: the check must catch it."""
    import tensorflow as tf

    class Noisy(tf.Module):
        def __init__(self):
            super().__init__()
            self.table = tf.Variable(
                np.random.default_rng(0).normal(size=(50, 4)).astype("float32"),
                name="emb/embeddings",
            )
            self.head = tf.Variable(np.ones((4, 1), "float32"), name="head")

        @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.int64, name="ids")])
        def serve(self, ids):
            x = tf.reduce_sum(tf.gather(self.table, ids), axis=1)
            noise = tf.random.uniform([tf.shape(ids)[0], 1])
            return {"y": tf.matmul(x, self.head) + noise}

    model = Noisy()
    tf.saved_model.save(model, str(tmp_path / "noisy"), signatures={"serving_default": model.serve})
    out = tmp_path / "out"
    res = hps("dissect", str(tmp_path / "noisy"), str(out))
    assert_clean_failure(res, ExitCode.CHECK_FAILED, out, "self-check failed", "1e-05")
    res = hps("dissect", str(tmp_path / "noisy"), str(out), "--no-check")
    assert res.returncode == 0, res.stderr
    assert json.loads((out / "manifest.json").read_text())["self_check"]["status"] == "skipped"


def _without_tensorflow(tmp_path: Path) -> dict:
    """An environment where `import tensorflow` fails, as when the `tf` extra is missing."""
    shadow = tmp_path / "shadow" / "tensorflow"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named tensorflow')\n")
    return {"PYTHONPATH": str(shadow.parent)}


def test_missing_tensorflow(models, tmp_path, hps):
    env = _without_tensorflow(tmp_path)
    out = tmp_path / "out"
    res = hps("dissect", str(models / "keras3" / "dlrm_export"), str(out), env=env)
    assert_clean_failure(res, ExitCode.DEPENDENCY, out, "tensorflow")
    assert "pip install 'hps-cli[tf]'" in res.stderr
    # Tables straight from a checkpoint need no TensorFlow at all.
    res = hps(
        "dissect",
        str(models / "plain" / "plain_ckpt"),
        str(out),
        "--table",
        "item_table",
        "--no-check",
        env=env,
    )
    assert res.returncode == 0, res.stderr
    expected = np.load(models / "plain" / "plain.npz")["table:item_table"]
    vectors = np.fromfile(out / "item_table" / "emb_vector", dtype="<f4").reshape(expected.shape)
    assert np.array_equal(vectors, expected)
    res = hps("dissect", str(models / "keras3" / "dlrm_ckpt"), "--list", env=env)
    assert res.returncode == 0 and "user_emb/embeddings" in res.stdout
