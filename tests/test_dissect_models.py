"""`hps dissect` on real trained models: tables equal the trained weights, the dense part
reproduces the model's predictions, ps.json and manifest.json are valid.

The models (helpers/dissect_train.py) are trained once per session in subprocesses: a Keras 3 and a
tf_keras DLRM-like functional model, the HPS notebook pattern (a subclassed model with a
tf.Variable table read by embedding_lookup_sparse), an IntegerLookup + Embedding model, and a
bare tf.train.Checkpoint. Each is dissected from every format it was saved in. The checks here
do not reuse dissect's own self-check: lookups are recomputed from the table files and the dense
SavedModel is called directly, against predictions recorded at training time.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers.dissect_models import expected, trained_models
from hps_cli.runtime.config import validate_config_file
from hps_cli.runtime.resources import load_schema
from hps_cli.runtime.table import TableReader

pytestmark = [pytest.mark.tf, pytest.mark.slow]

DLRM_INPUTS = {"user": ("user_emb", 1), "items": ("item_emb", 3)}
# id, flavour, path, --table specs, model (npz), dense part expected, input -> (table, ids/sample)
CASES = [
    ("keras3-dlrm.keras", "keras3", "dlrm.keras", (), "dlrm", "keras_functional", DLRM_INPUTS),
    ("keras3-dlrm-export", "keras3", "dlrm_export", (), "dlrm", "graph", DLRM_INPUTS),
    ("keras3-dlrm-checkpoint", "keras3", "dlrm_ckpt", (), "dlrm", None, {}),
    (
        "keras3-notebook-savedmodel",
        "keras3",
        "notebook_sm",
        (),
        "notebook",
        "graph",
        {"ids": ("params", 5)},
    ),
    ("keras3-notebook-checkpoint", "keras3", "notebook_ckpt", ("params",), "notebook", None, {}),
    (
        "keras3-lookup.keras",
        "keras3",
        "lookup.keras",
        (),
        "lookup",
        "keras_functional",
        {"raw_ids": ("id_emb", 2)},
    ),
    (
        "keras3-lookup-export",
        "keras3",
        "lookup_export",
        (),
        "lookup",
        "graph",
        {"raw_ids": ("id_emb", 2)},
    ),
    ("tf_keras-dlrm.h5", "tf_keras", "dlrm.h5", (), "dlrm", "keras_functional", DLRM_INPUTS),
    ("tf_keras-dlrm-savedmodel", "tf_keras", "dlrm_sm", (), "dlrm", "graph", DLRM_INPUTS),
    ("tf_keras-dlrm-save_weights", "tf_keras", "dlrm_weights", (), "dlrm", None, {}),
    (
        "tf_keras-notebook-savedmodel",
        "tf_keras",
        "notebook_sm",
        (),
        "notebook",
        "graph",
        {"ids": ("params", 5)},
    ),
    (
        "tf_keras-notebook-weights.h5",
        "tf_keras",
        "notebook_weights.h5",
        ("params",),
        "notebook",
        None,
        {},
    ),
    (
        "tf_keras-lookup.h5",
        "tf_keras",
        "lookup.h5",
        (),
        "lookup",
        "keras_functional",
        {"raw_ids": ("id_emb", 2)},
    ),
    (
        "tf_keras-lookup-savedmodel",
        "tf_keras",
        "lookup_sm",
        (),
        "lookup",
        "graph",
        {"raw_ids": ("id_emb", 2)},
    ),
    ("plain-checkpoint", "plain", "plain_ckpt", ("item_table=items",), "plain", None, {}),
]

CASE = {c[0]: c for c in CASES}


@pytest.fixture(scope="module")
def models() -> Path:
    return trained_models()


@pytest.fixture(scope="module")
def dissected(models, tmp_path_factory):
    """Dissect each case once (in this process) and keep the outputs for the tests below."""
    from hps_cli.dissect.pipeline import DissectOptions, dissect

    done = {}

    def run(case):
        if case[0] not in done:
            out = tmp_path_factory.mktemp("dissect") / "out"
            result = dissect(models / case[1] / case[2], out, DissectOptions(tables=case[3]))
            done[case[0]] = (out, result)
        return done[case[0]]

    return run


def _table(out: Path, manifest: dict, name: str) -> tuple[np.ndarray, np.ndarray]:
    entry = next(t for t in manifest["tables"] if t["name"] == name)
    with TableReader(out / entry["dir"]) as reader:
        return np.array(reader.keys()), np.array(reader.vectors())


def _vocabulary_rows(models: Path, flavour: str) -> dict[int, int]:
    ids, rows = np.load(models / flavour / "lookup_rows.npy")
    return {int(i): int(r) for i, r in zip(ids, rows)}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_tables_equal_the_trained_weights(case, models, dissected):
    out, result = dissected(case)
    manifest = result.manifest
    data = expected(models / case[1] / f"{case[4]}.npz")
    for table in manifest["tables"]:
        keys, vectors = _table(out, manifest, table["name"])
        weights = data[f"table:{table['variable']}"]
        assert table["dim"] == weights.shape[1] == vectors.shape[1]
        if table["keys"]["source"] == "row_index":
            assert np.array_equal(keys, np.arange(weights.shape[0]))
            assert np.array_equal(vectors, weights)  # bit for bit
        else:
            rows = _vocabulary_rows(models, case[1])
            assert sorted(keys.tolist()) == sorted(rows)  # every raw id, nothing else
            assert np.array_equal(vectors, weights[[rows[int(k)] for k in keys]])
            assert table["keys"]["unwritten_rows"] == weights.shape[0] - len(rows)
            assert table["keys"]["oov_rows"] == sorted(
                set(range(weights.shape[0])) - set(rows.values())
            )


def _lookup(out: Path, manifest: dict, table: str, ids: np.ndarray) -> np.ndarray:
    keys, vectors = _table(out, manifest, table)
    index = {int(k): i for i, k in enumerate(keys)}
    return vectors[[index[int(i)] for i in np.asarray(ids).reshape(-1)]].reshape(
        np.shape(ids) + (vectors.shape[1],)
    )


def _dense_feed(out: Path, manifest: dict, data: dict) -> dict:
    """The dense part's inputs for the recorded sample: lookups done on the table files."""
    feed = {}
    for spec in manifest["inputs"]:
        for lookup in spec.get("lookups", []):
            if spec["format"] == "sparse":
                indices, values = (
                    data[f"in:{spec['name']}:indices"],
                    data[f"in:{spec['name']}:values"],
                )
                batch = int(data[f"in:{spec['name']}:dense_shape"][0])
                vectors = _lookup(out, manifest, lookup["table"], values)
                rows = [vectors[indices[:, 0] == b] for b in range(batch)]
                assert lookup["combiner"] == "mean"
                value = np.stack([r.mean(axis=0) for r in rows]).astype(np.float32)
            else:
                assert lookup["combiner"] == "none"
                value = _lookup(out, manifest, lookup["table"], data[f"in:{spec['name']}"])
            feed[lookup["dense_input"]] = value
        if "dense_input" in spec:
            feed[spec["dense_input"]] = data[f"in:{spec['name']}"]
    return feed


@pytest.mark.parametrize("case", [c for c in CASES if c[5]], ids=[c[0] for c in CASES if c[5]])
def test_dense_part_reproduces_the_predictions(case, models, dissected):
    import tensorflow as tf

    out, result = dissected(case)
    manifest = result.manifest
    data = expected(models / case[1] / f"{case[4]}.npz")
    dense = manifest["dense"]
    assert dense["cut"] == case[5]
    loaded = tf.saved_model.load(str(out / dense["dir"]))
    serve = loaded.signatures["serving_default"]
    names = sorted(serve.structured_input_signature[1])
    assert names == sorted(i["name"] for i in dense["inputs"])  # explicit names, no keras_tensor_*
    assert not any("keras_tensor" in n for n in names)
    feed = _dense_feed(out, manifest, data)
    got = serve(**{k: tf.constant(v) for k, v in feed.items()})
    wanted = {k[len("out:") :]: v for k, v in data.items() if k.startswith("out:")}
    assert len(got) == len(wanted) == 1  # export() calls its output output_0, Keras the layer
    diff = np.max(np.abs(next(iter(got.values())).numpy() - next(iter(wanted.values()))))
    assert diff <= 1e-5
    check = manifest["self_check"]
    assert check["status"] == "passed" and check["mode"] == "model"
    assert check["max_abs_diff"] <= 1e-5 and check["tables_equal_model"] is True


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_manifest_and_ps_config_are_valid_and_complete(case, models, dissected):
    from jsonschema import Draft202012Validator

    out, result = dissected(case)
    manifest = json.loads((out / "manifest.json").read_text())
    Draft202012Validator(load_schema("manifest.schema.json")).validate(manifest)
    validation = validate_config_file(out / manifest["ps_config"])
    assert validation.ok, [i.one_line() for i in validation.issues]
    model = validation.config.models[0]
    assert model.model == manifest["model_name"]
    assert list(model.embedding_table_names) == [t["name"] for t in manifest["tables"]]
    assert list(model.embedding_vecsize_per_table) == [t["dim"] for t in manifest["tables"]]
    assert model.hit_rate_threshold == 1.0
    for table, path in zip(manifest["tables"], model.sparse_files):
        assert (out / path / "key").is_file() and path == table["dir"]
        assert table["checksum"] and table["ids_per_sample"] >= 1
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [t["dir"] for t in manifest["tables"]]
        + ["manifest.json", "ps.json"]
        + (["dense"] if case[5] else [])
    )
    inputs = {i["name"]: i for i in manifest["inputs"]}
    for name, (table, per_sample) in case[6].items():
        lookup = inputs[name]["lookups"][0]
        assert inputs[name]["role"] == "sparse_ids" and lookup["table"] == table
        assert lookup["ids_per_sample"] == per_sample
        index = [t["name"] for t in manifest["tables"]].index(table)
        assert model.maxnum_catfeature_query_per_table_per_sample[index] == per_sample
    if case[5] is None:
        assert manifest["dense"] is None and manifest["inputs"] == []
        assert manifest["self_check"]["mode"] == "tables"
        assert manifest["self_check"]["status"] == "passed"
    writer = {"keras3-notebook-savedmodel": "tensorflow", "plain-checkpoint": "unknown"}
    assert manifest["source"]["keras"] == writer.get(case[0], case[1])


def test_notebook_pattern_is_cut_after_the_combiner(models, dissected):
    out, result = dissected(CASE["keras3-notebook-savedmodel"])
    manifest = result.manifest
    ids = next(i for i in manifest["inputs"] if i["name"] == "ids")
    assert ids["format"] == "sparse"
    assert ids["components"] == {"indices": "ids", "values": "ids_1", "dense_shape": "ids_2"}
    assert ids["lookups"][0]["combiner"] == "mean"
    emb = next(i for i in manifest["dense"]["inputs"] if i["kind"] == "embedding")
    assert emb["shape"] == [None, 8]  # one combined vector per sample, like SparseLookupLayer
    assert next(i for i in manifest["inputs"] if i["name"] == "dense")["role"] == "dense"


def test_integer_lookup_keys_are_the_raw_ids_and_oov_is_documented(models, dissected):
    for case in (
        CASE["keras3-lookup.keras"],
        CASE["tf_keras-lookup.h5"],
        CASE["keras3-lookup-export"],
        CASE["tf_keras-lookup-savedmodel"],
    ):
        out, result = dissected(case)
        keys = result.manifest["tables"][0]["keys"]
        assert keys["source"] == "integer_lookup_vocabulary"
        assert keys["vocabulary_size"] == 10 and keys["oov_rows"] == [0]
        assert "default" in keys["oov_policy"]
        assert any("IntegerLookup" in n for n in result.manifest["notes"])


def test_dense_part_keeps_variables_for_keras_and_freezes_graph_cuts(models, dissected):
    assert dissected(CASE["keras3-dlrm.keras"])[1].manifest["dense"]["variables"] == "kept"
    assert dissected(CASE["keras3-dlrm-export"])[1].manifest["dense"]["variables"] == "frozen"


def test_table_choice_leaves_other_embeddings_inside_the_dense_part(models, tmp_path):
    """--table picks one table; the other Embedding stays in the dense part, fed its raw ids."""
    from hps_cli.dissect.pipeline import DissectOptions, dissect

    for path in (models / "keras3" / "dlrm.keras", models / "tf_keras" / "dlrm_sm"):
        out = tmp_path / path.name
        result = dissect(path, out, DissectOptions(tables=("item_emb/embeddings=items",)))
        manifest = result.manifest
        assert [t["name"] for t in manifest["tables"]] == ["items"]
        roles = {i["name"]: i["role"] for i in manifest["inputs"]}
        assert roles == {"user": "dense", "items": "sparse_ids", "dense": "dense"}
        assert manifest["self_check"]["status"] == "passed"
