"""`--custom-objects MODULE[:ATTR]` on dissect, build-graph and serve, and
`hps_cli.tf.load_model(custom_objects=...)`, with a model holding a custom layer (``Scale``,
helpers/custom_layers.py, built on ``tf.keras`` like third-party libraries' layers): every spec
form, the Keras each file needs, the errors (exit codes and hints), what packages record and
what happens where the recorded code is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from helpers.cli import run_hps
from helpers.named_models import trained
from hps_cli.runtime.errors import HpsError, InvalidInputError

from hps_cli.common.custom_objects import check_keras, keras_of_class, parse_spec, resolve

HELPERS = Path(__file__).resolve().parent / "helpers"
WITH_HELPERS = {
    "PYTHONPATH": os.pathsep.join(filter(None, [str(HELPERS), os.environ.get("PYTHONPATH")]))
}


def test_spec_forms():
    assert parse_spec("deepctr.layers:custom_objects") == ("deepctr.layers", "custom_objects")
    assert parse_spec("my_layers") == ("my_layers", None)
    assert parse_spec(" pkg.mod:ns.attr ") == ("pkg.mod", "ns.attr")
    for bad in ("a:b:c", "path/to/file.py", "1mod", "mod:", ":attr", ""):
        with pytest.raises(InvalidInputError, match="not a MODULE"):
            parse_spec(bad)


def _fake_layer(root: str) -> type:
    base = type("Layer", (), {"__module__": f"{root}.src.layers.layer"})
    return type("Concat", (base,), {"__module__": "deepctr.layers.utils"})


def test_classes_of_the_other_keras_are_refused_with_the_setting_to_use():
    keras3, tf_keras = _fake_layer("keras"), _fake_layer("tf_keras")
    assert keras_of_class(keras3) == "keras3" and keras_of_class(tf_keras) == "tf_keras"
    assert keras_of_class(len) is None and keras_of_class(dict) is None
    check_keras({"Concat": tf_keras, "f": len}, "tf_keras", "model.h5")
    with pytest.raises(InvalidInputError, match="Concat are Keras 3 classes") as info:
        check_keras({"Concat": keras3}, "tf_keras", "model.h5")
    assert "TF_USE_LEGACY_KERAS=1" in info.value.hint
    with pytest.raises(InvalidInputError, match="are tf_keras classes"):
        check_keras({"Concat": tf_keras}, "keras3", "model.keras")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("custom-objects")


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


@pytest.mark.tf
@pytest.mark.slow
def test_without_the_code_the_error_names_the_class_and_the_option(work):
    out = work / "no-code"
    res = run_hps("dissect", str(trained() / "tf_keras" / "scale.h5"), str(out), timeout=600)
    assert res.returncode == 3, res.stderr
    text = " ".join(res.stderr.split())
    assert "Unknown layer: 'Scale'" in text and "classes Keras does not know: Scale" in text
    assert "--custom-objects MODULE[:ATTR]" in text and "SavedModel" in text
    assert not out.exists()


@pytest.mark.tf
@pytest.mark.slow
@pytest.mark.parametrize(
    "flavour, model, spec",
    [
        ("tf_keras", "scale.h5", "custom_layers:CUSTOM_OBJECTS"),  # a dict
        ("tf_keras", "scale.keras", "custom_layers:Scale"),  # a class
        ("keras3", "scale.keras", "custom_layers:custom_objects"),  # a function returning a dict
    ],
)
def test_dissect_with_the_code(flavour, model, spec, work):
    out = work / f"{flavour}-{model}"
    # The environment asks for the other Keras: the file's own decides (TensorFlow is not
    # imported yet when hps reads it), so the library defines classes of the right one.
    wrong = "0" if flavour == "tf_keras" else "1"
    res = run_hps(
        "dissect",
        str(trained() / flavour / model),
        str(out),
        "--custom-objects",
        spec,
        env={**WITH_HELPERS, "TF_USE_LEGACY_KERAS": wrong},
        timeout=600,
    )
    assert res.returncode == 0, res.stderr
    manifest = _manifest(out)
    assert manifest["source"]["keras"] == flavour
    assert manifest["custom_objects"] == [spec]
    assert manifest["self_check"]["status"] == "passed"
    assert manifest["self_check"]["max_abs_diff"] <= 1e-5


@pytest.mark.tf
@pytest.mark.slow
def test_the_console_script_imports_from_the_working_directory(work):
    script = Path(sys.executable).with_name("hps")
    if not script.is_file():
        pytest.skip("no hps console script beside this Python")
    out = work / "cwd"
    res = subprocess.run(
        [str(script), "dissect", str(trained() / "tf_keras" / "scale.keras"), str(out)]
        + ["--custom-objects", "custom_layers:LAYERS"],  # a list
        cwd=HELPERS,
        capture_output=True,
        text=True,
        timeout=600,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert res.returncode == 0, res.stderr
    assert _manifest(out)["custom_objects"] == ["custom_layers:LAYERS"]


@pytest.mark.tf
@pytest.mark.parametrize(
    "spec, code, message",
    [
        ("no_such_module_for_hps", 5, "cannot import 'no_such_module_for_hps'"),
        ("helpers.custom_layers:NOPE", 3, "module 'helpers.custom_layers' has no attribute"),
        ("helpers.custom_layers:annotations", 3, "is not a dict, list or class"),
        ("raising_module", 3, "importing 'raising_module' failed: RuntimeError: broken"),
        ("a:b:c", 3, "not a MODULE[:ATTR] spec"),
    ],
)
def test_bad_specs_fail_with_their_exit_code(spec, code, message, tmp_path, monkeypatch):
    (tmp_path / "raising_module.py").write_text("raise RuntimeError('broken')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(HpsError) as info:
        resolve(["helpers.custom_layers:LAYERS", spec])
    assert info.value.exit_code == code and message in info.value.message
    assert info.value.hint and spec.strip() in info.value.location


@pytest.mark.tf
def test_resolve_forms_in_process():
    found = resolve([{"f": len}, "helpers.custom_layers:custom_objects", "json"])
    assert found.specs == ["helpers.custom_layers:custom_objects", "json"]  # dicts: not data
    assert sorted(found.objects) == ["Scale", "f"]


@pytest.mark.tf
@pytest.mark.slow
def test_the_command_line_says_which_module_is_missing(work):
    out = work / "bad"
    res = run_hps(
        "dissect",
        str(trained() / "tf_keras" / "scale.h5"),
        str(out),
        "--custom-objects",
        "no_such_module_for_hps",
        timeout=600,
    )
    assert res.returncode == 5, res.stderr
    text = " ".join(res.stderr.split())
    assert "--custom-objects no_such_module_for_hps: cannot import" in text
    assert "PYTHONPATH" in text and not out.exists()


@pytest.fixture(scope="module")
def package(work):
    """build-graph of the tf_keras .h5 dissect, adding an import-only spec of its own."""
    source = work / "tables-and-code"
    res = run_hps(
        "dissect",
        str(trained() / "tf_keras" / "scale.h5"),
        str(source),
        "--custom-objects",
        "custom_layers:CUSTOM_OBJECTS",
        env=WITH_HELPERS,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr
    out = work / "scale_pkg"
    res = run_hps(
        "build-graph",
        str(source),
        str(out),
        "--custom-objects",
        "custom_layers",
        env=WITH_HELPERS,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr
    return out


@pytest.mark.tf
@pytest.mark.slow
def test_build_graph_records_both_and_fails_on_a_missing_module(package, work):
    assert _manifest(package)["custom_objects"] == ["custom_layers:CUSTOM_OBJECTS", "custom_layers"]
    res = run_hps(
        "build-graph",
        str(work / "tables-and-code"),
        str(work / "never"),
        "--custom-objects",
        "no_such_module_for_hps",
        timeout=600,
    )
    assert res.returncode == 5 and "no_such_module_for_hps" in res.stderr
    assert not (work / "never").exists()


_LOAD = """
import json, sys, warnings
import numpy as np
import hps_cli.tf as hps
data = np.load(sys.argv[2])
feed = {k[3:]: data[k].astype(np.int64) if data[k].dtype == np.int32 else data[k]
        for k in data.files if k.startswith("in:")}
for given in json.loads(sys.argv[3]):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        model = hps.load_model(sys.argv[1], custom_objects=given)
    diff = float(np.max(np.abs(np.asarray(model(feed)) - data["out:score"])))
    print(json.dumps({"diff": diff, "warnings": [str(w.message) for w in seen
                      if issubclass(w.category, RuntimeWarning)]}))
    hps.Shutdown()
"""


@pytest.mark.tf
@pytest.mark.slow
@pytest.mark.parametrize("code_here", [True, False])
def test_load_model_imports_what_the_package_records(package, code_here):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_USE_LEGACY_KERAS"] = "1"
    env.update(WITH_HELPERS if code_here else {})
    given = [None, "custom_layers:LAYERS"] if code_here else [None]
    res = subprocess.run(
        [sys.executable, "-c", _LOAD, str(package), str(trained() / "tf_keras" / "scale.npz")]
        + [json.dumps(given)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert res.returncode == 0, res.stderr
    docs = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    assert len(docs) == len(given)
    for doc in docs:
        assert doc["diff"] <= 1e-5  # the dense part is a SavedModel: it needs no layer code
        if code_here:
            assert doc["warnings"] == []
        else:  # both recorded specs named, then skipped
            assert len(doc["warnings"]) == 2, doc
            assert all("cannot be imported here" in w for w in doc["warnings"])


@pytest.mark.tf
def test_load_model_fails_on_a_given_module_that_is_missing(package):
    from hps_cli.common.custom_objects import CustomObjectsMissingError
    from hps_cli.tf import load_model

    with warnings.catch_warnings():  # the recorded specs are not importable in this process
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(CustomObjectsMissingError, match="no_such_module_for_hps") as info:
            load_model(package, custom_objects="no_such_module_for_hps")
    assert info.value.exit_code == 5


@pytest.mark.tf
@pytest.mark.slow
def test_serve_fails_before_binding_on_a_missing_module(package):
    res = run_hps(
        "serve",
        "--config",
        str(package / "ps.json"),
        "--custom-objects",
        "no_such_module_for_hps",
        "--http-port",
        "0",
        "--grpc-port",
        "0",
        "--metrics-port",
        "0",
        timeout=300,
    )
    assert res.returncode == 5, res.stderr
    assert "no_such_module_for_hps" in res.stderr and "PYTHONPATH" in res.stderr


@pytest.mark.tf
@pytest.mark.slow
def test_serve_without_the_recorded_code_warns_and_serves(package, tmp_path):
    import tritonclient.http as thttp

    from hps_cli.devtools.serve_process import ServeProcess

    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copytree(package, repo / "scale")
    with np.load(trained() / "tf_keras" / "scale.npz") as data:
        sample = {k[3:]: data[k] for k in data.files if k.startswith("in:")}
        want = data["out:score"]
    # helpers/ is not on the server's path: custom_layers cannot be imported there
    with ServeProcess(
        repo / "scale" / "ps.json", model_repository=repo, ready_timeout=300
    ) as server:
        client = thttp.InferenceServerClient(url=server.http_url)
        inputs = []
        for name, value in sample.items():
            value = value.astype(np.int64) if value.dtype == np.int32 else value
            tensor = thttp.InferInput(
                name, list(value.shape), "INT64" if value.dtype == np.int64 else "FP32"
            )
            tensor.set_data_from_numpy(value)
            inputs.append(tensor)
        got = client.infer("scale", inputs).as_numpy("score")
        skipped = [e for e in server.log_events() if e.get("event") == "custom_objects_skipped"]
    assert float(np.max(np.abs(got - want))) <= 1e-5
    assert len(skipped) == 2 and all(e["package"].endswith("scale") for e in skipped)
