"""The deployable part of a package: a SavedModel that needs only TensorFlow, in the layouts
servers read as they are.

    PACKAGE/saved_model/<version>/        TF Serving: --model_base_path=PACKAGE/saved_model
    PACKAGE/triton/<model>/config.pbtxt   Triton: --model-repository=PACKAGE/triton
    PACKAGE/triton/<model>/<version>/model.savedmodel/  (hard links to saved_model/<version>/)

The SavedModel is the package's Keras model traced with its HPS lookups as stock-op lookups
into the tables embedded as variables (``hps_cli.tf.export_saved_model``); its
``serving_default`` signature takes the package's inputs (a SparseTensor input as three
tensors, named as in the original signature when dissect recorded them) and returns the dense
part's outputs by name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from .triton_config import MODEL_DIR, config_pbtxt

SAVED_MODEL_DIR = "saved_model"
TRITON_DIR = "triton"
SIZE_OPTION = "--saved-model-max-size"
DEFAULT_MAX_BYTES = 4 << 30  # hps_cli.tf.embedded_tables's default (a test keeps them equal)


def embedded_tables(manifest: dict) -> list[tuple[str, int, int]]:
    """``(name, keys, dim)`` of every table a lookup of the manifest reads, once each."""
    used = {lk["table_id"] for spec in manifest["inputs"] for lk in spec.get("lookups", [])}
    return [
        (t["name"], int(t.get("num_keys", t["rows"])), int(t["dim"]))
        for t in manifest["tables"]
        if t["table_id"] in used
    ]


def check_size(manifest: dict, max_bytes: int) -> int:
    """Refuse before any work when the tables exceed the SavedModel limit; their bytes."""
    from ..tf.embedded_tables import check_table_bytes

    return check_table_bytes(
        embedded_tables(manifest),
        max_bytes,
        SIZE_OPTION,
        "build with --no-saved-model and serve the package from the HPS hierarchy: "
        "'hps serve --model-repository' looks the tables up through the embedding caches, the "
        "volatile tier and RocksDB",
    )


def _signature(input_docs: list[dict]) -> dict:
    import tensorflow as tf

    specs = {}
    for doc in input_docs:
        shape, dtype = tf.TensorShape(doc["shape"]), tf.as_dtype(doc["dtype"])
        sparse = doc["format"] == "sparse"
        specs[doc["name"]] = (
            tf.SparseTensorSpec(shape, dtype) if sparse else tf.TensorSpec(shape, dtype)
        )
    return specs


def write_deployable(
    model,
    package: Path,
    manifest: dict,
    input_docs: list[dict],
    *,
    version: int,
    max_batch_size: int,
    max_bytes: int,
    link_tree: Callable[[Path, Path], None],
) -> dict:
    """Export ``model`` into ``package`` (both layouts); the manifest's ``saved_model`` doc."""
    from ..tf.saved_model_export import export_saved_model

    components = {
        spec["name"]: spec["components"] for spec in manifest["inputs"] if spec.get("components")
    }
    relative = Path(SAVED_MODEL_DIR) / str(version)
    result = export_saved_model(
        model,
        package / relative,
        input_signature=_signature(input_docs),
        sparse_components=components,
        output_names=[o["name"] for o in manifest["dense"]["outputs"]],
        max_table_bytes=max_bytes,
        size_option=SIZE_OPTION,
    )
    doc = result.to_dict()
    entry = Path(TRITON_DIR) / manifest["model_name"]
    (package / entry).mkdir(parents=True)
    (package / entry / "config.pbtxt").write_text(
        config_pbtxt(manifest["model_name"], doc["inputs"], doc["outputs"], max_batch_size)
    )
    (package / entry / str(version)).mkdir()
    link_tree(package / relative, package / entry / str(version) / MODEL_DIR)
    return {
        "dir": relative.as_posix(),
        "version": version,
        **doc,
        "triton": {"dir": entry.as_posix(), "config": (entry / "config.pbtxt").as_posix()},
    }
