"""Keras model files: ``.keras`` archives and Keras ``.h5`` files (full models or weights).

- ``.keras`` (Keras 3, or tf_keras: ``metadata.json``'s ``keras_version`` tells which): a zip
  with ``metadata.json``, ``config.json`` and ``model.weights.h5``. Inside the weights every
  layer has a ``vars`` group (datasets ``0``, ``1``, ...) under a path built from snake-cased
  class names (``layers/embedding_1/vars/0``). Keras 3 writes the layer's own name into the
  group's ``name`` attribute, which is how we recover ``item_emb/embeddings``; tf_keras does
  not, so its paths are matched to the config's layers by class and order, as tf_keras built
  them. Archives store their members uncompressed, so the weights are read in place through a
  window on the zip file (no extraction, memory bounded by one slice).
- ``.h5`` (Keras 2 / tf_keras): root attributes ``keras_version`` and ``model_config``; the
  weights in the layout that ``hps_cli.common.keras2_h5`` reads (``model_weights/<layer>/<weight
  name>``, optimizer state in ``optimizer_weights``). Keras 3 ``.weights.h5`` files use the
  ``.keras`` layout.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import struct
import tempfile
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np

from ..common import keras2_h5
from ..common.keras2_h5 import text
from ..runtime.errors import InvalidInputError
from .protowire import fields
from .source_types import BOOKKEEPING, H5, KERAS, MODEL, OPTIMIZER, Source, Variable, sanitize_name

# Variable names of Keras layers by position in their ``vars`` group (Keras 3 layout).
_WEIGHT_NAMES = {
    "Embedding": ("embeddings",),
    "Dense": ("kernel", "bias"),
    "EinsumDense": ("kernel", "bias"),
}
_SNAKE_EMBEDDING = re.compile(r"^embedding(_\d+)?$")
KERAS3, TF_KERAS = "keras3", "tf_keras"


def flavour_of_version(version: str | None) -> str | None:
    """keras3 for a Keras version 3 or later, tf_keras for an earlier one, None if unknown."""
    match = re.match(r"\s*(\d+)", version or "")
    if match is None:
        return None
    return KERAS3 if int(match.group(1)) >= 3 else TF_KERAS


def archive_flavour(metadata: dict, config: dict) -> str:
    """Which Keras wrote a ``.keras`` archive: its ``metadata.json`` ``keras_version``, else
    the module of the model class in ``config.json`` (``tf_keras.src.engine.functional`` or
    ``keras.src.models.functional``); Keras 3 when neither tells."""
    found = flavour_of_version(metadata.get("keras_version"))
    if found is None:
        module = str(config.get("module") or "")
        found = TF_KERAS if module.split(".")[0] == TF_KERAS else KERAS3
    return found


def _snake_case(class_name: str) -> str:
    """tf_keras's ``to_snake_case`` of a class name (a leading ``_`` becomes ``private_``)."""
    text = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", class_name)
    text = re.sub("([a-z])([A-Z])", r"\1_\2", text).lower()
    return "private" + text if text.startswith("_") else text


def tf_keras_layer_paths(config: dict) -> dict[str, tuple[str, str]]:
    """``layers/<snake class>[_k]`` -> (layer name, class name) for the top-level layers of a
    tf_keras archive's model config.

    tf_keras names each layer's weights group by its snake-cased class and counts repeats in
    ``model.layers`` order, which is the order of the config's ``layers`` (``saving_lib``'s
    ``_save_container_state``); a Sequential model's layers do not include its InputLayer.
    Nested models keep the paths inside them as they are.
    """
    inner = config.get("config") or {}
    layers = inner.get("layers") if isinstance(inner, dict) else None
    if not isinstance(layers, list):
        return {}
    sequential = config.get("class_name") == "Sequential"
    used: dict[str, int] = {}
    out = {}
    for layer in layers:
        if not isinstance(layer, dict):
            continue
        cls = str(layer.get("class_name") or "").split(">")[-1]
        name = (layer.get("config") or {}).get("name")
        if not cls or not isinstance(name, str) or (sequential and cls == "InputLayer"):
            continue
        snake = _snake_case(cls)
        count = used.get(snake)
        used[snake] = 0 if count is None else count + 1
        out[f"layers/{snake}" if count is None else f"layers/{snake}_{count + 1}"] = (name, cls)
    return out


def layer_configs(config: dict | None) -> dict[str, dict]:
    """Every layer config in a Keras model config, nested models included, by layer name."""
    found: dict[str, dict] = {}

    def walk(node):
        if isinstance(node, dict):
            inner = node.get("config")
            if (
                isinstance(inner, dict)
                and "class_name" in node
                and isinstance(inner.get("name"), str)
            ):
                found.setdefault(inner["name"], node)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config)
    return found


def inbound_layers(layer: dict) -> list[str]:
    """Names of the layers feeding a layer, from its config's ``inbound_nodes``.

    Keras 2 writes ``[[["id_lookup", 0, 0, {}]]]``; Keras 3 writes ``{"args": [{"class_name":
    "__keras_tensor__", "config": {"keras_history": ["id_lookup", 0, 0]}}]}``.
    """
    names: list[str] = []

    def walk(node) -> None:
        if isinstance(node, dict):
            history = (
                (node.get("config") or {}).get("keras_history")
                if node.get("class_name") == "__keras_tensor__"
                else None
            )
            if history:
                names.append(history[0])
                return
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            if (
                len(node) >= 3
                and isinstance(node[0], str)
                and isinstance(node[1], int)
                and isinstance(node[2], int)
            ):
                names.append(node[0])
                return
            for value in node:
                walk(value)

    walk(layer.get("inbound_nodes", []))
    return names


def _shape_dtype(dataset) -> tuple[tuple[int, ...], str]:
    dtype = dataset.dtype
    name = "string" if dtype.kind in "OSU" else str(dtype)
    return tuple(int(d) for d in dataset.shape), name


class _Window(io.RawIOBase):
    """A read-only file object over ``size`` bytes at ``offset`` of another file."""

    def __init__(self, path: Path, offset: int, size: int):
        super().__init__()
        self._file = open(path, "rb")
        self._offset, self._size, self._pos = offset, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._size}[whence]
        self._pos = max(0, base + pos)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer) -> int:
        count = max(0, min(len(buffer), self._size - self._pos))
        if not count:
            return 0
        self._file.seek(self._offset + self._pos)
        got = self._file.readinto(memoryview(buffer)[:count]) or 0
        self._pos += got
        return got

    def close(self) -> None:
        if not self.closed:
            self._file.close()
        super().close()


class _H5Backed(Source):
    """A source whose variables are HDF5 datasets; ``self._h5`` is the open h5py file."""

    _h5 = None

    def iter_rows(
        self, var: Variable, rows_per_chunk: int, buffers: int = 1
    ) -> Iterator[tuple[int, np.ndarray]]:
        dataset = self._h5[var.location]
        rows = dataset.shape[0]
        pool = [
            np.empty((min(rows, rows_per_chunk),) + dataset.shape[1:], dtype=dataset.dtype)
            for _ in range(max(1, buffers))
        ]
        for step, start in enumerate(range(0, rows, rows_per_chunk)):
            buffer = pool[step % len(pool)]
            count = min(rows, start + rows_per_chunk) - start
            try:
                dataset.read_direct(buffer, np.s_[start : start + count], np.s_[0:count])
            except OSError as exc:
                raise InvalidInputError(
                    f"cannot read rows {start}..{start + count} of {var.location}: {exc}",
                    location=str(self.path),
                ) from exc
            yield start, buffer[:count]


class KerasArchiveSource(_H5Backed):
    """A ``.keras`` archive, written by Keras 3 or by tf_keras."""

    def __init__(self, path: Path):
        location = str(path)
        try:
            archive = zipfile.ZipFile(path)
        except zipfile.BadZipFile as exc:
            raise InvalidInputError(
                f"not a readable zip archive: {exc}", location=location
            ) from exc
        with archive:
            names = set(archive.namelist())
            if "config.json" not in names or "model.weights.h5" not in names:
                raise InvalidInputError(
                    "not a Keras archive (config.json and model.weights.h5 expected in the zip)",
                    location=location,
                )
            try:
                config = json.loads(archive.read("config.json"))
                metadata = (
                    json.loads(archive.read("metadata.json")) if "metadata.json" in names else {}
                )
            except (ValueError, UnicodeDecodeError) as exc:
                raise InvalidInputError(
                    f"unreadable config.json/metadata.json: {exc}", location=location
                ) from exc
            info = archive.getinfo("model.weights.h5")
        self._tmpdir: str | None = None
        self._window: _Window | None = None
        self._h5 = self._open_weights(path, info)
        name = (config.get("config") or {}).get("name") or path.stem
        flavour = archive_flavour(metadata, config)
        super().__init__(
            path,
            KERAS,
            [],
            flavour=flavour,
            keras_version=metadata.get("keras_version"),
            model_name=sanitize_name(str(name)),
            loadable=True,
            keras_config=config,
        )
        self.variables = keras3_variables(
            self._h5,
            layer_configs(config),
            tf_keras_layer_paths(config) if flavour == TF_KERAS else None,
        )

    def _open_weights(self, path: Path, info: zipfile.ZipInfo):
        import h5py

        if info.compress_type == zipfile.ZIP_STORED:
            with open(path, "rb") as handle:
                handle.seek(info.header_offset)
                header = handle.read(30)
            if len(header) < 30 or header[:4] != b"PK\x03\x04":
                raise InvalidInputError("corrupt zip entry model.weights.h5", location=str(path))
            name_len, extra_len = struct.unpack_from("<HH", header, 26)
            offset = info.header_offset + 30 + name_len + extra_len
            self._window = _Window(path, offset, info.file_size)
            target = self._window
        else:  # compressed archives (not written by Keras): extract to a temporary file
            self._tmpdir = tempfile.mkdtemp(prefix="hps-dissect-")
            target = Path(self._tmpdir) / "model.weights.h5"
            with (
                zipfile.ZipFile(path) as archive,
                archive.open(info) as src,
                open(target, "wb") as dst,
            ):
                shutil.copyfileobj(src, dst, 1 << 24)
        try:
            return h5py.File(target, "r")
        except OSError as exc:
            self.close()
            raise InvalidInputError(
                f"unreadable model.weights.h5: {exc}", location=str(path)
            ) from exc

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()  # before the window it reads from
            self._h5 = None
        if self._window is not None:
            self._window.close()
            self._window = None
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None


def keras3_variables(
    h5, layers: dict[str, dict], paths: dict[str, tuple[str, str]] | None = None
) -> list[Variable]:
    """Variables of a ``.keras``-layout weights file, named ``<layer name>/<weight name>``.

    The layer name is the group's ``name`` attribute (Keras 3), else ``paths``' entry for the
    group (tf_keras archives: ``tf_keras_layer_paths``), else the group's own name.
    """
    found: list[tuple] = []
    paths = paths or {}

    def visit(path: str, obj) -> None:
        if not path.endswith("vars") or not hasattr(obj, "keys"):
            return
        owner_path = path[: -len("/vars")] if path.endswith("/vars") else ""
        known = paths.get(owner_path)
        layer = text(
            obj.attrs.get("name", known[0] if known else owner_path.rsplit("/", 1)[-1] or "model")
        )
        cls = (layers.get(layer) or {}).get("class_name") or (known[1] if known else None)
        if cls is None and _SNAKE_EMBEDDING.match(owner_path.rsplit("/", 1)[-1]):
            cls = "Embedding"
        kind = _kind_of(path)
        for key in sorted(obj.keys(), key=lambda k: (len(k), k)):
            dataset = obj[key]
            if not hasattr(dataset, "shape"):
                continue
            names = _WEIGHT_NAMES.get(cls or "", ())
            weight = names[int(key)] if key.isdigit() and int(key) < len(names) else key
            found.append(
                (
                    f"{layer}/{weight}",
                    f"{path}/{key}",
                    kind,
                    layer if kind == MODEL else None,
                    cls if kind == MODEL else None,
                    dataset,
                )
            )

    h5.visititems(visit)
    counts: dict[str, int] = {}
    for name, *_ in found:
        counts[name] = counts.get(name, 0) + 1
    result = []
    for name, location, kind, layer, cls, dataset in found:
        shape, dtype = _shape_dtype(dataset)
        result.append(
            Variable(
                name if counts[name] == 1 else location,
                shape,
                dtype,
                kind,
                location,
                location,
                layer=layer,
                layer_class=cls,
            )
        )
    return result


def _kind_of(h5_path: str) -> str:
    parts = h5_path.split("/")
    if parts[0] == "optimizer":
        return OPTIMIZER
    return BOOKKEEPING if "metrics" in parts else MODEL


class H5Source(_H5Backed):
    """A Keras ``.h5`` file: a Keras 2 full model or weights, or Keras 3 ``.weights.h5``."""

    def __init__(self, path: Path):
        import h5py

        try:
            self._h5 = h5py.File(path, "r")
        except OSError as exc:
            raise InvalidInputError(f"unreadable HDF5 file: {exc}", location=str(path)) from exc
        h5 = self._h5
        config = None
        raw = h5.attrs.get("model_config")
        if raw is not None:
            try:
                config = json.loads(text(raw))
            except ValueError as exc:
                self.close()
                raise InvalidInputError(
                    f"unreadable model_config attribute: {exc}", location=str(path)
                ) from exc
        version = h5.attrs.get("keras_version")
        version = text(version) if version is not None else None
        layers = layer_configs(config)
        if "layers" in h5 and "layer_names" not in h5.attrs and "model_weights" not in h5:
            variables = keras3_variables(h5, layers)  # Keras 3 .weights.h5 layout
            flavour = "keras3"
        elif "model_weights" in h5 or "layer_names" in h5.attrs:
            try:
                variables = _keras2_variables(h5, layers)
            except InvalidInputError:
                self.close()
                raise
            flavour = flavour_of_version(version) or TF_KERAS
        else:
            self.close()
            raise InvalidInputError(
                "an HDF5 file, but not one Keras wrote (no model_weights, "
                "layer_names or layers/ group)",
                location=str(path),
            )
        name = (config or {}).get("config", {}).get("name") if config else None
        super().__init__(
            path,
            H5,
            variables,
            flavour=flavour,
            keras_version=version,
            model_name=sanitize_name(str(name or path.stem.split(".")[0])),
            loadable=config is not None,
            keras_config=config,
        )
        if config is None:
            self.notes.append("weights-only HDF5 file: no model config, so tables only")

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None


def _keras2_variables(h5, layers: dict[str, dict]) -> list[Variable]:
    result: list[Variable] = []
    for weight in keras2_h5.model_weights(h5):
        result.append(
            _keras2_variable(
                weight,
                MODEL,
                layer=weight.layer,
                layer_class=(layers.get(weight.layer) or {}).get("class_name"),
            )
        )
    for weight in keras2_h5.optimizer_weights(h5):
        result.append(_keras2_variable(weight, OPTIMIZER))
    return result


def _keras2_variable(weight: keras2_h5.Weight, kind: str, **owner) -> Variable:
    """``user_emb/embeddings:0`` → variable ``user_emb/embeddings`` at its dataset's path."""
    shape, dtype = _shape_dtype(weight.dataset)
    name = weight.name[:-2] if weight.name.endswith(":0") else weight.name
    location = weight.dataset.name.lstrip("/")
    return Variable(name, shape, dtype, kind, location, location, **owner)


def saved_model_keras_metadata(path: Path) -> dict | None:
    """The root entry of a tf_keras SavedModel's ``keras_metadata.pb`` plus its layers.

    ``keras_metadata.pb`` is a ``SavedMetadata`` message: repeated ``nodes`` (1), each with
    ``node_path`` (3), ``identifier`` (4) and a JSON ``metadata`` string (5).
    """
    try:
        data = path.read_bytes()
        root, layers = None, {}
        for number, _, node in fields(data):
            if number != 1:
                continue
            parts = {n: v for n, _, v in fields(node)}
            meta = json.loads(text(parts.get(5, b"{}")) or "{}")
            if text(parts.get(3, b"")) == "root":
                root = meta
            elif isinstance(meta, dict) and meta.get("name") and meta.get("class_name"):
                layers[meta["name"]] = {
                    "class_name": meta["class_name"],
                    "config": meta.get("config") or {},
                }
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if root is None:
        return None
    root = dict(root)
    root["_layers"] = layers
    return root
