"""`hps build-graph`: every dissect test model → dissect → build-graph → moved elsewhere → loaded
in a fresh process with hps_cli.tf.load_model → predictions equal the trained model's (recorded
at training time) within 1e-5, under Keras 3 and tf_keras; the same for each package's
deployable SavedModel run by TensorFlow alone in a process that cannot import hps_cli; the
package layout and manifest, the TF Serving and Triton layouts; a spec-built package; bad inputs
(exit codes, nothing left behind).

The models are the session-trained ones of the dissect tests (helpers/dissect_models.py).
Packages are loaded by helpers/build_graph_load.py: one fresh process per Keras flavour
(tf_keras with TF_USE_LEGACY_KERAS=1), both running at once; the SavedModels by
helpers/saved_model_load.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers.cli import run_hps
from helpers.dissect_models import expected, trained_models
from helpers.saved_model_helpers import package_feeds, run_fresh

pytestmark = [pytest.mark.tf, pytest.mark.slow]

LOADER = Path(__file__).resolve().parent / "helpers" / "build_graph_load.py"
# id, flavour of the trained model, saved file, npz of the recorded samples, --keras
CASES = [
    ("keras3-dlrm.keras", "keras3", "dlrm.keras", "dlrm", "auto"),
    ("keras3-dlrm-export", "keras3", "dlrm_export", "dlrm", "auto"),
    ("keras3-notebook-savedmodel", "keras3", "notebook_sm", "notebook", "auto"),
    ("keras3-lookup.keras", "keras3", "lookup.keras", "lookup", "auto"),
    ("keras3-lookup-export", "keras3", "lookup_export", "lookup", "auto"),
    ("tf_keras-dlrm.h5", "tf_keras", "dlrm.h5", "dlrm", "auto"),
    ("tf_keras-dlrm-savedmodel", "tf_keras", "dlrm_sm", "dlrm", "auto"),
    ("tf_keras-notebook-savedmodel", "tf_keras", "notebook_sm", "notebook", "auto"),
    ("tf_keras-lookup.h5", "tf_keras", "lookup.h5", "lookup", "auto"),
    ("tf_keras-lookup-savedmodel", "tf_keras", "lookup_sm", "lookup", "auto"),
    # the other Keras than the one that trained the model
    ("keras3-dlrm.keras-as-tf_keras", "keras3", "dlrm.keras", "dlrm", "tf_keras"),
    ("tf_keras-notebook-savedmodel-as-keras3", "tf_keras", "notebook_sm", "notebook", "keras3"),
]
IDS = [c[0] for c in CASES]
SPEC = "spec-notebook"  # built from the keras3 notebook dissect's dense part with a spec


def _spec(dissected: Path) -> dict:
    return {
        "dense": str(dissected / "dense"),
        "ps_config": str(dissected / "ps.json"),
        "inputs": [
            {
                "name": "ids",
                "format": "sparse",
                "lookups": [{"table": 0, "combiner": "mean", "dense_input": "emb_ids"}],
            },
            {"name": "dense", "dense_input": "dense"},
        ],
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Dissect and build every case, move each package, load them all in fresh processes."""
    from hps_cli.build_graph import BuildOptions, build_graph
    from hps_cli.dissect.pipeline import DissectOptions, dissect

    models = trained_models()
    base = tmp_path_factory.mktemp("build_graph")
    dissected, packages, npz = {}, {}, {}
    for case_id, flavour, path, model, keras in CASES:
        source = base / "dissect" / f"{flavour}-{path}"
        if not source.exists():  # the cross-flavour cases reuse a dissect output
            dissect(models / flavour / path, source, DissectOptions(check=False))
        dissected[case_id] = source
        built_at = base / "built" / case_id
        build_graph(source, built_at, BuildOptions(keras=keras))
        packages[case_id] = base / "moved" / case_id  # relocatable: nothing points back
        packages[case_id].parent.mkdir(exist_ok=True)
        shutil.move(str(built_at), packages[case_id])
        npz[case_id] = models / flavour / f"{model}.npz"
    spec_file = base / "spec.json"
    spec_file.write_text(json.dumps(_spec(dissected["keras3-notebook-savedmodel"])))
    packages[SPEC] = base / "moved" / SPEC
    build_graph(spec_file, packages[SPEC])
    npz[SPEC] = models / "keras3" / "notebook.npz"
    groups: dict[str, list[str]] = {}
    for case_id, package in packages.items():
        keras = json.loads((package / "manifest.json").read_text())["inference"]["keras"]
        groups.setdefault(keras, []).append(f"{package}={npz[case_id]}")
    procs = {}
    for keras, args in groups.items():
        env = {**os.environ, "TF_USE_LEGACY_KERAS": "1" if keras == "tf_keras" else "0"}
        procs[keras] = subprocess.Popen(
            [sys.executable, str(LOADER), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=base,
        )
    fresh = run_fresh(
        {
            case: (package / "saved_model" / "1", package_feeds(package, expected(npz[case])))
            for case, package in packages.items()
        },
        base / "fresh",
    )
    loaded = {}
    for proc in procs.values():
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-4000:]
        for line in out.splitlines():
            if line.startswith("{"):
                doc = json.loads(line)
                loaded[doc["package"]] = doc
    return {
        "dissected": dissected,
        "packages": packages,
        "loaded": loaded,
        "fresh": fresh,
        "npz": npz,
        "base": base,
        "spec_file": spec_file,
    }


@pytest.mark.parametrize("case", IDS + [SPEC])
def test_loaded_package_predicts_like_the_trained_model(case, built):
    result = built["loaded"][str(built["packages"][case])]
    manifest = json.loads((built["packages"][case] / "manifest.json").read_text())
    assert result["keras"] == (
        "tf_keras" if manifest["inference"]["keras"] == "tf_keras" else "keras"
    )
    assert result["shapes_equal"]
    assert result["max_abs_diff"] <= 1e-5
    assert result["max_abs_diff_other_ids"] <= 1e-5  # int32 and int64 ids alike
    lookups = [la["class"].split(">")[1] for la in manifest["inference"]["layers"]]
    assert result["layers"] == sorted(lookups + ["DenseSavedModel"])


@pytest.mark.parametrize("case", IDS + [SPEC])
def test_saved_model_without_hps_predicts_like_the_trained_model(case, built):
    """The deployable SavedModel, run by TensorFlow alone (hps_cli blocked from import)."""
    result = built["fresh"][case]
    assert result["doc"]["hps_modules"] == []
    wanted = [v for k, v in expected(built["npz"][case]).items() if k.startswith("out:")]
    got = list(result["outputs"].values())
    assert len(got) == len(wanted) == 1
    assert got[0].shape == wanted[0].shape
    assert np.max(np.abs(got[0] - wanted[0])) <= 1e-5
    manifest = json.loads((built["packages"][case] / "manifest.json").read_text())
    saved = manifest["inference"]["saved_model"]
    assert sorted(result["doc"]["inputs"]) == sorted(t["name"] for t in saved["inputs"])
    assert list(result["doc"]["outputs"]) == [o["name"] for o in manifest["dense"]["outputs"]]


@pytest.mark.parametrize("case", IDS + [SPEC])
def test_package_layout_manifest_and_config(case, built):
    from hps_cli.runtime.config import validate_config_file

    from hps_cli.dissect.manifest import file_checksums, manifest_errors

    package = built["packages"][case]
    manifest = json.loads((package / "manifest.json").read_text())
    assert manifest_errors(manifest) == []
    tables = [t["dir"] for t in manifest["tables"]]
    assert sorted(p.name for p in package.iterdir()) == sorted(
        tables + ["dense", "manifest.json", "model.keras", "ps.json", "saved_model", "triton"]
    )
    config = validate_config_file(package / "ps.json")
    assert config.ok, [i.one_line() for i in config.issues]
    model = config.config.models[0]
    assert list(model.sparse_files) == tables  # relative to the package
    assert model.model == manifest["model_name"]
    assert file_checksums(package / "dense") == manifest["dense"]["checksums"]  # hps serve
    inference = manifest["inference"]
    assert inference["model_file"] == "model.keras"
    assert inference["built_from"] == ("spec" if case == SPEC else "dissect")
    wanted = {c[0]: c for c in CASES}.get(case)
    if wanted is not None:
        flavour = wanted[4] if wanted[4] != "auto" else wanted[1]
        assert inference["keras"] == flavour
        original = json.loads((built["dissected"][case] / "manifest.json").read_text())
        for mine, theirs in zip(manifest["tables"], original["tables"]):
            same = (package / mine["dir"] / "emb_vector").stat()
            src = (built["dissected"][case] / theirs["dir"] / "emb_vector").stat()
            assert same.st_ino == src.st_ino  # hard-linked, not copied
    names = [i["name"] for i in manifest["inputs"]]
    assert [i["name"] for i in inference["inputs"]] == names
    assert [o["name"] for o in inference["outputs"]] == [
        o["name"] for o in manifest["dense"]["outputs"]
    ]


TRITON_TYPES = {"int64": "TYPE_INT64", "int32": "TYPE_INT32", "float32": "TYPE_FP32"}


@pytest.mark.parametrize("case", IDS + [SPEC])
def test_serving_layouts_match_the_signature(case, built):
    """TF Serving's <base>/<version>/ and Triton's entry, whose config.pbtxt (parsed with
    Triton's own ModelConfig) names the signature's tensors, dtypes and dims."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    package = built["packages"][case]
    manifest = json.loads((package / "manifest.json").read_text())
    saved = manifest["inference"]["saved_model"]
    assert saved["dir"] == "saved_model/1" and saved["version"] == 1
    version = package / "saved_model" / "1"
    assert {"saved_model.pb", "variables"} <= {p.name for p in version.iterdir()}
    assert [p.name for p in (package / "saved_model").iterdir()] == ["1"]
    entry = package / "triton" / manifest["model_name"]
    assert saved["triton"] == {
        "dir": f"triton/{manifest['model_name']}",
        "config": f"triton/{manifest['model_name']}/config.pbtxt",
    }
    assert sorted(p.name for p in entry.iterdir()) == ["1", "config.pbtxt"]
    for file in version.rglob("*"):
        if file.is_file():  # hard links: one copy of the tables on disk
            twin = entry / "1" / "model.savedmodel" / file.relative_to(version)
            assert twin.stat().st_ino == file.stat().st_ino
    config = model_config_pb2.ModelConfig()
    text_format.Parse((entry / "config.pbtxt").read_text(), config)
    assert config.name == manifest["model_name"] and config.platform == "tensorflow_savedmodel"
    sparse = any(i["format"] == "sparse" for i in manifest["inputs"])
    ps = json.loads((package / "ps.json").read_text())["models"][0]
    assert config.max_batch_size == (0 if sparse else ps["max_batch_size"])
    signature = built["fresh"][case]["doc"]["inputs"]  # as TensorFlow loaded it
    outputs = {o["name"]: o for o in saved["outputs"]}
    assert {t.name for t in config.input} == set(signature)
    assert {t.name for t in config.output} == set(outputs)
    skip = 1 if config.max_batch_size else 0
    for tensor in config.input:
        dtype, shape = signature[tensor.name]
        assert model_config_pb2.DataType.Name(tensor.data_type) == TRITON_TYPES[dtype]
        assert list(tensor.dims) == [-1 if d is None else d for d in shape[skip:]]
    for tensor in config.output:
        doc = outputs[tensor.name]
        assert model_config_pb2.DataType.Name(tensor.data_type) == TRITON_TYPES[doc["dtype"]]
        assert list(tensor.dims) == [-1 if d is None else d for d in doc["shape"][skip:]]


def _saved_model_cli() -> list[str]:
    """TensorFlow's saved_model_cli: the console script beside the interpreter or on PATH, else
    its module (the same program)."""
    beside = Path(sys.executable).parent / "saved_model_cli"
    found = str(beside) if beside.is_file() else shutil.which("saved_model_cli")
    return [found] if found else [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]


@pytest.mark.parametrize("case", ["keras3-dlrm.keras", "tf_keras-notebook-savedmodel"])
def test_saved_model_cli_lists_the_signature(case, built):
    package = built["packages"][case]
    manifest = json.loads((package / "manifest.json").read_text())
    done = subprocess.run(
        [*_saved_model_cli(), "show", "--dir", str(package / "saved_model" / "1"), "--all"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    text = done.stdout
    assert "signature_def['serving_default']" in text
    assert "Method name is: tensorflow/serving/predict" in text
    for tensor in manifest["inference"]["saved_model"]["inputs"]:
        assert f"inputs['{tensor['name']}'] tensor_info" in text
    for tensor in manifest["dense"]["outputs"]:
        assert f"outputs['{tensor['name']}'] tensor_info" in text
    ops = text[text.index("contains the following ops:") :].splitlines()[0]
    assert "PyFunc" not in ops and "EagerPyFunc" not in ops  # nothing needs Python
    assert "ResourceGather" in ops  # the stock-op lookup (row-index keys: no search)


@pytest.mark.parametrize("case", ["keras3-dlrm.keras", "tf_keras-notebook-savedmodel"])
def test_model_file_holds_layer_configs_with_relative_paths(case, built):
    package = built["packages"][case]
    with zipfile.ZipFile(package / "model.keras") as archive:
        names = set(archive.namelist())
        config = archive.read("config.json").decode()
    assert {"config.json", "metadata.json"} <= names
    assert not any(n.endswith(".pb") for n in names)  # no traced graph
    assert '"registered_name": "hps>DenseSavedModel"' in config
    assert '"ps_config_file": "ps.json"' in config and '"saved_model": "dense"' in config
    assert str(built["base"]) not in config  # nothing points at where it was built


# ------------------------------------------------------------------ bad inputs


def _nothing_left(out: Path) -> None:
    assert not out.exists()
    if out.parent.exists():
        assert not [p.name for p in out.parent.iterdir() if ".hps-tmp-" in p.name]


def test_missing_manifest_invalid_config_and_tables_only_exit_3(built, tmp_path):
    source = built["dissected"]["keras3-dlrm.keras"]
    empty = tmp_path / "empty"
    empty.mkdir()
    done = run_hps("build-graph", str(empty), str(tmp_path / "out"))
    assert done.returncode == 3 and "manifest.json is missing" in done.stderr
    _nothing_left(tmp_path / "out")

    broken = tmp_path / "broken"
    shutil.copytree(source, broken)
    doc = json.loads((broken / "ps.json").read_text())
    doc["models"][0]["embedding_vecsize_per_table"][0] = 9  # the table has dim 8
    (broken / "ps.json").write_text(json.dumps(doc))
    done = run_hps("build-graph", str(broken), str(tmp_path / "out"))
    assert done.returncode == 3, done.stderr
    assert str(broken / "ps.json") in done.stderr and "embedding_vecsize_per_table" in done.stderr
    _nothing_left(tmp_path / "out")

    tables_only = tmp_path / "tables_only"
    shutil.copytree(source, tables_only)
    manifest = json.loads((tables_only / "manifest.json").read_text())
    manifest.update(dense=None, inputs=[])
    (tables_only / "manifest.json").write_text(json.dumps(manifest))
    done = run_hps("build-graph", str(tables_only), str(tmp_path / "out"))
    assert done.returncode == 3 and "tables only" in done.stderr
    _nothing_left(tmp_path / "out")

    tampered = tmp_path / "tampered"
    shutil.copytree(source, tampered)
    (tampered / "dense" / "saved_model.pb").write_bytes(b"not a graph")
    done = run_hps("build-graph", str(tampered), str(tmp_path / "out"))
    assert done.returncode == 3 and "changed since dissect wrote it" in done.stderr
    _nothing_left(tmp_path / "out")


def test_existing_out_dir_needs_overwrite(built, tmp_path):
    source = built["dissected"]["keras3-lookup.keras"]
    out = tmp_path / "pkg"
    out.mkdir()
    (out / "keep").write_text("mine")
    done = run_hps("build-graph", str(source), str(out))
    assert done.returncode == 4 and "--overwrite" in done.stderr
    assert [p.name for p in out.iterdir()] == ["keep"]
    assert not [p for p in tmp_path.iterdir() if ".hps-tmp-" in p.name]
    done = run_hps("--json", "build-graph", str(source), str(out), "--overwrite")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] and report["layers"][0]["table"] == "id_emb"
    assert (out / "model.keras").is_file() and not (out / "keep").exists()


def test_out_dir_inside_the_source_is_refused(built):
    from hps_cli.runtime.errors import InvalidInputError

    from hps_cli.build_graph import BuildOptions, build_graph

    source = built["dissected"]["keras3-lookup.keras"]
    with pytest.raises(InvalidInputError, match="overlaps the source"):
        build_graph(source, source / "pkg", BuildOptions())
    with pytest.raises(InvalidInputError, match="overlaps the source"):
        build_graph(source, source, BuildOptions(overwrite=True))
    assert (source / "manifest.json").is_file() and not (source / "pkg").exists()


@pytest.mark.parametrize(
    "change,message",
    [
        (
            lambda s: s["inputs"][0]["lookups"][0].update(table="nope"),
            r"\$\.inputs\[0\]\.lookups\[0\]\.table: model '\S+' has no table 'nope'",
        ),
        (lambda s: s["inputs"].pop(), "the dense part takes"),
        (
            lambda s: s["inputs"][0]["lookups"][0].update(dense_input="emb_x"),
            "the dense signature has no input 'emb_x'",
        ),
        (lambda s: s["inputs"][0].update(format="dense"), "needs sparse ids"),
        (lambda s: s.update(extra=1), r"invalid spec: \$: Additional properties"),
    ],
    ids=[
        "unknown-table",
        "unfed-dense-input",
        "unknown-dense-input",
        "combiner-on-dense-ids",
        "schema",
    ],
)
def test_spec_errors_name_the_spec_field(built, tmp_path, change, message):
    from hps_cli.runtime.errors import InvalidInputError

    from hps_cli.build_graph import build_graph

    spec = _spec(built["dissected"]["keras3-notebook-savedmodel"])
    change(spec)
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    with pytest.raises(InvalidInputError, match=message):
        build_graph(path, tmp_path / "out")
    _nothing_left(tmp_path / "out")


def test_load_model_refuses_what_is_not_a_package(built, tmp_path):
    from hps_cli.runtime.errors import InvalidInputError, NotFoundError

    import hps_cli.tf as hps

    with pytest.raises(NotFoundError, match="manifest.json is missing"):
        hps.load_model(tmp_path)
    with pytest.raises(InvalidInputError, match="no inference section"):
        hps.load_model(built["dissected"]["keras3-dlrm.keras"])
    package = tmp_path / "pkg"
    shutil.copytree(built["packages"]["keras3-lookup.keras"], package)
    (package / "model.keras").unlink()
    with pytest.raises(NotFoundError, match="the package's model file is missing"):
        hps.load_model(package)
