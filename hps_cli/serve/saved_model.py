"""Inference models that are plain TensorFlow SavedModels: the deployable SavedModel that
``hps build-graph`` writes (its tables embedded, its lookups stock TensorFlow ops), in either
layout a model repository may hold:

- Triton's: ``<name>/config.pbtxt`` (``platform: "tensorflow_savedmodel"``) and
  ``<name>/<version>/model.savedmodel/``; ``hps serve --model-repository PACKAGE/triton``;
- TF Serving's: ``<name>/<version>/saved_model.pb`` (a copy of, or a link to, a package's
  ``saved_model/``).

The highest version is served, under its number. Inputs and outputs are the
``serving_default`` signature's. With a config.pbtxt whose ``max_batch_size`` is above 0 every
tensor's first dimension is the batch: concurrent requests are concatenated into one call of
the signature and the outputs split back, up to that many samples. Otherwise (no config, or
tensors without a common batch dimension such as SparseTensor components) each request is one
call. No HPS runtime is involved: these models take no table updates.

TensorFlow is imported only when such a model is loaded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..runtime.errors import ConfigError, InvalidInputError
from .logs import event
from .models import ServedModel, TensorSpec, Work
from .protocol import DATATYPES, InferRequest, InferResult, Tensor, datatype_of, invalid

log = logging.getLogger("hps_cli.serve")

SIGNATURE = "serving_default"
PLATFORM = "tensorflow_savedmodel"
TRITON_MODEL_DIR = "model.savedmodel"


@dataclass(frozen=True)
class SavedModelEntry:
    """A repository folder's SavedModel: its path, version and Triton config (if any)."""

    folder: Path
    path: Path
    version: int
    config_file: Path | None


def _versions(folder: Path) -> list[int]:
    return sorted(
        (int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit()), reverse=True
    )


def find_saved_model(folder: Path) -> SavedModelEntry | None:
    """The SavedModel a repository folder serves (highest version), or None when the folder
    holds neither layout."""
    if not folder.is_dir():
        return None
    config = folder / "config.pbtxt"
    for version in _versions(folder):
        triton = folder / str(version) / TRITON_MODEL_DIR
        if config.is_file() and (triton / "saved_model.pb").is_file():
            return SavedModelEntry(folder, triton, version, config)
        plain = folder / str(version)
        if (plain / "saved_model.pb").is_file():
            return SavedModelEntry(folder, plain, version, None)
    return None


def read_triton_config(path: Path):
    """The folder's config.pbtxt as Triton's ``ModelConfig`` (checked: a TensorFlow
    SavedModel)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    config = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(path.read_text(), config)
    except (OSError, UnicodeDecodeError, text_format.ParseError) as exc:
        raise ConfigError(f"cannot read the model config: {exc}", location=str(path)) from None
    platform = config.platform or config.backend
    if platform not in (PLATFORM, "tensorflow"):
        raise ConfigError(
            f"platform {platform!r} is not a TensorFlow SavedModel ({PLATFORM})",
            location=f"{path} platform",
            hint="hps serve runs TensorFlow SavedModels and hps packages",
        )
    return config


def _dims(shape) -> tuple[int, ...]:
    if shape.rank is None:
        raise ConfigError("a signature tensor has an unknown rank", location="signature")
    return tuple(-1 if d is None else int(d) for d in shape.as_list())


class SavedModelModel(ServedModel):
    """A TensorFlow SavedModel served by its ``serving_default`` signature."""

    kind = "saved_model"
    platform = PLATFORM
    backend = "tensorflow"

    def __init__(self, name: str, entry: SavedModelEntry):
        config = read_triton_config(entry.config_file) if entry.config_file else None
        max_batch = int(config.max_batch_size) if config is not None else 0
        super().__init__(name, None, "", max(1, max_batch))
        self.entry = entry
        self.version = str(entry.version)
        self.batched = max_batch > 0
        self.config_max_batch_size = max_batch
        self._load(config)

    def _load(self, config) -> None:
        from ..common.tf_loader import import_tensorflow

        tf = import_tensorflow("serving a SavedModel")
        self._tf = tf
        try:
            self._root = tf.saved_model.load(str(self.entry.path))
            self._serve = self._root.signatures[SIGNATURE]
        except KeyError:
            raise ConfigError(
                f"the SavedModel has no signature '{SIGNATURE}'", location=str(self.entry.path)
            ) from None
        except (OSError, ValueError, tf.errors.OpError) as exc:
            raise ConfigError(
                f"cannot load the SavedModel: {exc}", location=str(self.entry.path)
            ) from None
        inputs = dict(self._serve.structured_input_signature[1])
        outputs = dict(self._serve.structured_outputs)
        order = [t.name for t in config.input] if config is not None else sorted(inputs)
        out_order = [t.name for t in config.output] if config is not None else sorted(outputs)
        where = str(self.entry.config_file or self.entry.path)
        if sorted(order) != sorted(inputs) or sorted(out_order) != sorted(outputs):
            raise ConfigError(
                f"the config names inputs {sorted(order)} and outputs {sorted(out_order)}, the "
                f"signature has {sorted(inputs)} and {sorted(outputs)}",
                location=where,
            )
        self._dtypes = {name: inputs[name].dtype for name in order}
        self.inputs = [
            TensorSpec(n, datatype_of(inputs[n].dtype.name), _dims(inputs[n].shape), self.batched)
            for n in order
        ]
        self.outputs = [
            TensorSpec(n, datatype_of(outputs[n].dtype.name), _dims(outputs[n].shape), self.batched)
            for n in out_order
        ]
        if self.batched:
            for spec in self.inputs + self.outputs:
                if not spec.shape or spec.shape[0] != -1:
                    raise ConfigError(
                        f"max_batch_size is {self.config_max_batch_size} but '{spec.name}' has "
                        f"no batch dimension (shape {list(spec.shape)})",
                        location=where,
                        hint="set max_batch_size: 0 for tensors without a common batch dimension",
                    )

    def parameters(self) -> dict:
        return {"saved_model": str(self.entry.path), "version": self.version}

    # -- serving

    def prepare(self, request: InferRequest) -> Work:
        self.check_request(request)
        batch = None
        for spec in self.inputs:
            array = self.check_datatype(request, spec).array
            if array.ndim != len(spec.shape) or any(
                d != -1 and d != a for d, a in zip(spec.shape, array.shape)
            ):
                raise invalid(
                    f"shape {list(array.shape)} does not match {list(spec.shape)} (-1: any)",
                    spec.name,
                )
            if self.batched:
                if batch is not None and array.shape[0] != batch:
                    raise invalid(
                        f"batch size {array.shape[0]} differs from {batch} of the other inputs",
                        spec.name,
                    )
                batch = array.shape[0]
        if not self.batched:
            return Work(1, request)
        if not batch:
            raise invalid("the batch is empty (0 samples)", "inputs")
        if batch > self.max_batch_size:
            raise invalid(
                f"batch size {batch} is above max_batch_size {self.max_batch_size} of "
                f"model '{self.name}'",
                "inputs",
            )
        return Work(batch, request)

    def _call(self, arrays: dict) -> dict:
        tf = self._tf
        feed = {n: tf.constant(arrays[n], dtype=self._dtypes[n]) for n in self._dtypes}
        return {name: np.asarray(value) for name, value in self._serve(**feed).items()}

    def execute(self, works: list[Work]) -> list[InferResult]:
        if not self.batched or len(works) == 1:
            return [self._result(self._call(self._arrays(w)), None) for w in works]
        merged = {
            n: np.concatenate([w.request.inputs[n].array for w in works]) for n in self._dtypes
        }
        outputs = self._call(merged)
        results, at = [], 0
        for work in works:
            results.append(self._result(outputs, slice(at, at + work.size)))
            at += work.size
        return results

    @staticmethod
    def _arrays(work: Work) -> dict:
        return {name: tensor.array for name, tensor in work.request.inputs.items()}

    def _result(self, outputs: dict, rows: slice | None) -> InferResult:
        tensors = []
        for spec in self.outputs:
            value = outputs[spec.name] if rows is None else outputs[spec.name][rows]
            if rows is not None and value.shape[:1] != (rows.stop - rows.start,):
                raise InvalidInputError(
                    f"output '{spec.name}' does not follow the batch; cannot split it",
                    location=spec.name,
                )
            array = np.ascontiguousarray(value, dtype=DATATYPES[spec.datatype])
            tensors.append(Tensor(spec.name, spec.datatype, array))
        return InferResult(tensors)

    def warm_up(self) -> None:
        """One request of zeros (every variable dimension 1): loads the graph's kernels. A
        model that zeros do not suit (a lookup of a vocabulary without 0, say) is logged, not
        fatal: its real requests are what counts."""
        request = InferRequest(model=self.name)
        for spec in self.inputs:
            shape = [1 if d == -1 else d for d in spec.shape]
            array = np.zeros(shape, dtype=DATATYPES[spec.datatype])
            request.inputs[spec.name] = Tensor(spec.name, spec.datatype, array)
        try:
            self.execute([self.prepare(request)])
        except (InvalidInputError, self._tf.errors.OpError) as exc:
            event(
                log,
                "warm_up_failed",
                logging.WARNING,
                model=self.name,
                reason=str(exc).splitlines()[0][:300],
            )

    def close(self) -> None:
        self._serve = None
        self._root = None


def load_saved_model(name: str, folder: Path) -> SavedModelModel:
    """The served model of a repository folder holding a SavedModel (see the module doc)."""
    entry = find_saved_model(folder)
    if entry is None:
        raise ConfigError(
            "no SavedModel here (<version>/saved_model.pb, or config.pbtxt and "
            "<version>/model.savedmodel/)",
            location=str(folder),
        )
    return SavedModelModel(name, entry)
