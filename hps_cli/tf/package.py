"""The inference package ``hps build-graph`` writes, and ``load_model`` that opens it.

    PACKAGE/
      model.keras     the Keras model: HPS lookup layers → DenseSavedModel (config, no weights)
      dense/          the dense SavedModel (named inputs; what ``hps serve`` runs after lookups)
      <table>/        the HPS tables (key, emb_vector, table.json)
      ps.json         the HPS config, sparse_files relative to the package
      manifest.json   the dissect manifest plus an ``inference`` section
      saved_model/1/  the deployable SavedModel: TensorFlow only, tables embedded (TF Serving)
      triton/<model>/ its Triton model-repository entry (config.pbtxt, 1/model.savedmodel/)

``load_model(PACKAGE)`` initializes HPS from the package's ps.json (once per process, as
``Init``), registers the layers with the Keras that built the model and loads ``model.keras``
with it; relative paths inside resolve against the package, so it can be moved or copied.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

from ..common.custom_objects import resolve, resolve_recorded
from ..runtime.errors import InvalidInputError, NotFoundError
from . import process_runtime
from .flavour import FLAVOURS, keras_module
from .flavour_layers import layers_for

MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.keras"
PACKAGE_FORMAT = "hps-inference-package"


@dataclass(frozen=True)
class PackageInfo:
    dir: Path
    model_file: Path
    ps_config: Path
    keras: str
    manifest: dict


def package_dir(path: Path | str) -> Path:
    """The package folder of a path to it, its manifest.json or its model file."""
    path = Path(path).expanduser().resolve()
    return path.parent if path.is_file() else path


def read_package(path: Path | str) -> PackageInfo:
    """Read and check a package's manifest (``inference`` section, files present)."""
    folder = package_dir(path)
    manifest_path = folder / MANIFEST_FILE
    if not manifest_path.is_file():
        raise NotFoundError(
            "not an hps inference package (manifest.json is missing)",
            location=str(folder),
            hint="build one with 'hps build-graph'",
        )
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInputError(
            f"cannot read the manifest: {exc}", location=str(manifest_path)
        ) from None
    inference = manifest.get("inference") if isinstance(manifest, dict) else None
    if not isinstance(inference, dict) or inference.get("format") != PACKAGE_FORMAT:
        raise InvalidInputError(
            "the manifest has no inference section (a dissect output, not an inference package)",
            location=f"{manifest_path} $",
            hint="build the package with 'hps build-graph'",
        )
    flavour = inference.get("keras")
    if flavour not in FLAVOURS:
        raise InvalidInputError(
            f"unknown Keras flavour {flavour!r}", location=f"{manifest_path} $.inference.keras"
        )
    model_file = folder / str(inference.get("model_file", MODEL_FILE))
    ps_config = folder / str(manifest.get("ps_config", "ps.json"))
    for what, file in (("model file", model_file), ("HPS config", ps_config)):
        if not file.is_file():
            raise NotFoundError(f"the package's {what} is missing", location=str(file))
    return PackageInfo(folder, model_file, ps_config, flavour, manifest)


def load_model(
    path: Path | str,
    *,
    compile: bool = False,
    global_batch_size: int = 1,
    custom_objects=None,
):
    """Load an inference package: initialize HPS from its ps.json, return the Keras model.

    Args:
        path: the package folder (or its manifest.json / model.keras).
        compile: passed to Keras's ``load_model`` (the package holds no training config).
        global_batch_size: for HPS's init check (at most the config's ``max_batch_size``).
        custom_objects: user code the model needs, as for ``hps dissect --custom-objects``: a
            ``"MODULE[:ATTR]"`` string, a dict of name -> class, or a list of them. The
            modules the package records (``manifest.json`` ``custom_objects``) are imported
            first; one that cannot be imported here is skipped with a warning.

    The model is a Keras 3 model or a tf_keras model, whichever built the package
    (``manifest.json`` ``inference.keras``). Its id inputs take int32 and int64 ids alike.
    """
    info = read_package(path)
    recorded, skipped = resolve_recorded(info.manifest.get("custom_objects", []))
    for text in skipped:
        warnings.warn(text, RuntimeWarning, stacklevel=2)
    given = resolve(custom_objects)
    # The model file holds the HPS layers only (the dense part is a SavedModel), so classes of
    # the other Keras do no harm here; the imports matter for custom ops the dense part uses.
    objects = {**recorded.objects, **given.objects}
    process_runtime.init(global_batch_size, info.ps_config)
    keras = keras_module(info.keras)
    layers_for(keras)  # registers hps>LookupLayer, hps>SparseLookupLayer, hps>DenseSavedModel
    with process_runtime.package_base(info.dir):
        return keras.models.load_model(
            str(info.model_file), custom_objects=objects or None, compile=compile
        )
