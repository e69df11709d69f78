"""The ``config.pbtxt`` of a Triton model-repository entry for a TensorFlow SavedModel.

Triton's TensorFlow backend (``platform: "tensorflow_savedmodel"``) runs
``<repository>/<name>/<version>/model.savedmodel/``; its config names the signature's inputs and
outputs with their data types and dims. With ``max_batch_size`` > 0 every tensor's first
dimension is the batch and ``dims`` leave it out; a model whose tensors share no batch
dimension (SparseTensor components) gets ``max_batch_size: 0`` and full dims, as Triton
requires. Written as protobuf text by hand (the ``tf`` extra has no Triton protos); the tests
parse it with Triton's own ``ModelConfig``.
"""

from __future__ import annotations

import json

PLATFORM = "tensorflow_savedmodel"
MODEL_DIR = "model.savedmodel"
_TYPES = {
    "bool": "TYPE_BOOL",
    "uint8": "TYPE_UINT8",
    "uint16": "TYPE_UINT16",
    "uint32": "TYPE_UINT32",
    "uint64": "TYPE_UINT64",
    "int8": "TYPE_INT8",
    "int16": "TYPE_INT16",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
    "float16": "TYPE_FP16",
    "bfloat16": "TYPE_BF16",
    "float32": "TYPE_FP32",
    "float64": "TYPE_FP64",
    "string": "TYPE_STRING",
}


def data_type(dtype: str) -> str:
    """Triton's ``TYPE_*`` of a TensorFlow dtype name."""
    return _TYPES[dtype]


def batched(tensors: list[dict]) -> bool:
    """Whether every tensor's first dimension can be the batch (rank ≥ 1, any size)."""
    return all(t["shape"] and t["shape"][0] is None for t in tensors)


def _tensor(doc: dict, skip_batch: bool) -> str:
    dims = doc["shape"][1:] if skip_batch else doc["shape"]
    dims_text = ", ".join(str(-1 if d is None else int(d)) for d in dims)
    return (
        "  {\n"
        f"    name: {json.dumps(doc['name'])}\n"
        f"    data_type: {data_type(doc['dtype'])}\n"
        f"    dims: [ {dims_text} ]\n"
        "  }"
    )


def config_pbtxt(name: str, inputs: list[dict], outputs: list[dict], max_batch_size: int) -> str:
    """The config text. ``inputs``/``outputs``: ``{"name", "dtype", "shape"}`` of the signature;
    ``max_batch_size`` is used only when every tensor has a batch dimension (else 0)."""
    batch = max_batch_size if batched(inputs + outputs) else 0
    return (
        f"name: {json.dumps(name)}\n"
        f"platform: {json.dumps(PLATFORM)}\n"
        f"max_batch_size: {int(batch)}\n"
        "input [\n" + ",\n".join(_tensor(t, batch > 0) for t in inputs) + "\n]\n"
        "output [\n" + ",\n".join(_tensor(t, batch > 0) for t in outputs) + "\n]\n"
    )
