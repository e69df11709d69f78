"""``export_saved_model``: a Keras model with HPS lookup layers as a SavedModel that needs only
TensorFlow (TF Serving, Triton's TensorFlow backend, ``tf.saved_model.load`` without hps).

    import hps_cli.tf as hps
    model = hps.load_model("package/")            # or a model built with hps.LookupLayer ...
    hps.export_saved_model(model, "export/1")     # signature serving_default

The model is traced once, in ``export_context.exporting``: every HPS lookup becomes a stock-op
lookup into the table embedded as variables (static_tables.py; a table that several layers
read is embedded once), and every ``DenseSavedModel`` is saved with it. The signature takes
flat tensors: a dense input under its name, a SparseTensor input as three tensors
(``indices`` int64 ``[nnz, rank]``, ``values`` ``[nnz]``, ``dense_shape`` int64 ``[rank]``)
named ``<input>_indices``, ``<input>_values``, ``<input>_dense_shape`` unless
``sparse_components`` names them; outputs are named by ``output_names`` (default: the model's).
Input names are made what TensorFlow's loader calls them (letters, digits and ``_``, starting
with a letter; ``a.b`` becomes ``a_b``), so the SignatureDef that TF Serving and Triton read and
the restored signature in Python take the same names.

The tables are read from the files of the layers' config (``sparse_files``), not from the
running runtime: rows inserted through ``hps serve``'s admin API are not in the export.
"""

from __future__ import annotations

import keyword
from dataclasses import dataclass
from pathlib import Path

import tensorflow as tf

from ..runtime.atomic import AtomicDirectory
from ..runtime.errors import InvalidInputError
from . import export_context
from .embedded_tables import DEFAULT_MAX_TABLE_BYTES, EmbeddedTables

SIGNATURE = "serving_default"
SPARSE_PARTS = ("indices", "values", "dense_shape")


@dataclass(frozen=True)
class SignatureTensor:
    """A signature input or output: name, dtype name, shape (None: any size)."""

    name: str
    dtype: str
    shape: tuple

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass
class ExportResult:
    path: Path
    inputs: list[SignatureTensor]
    outputs: list[SignatureTensor]
    tables: list[dict]  # model, table, path, rows, dim, raw_bytes

    @property
    def raw_bytes(self) -> int:
        return sum(t["raw_bytes"] for t in self.tables)

    def to_dict(self) -> dict:
        return {
            "signature": SIGNATURE,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "tables": [
                {k: t[k] for k in ("table", "rows", "dim", "raw_bytes")} for t in self.tables
            ],
            "raw_bytes": self.raw_bytes,
        }


def signature_name(name: str) -> str:
    """``name`` as tf.saved_model.load names a signature argument (so both agree)."""
    swapped = "".join(c if c.isalnum() and c.isascii() else "_" for c in name) or "arg"
    result = swapped if swapped[0].isalpha() else f"arg_{swapped}"
    return f"{result}_" if keyword.iskeyword(result) else result


def _is_sparse(tensor) -> bool:
    spec = getattr(tensor, "type_spec", None)
    return bool(getattr(tensor, "sparse", False)) or isinstance(spec, tf.SparseTensorSpec)


def model_input_signature(model) -> dict:
    """``{name: TensorSpec or SparseTensorSpec}`` of a functional Keras model's inputs."""
    inputs = getattr(model, "inputs", None)
    if not inputs:
        raise InvalidInputError(
            "the model has no declared inputs (a subclassed model)",
            location="input_signature",
            hint="pass input_signature: {name: tf.TensorSpec or tf.SparseTensorSpec}",
        )
    specs = {}
    for i, tensor in enumerate(inputs):
        name = (getattr(tensor, "name", None) or f"input_{i}").split(":")[0]
        shape = tf.TensorShape(tuple(tensor.shape))
        dtype = tf.as_dtype(tensor.dtype)
        specs[name] = (
            tf.SparseTensorSpec(shape, dtype) if _is_sparse(tensor) else tf.TensorSpec(shape, dtype)
        )
    return specs


def _named_specs(input_signature) -> list[tuple[str, object]]:
    if isinstance(input_signature, dict):
        return list(input_signature.items())
    return [
        (getattr(spec, "name", None) or f"input_{i}", spec)
        for i, spec in enumerate(input_signature)
    ]


def _flat_signature(specs: list, sparse_components: dict | None) -> tuple[list, list]:
    """(flat TensorSpecs of the signature, per model input: how many tensors it takes)."""
    flat, layout = [], []
    for i, (name, spec) in enumerate(specs):
        if isinstance(spec, tf.SparseTensorSpec):
            rank = spec.shape.rank
            if rank is None:
                raise InvalidInputError(
                    f"sparse input '{name}' needs a known rank", location="input_signature"
                )
            parts = (sparse_components or {}).get(name) or {
                part: f"{name}_{part}" for part in SPARSE_PARTS
            }
            flat += [
                tf.TensorSpec([None, rank], tf.int64, name=signature_name(parts["indices"])),
                tf.TensorSpec([None], spec.dtype, name=signature_name(parts["values"])),
                tf.TensorSpec([rank], tf.int64, name=signature_name(parts["dense_shape"])),
            ]
            layout.append(3)
        elif isinstance(spec, tf.TensorSpec):
            flat.append(tf.TensorSpec(spec.shape, spec.dtype, name=signature_name(name)))
            layout.append(1)
        else:
            raise InvalidInputError(
                f"input {i} is a {type(spec).__name__}; give tf.TensorSpec or tf.SparseTensorSpec",
                location="input_signature",
            )
    names = [s.name for s in flat]
    if len(set(names)) != len(names):
        raise InvalidInputError(
            f"the signature's input names are not unique: {names}", location="input_signature"
        )
    return flat, layout


def _output_names(model, count: int, given: list[str] | None) -> list[str]:
    names = list(given) if given else list(getattr(model, "output_names", None) or [])
    if len(names) != count:
        names = [f"output_{i}" for i in range(count)] if not given else names
    if len(names) != count or len(set(names)) != count:
        raise InvalidInputError(
            f"output_names {names} do not name the model's {count} output(s) once each",
            location="output_names",
        )
    return names


def _named_outputs(outputs, model, given: list[str] | None) -> dict:
    if isinstance(outputs, dict):
        return dict(outputs)
    values = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
    return dict(zip(_output_names(model, len(values), given), values))


def _describe(spec) -> SignatureTensor:
    shape = tuple(spec.shape.as_list()) if spec.shape.rank is not None else ()
    return SignatureTensor(spec.name, spec.dtype.name, shape)


def export_saved_model(
    model,
    export_dir: Path | str,
    *,
    input_signature: list | None = None,
    sparse_components: dict | None = None,
    output_names: list[str] | None = None,
    max_table_bytes: int = DEFAULT_MAX_TABLE_BYTES,
    overwrite: bool = False,
    size_option: str = "max_table_bytes",
) -> ExportResult:
    """Write ``model`` (Keras 3 or tf_keras, with HPS lookup layers) as a SavedModel at
    ``export_dir`` that TensorFlow alone runs; atomically.

    Args:
        input_signature: ``{name: tf.TensorSpec or tf.SparseTensorSpec}`` in the model's input
            order, or a list of named specs (default: the functional model's inputs).
        sparse_components: ``{input: {"indices": name, "values": name, "dense_shape": name}}``
            for the signature's tensors of a SparseTensor input.
        output_names: the signature's output names (default: the model's output names).
        max_table_bytes: refuse (``InvalidInputError``) when the embedded tables' keys and rows
            would exceed this many bytes; ``size_option`` names the setting in that error.
    """
    specs = _named_specs(input_signature or model_input_signature(model))
    flat, layout = _flat_signature(specs, sparse_components)

    def serve(*tensors):
        inputs, at = [], 0
        for count in layout:
            part = tensors[at : at + count]
            inputs.append(tf.SparseTensor(*part) if count == 3 else part[0])
            at += count
        outputs = model(inputs if len(inputs) > 1 else inputs[0], training=False)
        return _named_outputs(outputs, model, output_names)

    tables = EmbeddedTables(max_table_bytes, size_option)
    function = tf.function(serve, input_signature=flat, autograph=False)
    try:
        with export_context.exporting(tables):
            concrete = function.get_concrete_function()
    except Exception:
        if tables.error is not None:  # ours, as raised (Keras rewraps errors from call())
            raise tables.error from None
        raise
    root = tf.Module()
    root.hps_tables = list(tables.tables.values())
    root.dense_parts = list(tables.tracked)
    embedded = {id(v) for t in root.hps_tables for v in (t.keys, t.rows) if v is not None}
    root.model_variables = [v for v in concrete.variables if id(v) not in embedded]
    work = AtomicDirectory(export_dir, overwrite=overwrite)
    try:
        tf.saved_model.save(root, str(work.path), signatures={SIGNATURE: concrete})
        work.commit()
    finally:
        work.abort()  # nothing once committed
    inputs = [_describe(s) for s in concrete.structured_input_signature[0]]
    returned = concrete.structured_outputs
    order = [n for n in output_names or [] if n in returned] or sorted(returned)
    outputs = [
        SignatureTensor(name, returned[name].dtype.name, tuple(returned[name].shape.as_list()))
        for name in order
    ]
    return ExportResult(Path(export_dir), inputs, outputs, tables.described)
