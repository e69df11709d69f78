"""Dissecting a Keras functional model (``.keras`` archives, Keras ``.h5`` files).

The model is loaded with the Keras that wrote it (Keras 3, or tf_keras for Keras 2 files), its
layer graph is walked from the outputs, and each selected ``Embedding`` layer's output becomes
an input of the dense part: ``Model([embedding outputs..., other inputs], model.outputs)``, as
in the HPS notebooks. The ids reaching an Embedding must come straight from a model input,
optionally through one ``IntegerLookup`` (then the table's keys are that layer's vocabulary).
Subclassed Keras models have no layer graph to cut; export them as a SavedModel instead.
"""

from __future__ import annotations

import numpy as np

from ..common.tf_loader import import_keras3, import_tensorflow, import_tf_keras
from ..runtime.errors import InvalidInputError
from .dense import save_dense
from .inspect import TableChoice
from .keras_files import TF_KERAS, layer_configs
from .plan import DirectInput, KeyMap, Lookup, ModelInput, ModelPlan, TensorSig, dense_input_names
from .source_types import H5, KERAS, Source

_NO_DENSE_HINT = "pass --no-dense to extract only the tables"
_CUSTOM_HINT = (
    "name the code of its custom classes with --custom-objects MODULE[:ATTR] (e.g. "
    "deepctr.layers:custom_objects), or dissect a SavedModel of the model (needs no code), "
    "or pass --no-dense for the tables only"
)
# Model classes that are no layers of keras.layers but that every Keras loads.
_MODEL_CLASSES = {"Functional", "Sequential", "Model", "TFOpLambda", "SlicingOpLambda"}
OOV_POLICY = (
    "rows of out-of-vocabulary buckets are not written: an id outside the vocabulary "
    "gets the table's default value (default_value_for_each_table) in HPS, not the OOV "
    "row's vector"
)


def _dtype_name(dtype) -> str:
    return dtype if isinstance(dtype, str) else getattr(dtype, "name", str(dtype))


def _shape(tensor) -> list[int | None]:
    return [None if d is None else int(d) for d in tuple(tensor.shape)]


def load_keras_model(source: Source, custom_objects: dict | None = None):
    """(model, keras module) for a Keras file, using the Keras that wrote it (tf_keras for
    Keras 2 ``.h5`` and ``.keras`` files), with ``custom_objects`` registered."""
    objects = dict(custom_objects or {})
    try:
        if source.flavour == TF_KERAS:
            keras = import_tf_keras("loading a tf_keras (Keras 2) model")
            model = keras.models.load_model(str(source.path), custom_objects=objects, compile=False)
        else:
            keras = import_keras3("loading a Keras model")
            model = keras.saving.load_model(str(source.path), custom_objects=objects, compile=False)
    # tf_keras fails with TypeError ('str' object is not callable) or IndexError deep inside
    # when a class is unknown or of the other Keras.
    except (
        ValueError,
        TypeError,
        KeyError,
        AttributeError,
        IndexError,
        ImportError,
        OSError,
    ) as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        text = text.split(". ")[0]  # Keras goes on with advice for its own API
        unknown = unregistered_classes(source, objects)
        raise InvalidInputError(
            f"Keras cannot load this model: {text[:300]}"
            + (f" (classes Keras does not know: {', '.join(unknown[:12])})" if unknown else ""),
            location=str(source.path),
            hint=("" if unknown else "if the model has custom layers: ") + _CUSTOM_HINT,
        ) from exc
    return model, keras


def unregistered_classes(source: Source, custom_objects: dict) -> list[str]:
    """Class names in the model config that neither its Keras nor ``custom_objects`` know,
    with the module the config records (``.keras`` files: ``deepctr.layers.utils.Concat``)."""
    try:
        keras = (
            import_tf_keras("reading a Keras 2 model")
            if source.flavour == TF_KERAS
            else import_keras3("reading a Keras model")
        )
        registered = set(keras.saving.get_custom_objects())
    except Exception:  # a hint only: without Keras there is nothing to compare with
        return []
    known = set(dir(keras.layers)) | _MODEL_CLASSES | registered | set(custom_objects)
    found = []
    for config in layer_configs(source.keras_config).values():
        cls, module = str(config.get("class_name") or ""), config.get("module")
        if module and str(module).split(".")[0] in ("keras", TF_KERAS):
            continue  # Keras's own (.keras configs record the module)
        if not cls or cls in known or cls.split(">")[-1] in custom_objects:
            continue
        name = f"{module}.{cls}" if module else cls
        if name not in found:
            found.append(name)
    return sorted(found)


def _history(tensor):
    history = tensor._keras_history
    return history[0], history[1]


def _node_inputs(layer, node_index: int) -> list:
    tf = import_tensorflow()
    node = layer._inbound_nodes[node_index]
    inputs = getattr(node, "keras_inputs", None)
    if inputs is None:
        inputs = node.input_tensors
    return [t for t in tf.nest.flatten(inputs) if hasattr(t, "_keras_history")]


def _node_outputs(layer, node_index: int) -> list:
    tf = import_tensorflow()
    node = layer._inbound_nodes[node_index]
    outputs = getattr(node, "output_tensors", None)
    if outputs is None:
        outputs = node.outputs
    return tf.nest.flatten(outputs)


def _is_input(layer) -> bool:
    return type(layer).__name__ == "InputLayer"


class KerasPlan(ModelPlan):
    cut = "keras_functional"
    variables_kept = True

    def __init__(
        self, source: Source, choices: list[TableChoice], custom_objects: dict | None = None
    ):
        super().__init__()
        if source.format not in (KERAS, H5):
            raise ValueError(source.format)
        self.location = str(source.path)
        self.model, self.keras = load_keras_model(source, custom_objects)
        model = self.model
        graph_net = getattr(model, "_is_graph_network", None)
        if graph_net is None:
            graph_net = type(model).__name__ in ("Functional", "Sequential")
        if not graph_net or not getattr(model, "outputs", None):
            raise InvalidInputError(
                f"{type(model).__name__} is a subclassed Keras model: it has no layer graph to cut",
                location=self.location,
                hint="save it with model.export(DIR) or tf.saved_model.save and dissect the "
                "SavedModel, or " + _NO_DENSE_HINT,
            )
        self.input_layers = [_history(t)[0] for t in model.inputs]
        self.inputs = [
            ModelInput(layer.name, _dtype_name(t.dtype), _shape(t))
            for layer, t in zip(self.input_layers, model.inputs)
        ]
        layers = {id(layer): layer for layer in model.layers}
        by_variable = self._embedding_layers(choices, layers)
        used = self._walk(stop=set())
        lookups = []
        for choice in choices:
            layer = by_variable[choice.variable.name]
            nodes = sorted(ni for (lid, ni) in used if lid == id(layer))
            if not nodes:
                raise InvalidInputError(
                    f"Embedding layer '{layer.name}' is not used by the model's outputs",
                    location=self.location,
                )
            for node_index in nodes:
                lookups.append((choice, layer, node_index))
        stops = {(id(layer), ni) for _, layer, ni in lookups}
        needed = self._walk(stop=stops)
        names = dense_input_names(
            [(self._trace_ids(layer, ni)[0].name, choice.name) for choice, layer, ni in lookups],
            taken={i.name for i in self.inputs},
        )
        cut_tensors = []
        for (choice, layer, node_index), dense_name in zip(lookups, names):
            input_layer, lookup_layer = self._trace_ids(layer, node_index)
            out = _node_outputs(layer, node_index)[0]
            cut_tensors.append(out)
            model_input = self.input(input_layer.name)
            ids_per_sample = (
                int(np.prod(model_input.shape[1:]))
                if all(d is not None for d in model_input.shape[1:])
                else None
            )
            keys = (
                self._key_map(lookup_layer, choice.variable.shape[0]) if lookup_layer else KeyMap()
            )
            self.lookups.append(
                Lookup(
                    choice.variable.name,
                    input_layer.name,
                    "none",
                    ids_per_sample,
                    TensorSig(dense_name, _dtype_name(out.dtype), _shape(out)),
                    keys,
                )
            )
        direct_layers = [layer for layer in self.input_layers if (id(layer), 0) in needed]
        direct_tensors = [
            t for layer, t in zip(self.input_layers, model.inputs) if layer in direct_layers
        ]
        for layer, tensor in zip(direct_layers, direct_tensors):
            self.direct.append(
                DirectInput(
                    layer.name, TensorSig(layer.name, _dtype_name(tensor.dtype), _shape(tensor))
                )
            )
        output_names = list(getattr(model, "output_names", None) or [])
        if len(output_names) != len(model.outputs):
            output_names = [f"output_{i}" for i in range(len(model.outputs))]
        self.outputs = [
            TensorSig(name, _dtype_name(t.dtype), _shape(t))
            for name, t in zip(output_names, model.outputs)
        ]
        try:
            self.dense_model = self.keras.Model(
                inputs=cut_tensors + direct_tensors,
                outputs=model.outputs,
                name=f"{model.name}_dense",
            )
        except ValueError as exc:
            raise InvalidInputError(
                f"cannot cut the model at its embeddings: {exc}",
                location=self.location,
                hint=_NO_DENSE_HINT,
            ) from exc

    def _embedding_layers(self, choices: list[TableChoice], layers: dict) -> dict:
        found = {}
        for choice in choices:
            var = choice.variable
            match = None
            for layer in layers.values():
                names = {
                    w.path if hasattr(w, "path") else w.name.split(":")[0] for w in layer.weights
                }
                if layer.name == var.layer or var.name in names:
                    match = layer
                    break
            if match is None:
                raise InvalidInputError(
                    f"table variable '{var.name}' belongs to no top-level layer of the model "
                    "(nested models are not cut)",
                    location=self.location,
                    hint=_NO_DENSE_HINT,
                )
            if type(match).__name__ != "Embedding":
                raise InvalidInputError(
                    f"table variable '{var.name}' belongs to layer '{match.name}' "
                    f"({type(match).__name__}), not an Embedding: dissect cuts Keras models at "
                    "Embedding outputs only",
                    location=self.location,
                    hint=_NO_DENSE_HINT,
                )
            found[var.name] = match
        return found

    def _walk(self, stop: set) -> set:
        """(layer id, node index) of every node the outputs depend on, not crossing ``stop``."""
        seen: set = set()
        stack = [_history(t) for t in self.model.outputs]
        while stack:
            layer, node_index = stack.pop()
            key = (id(layer), node_index)
            if key in seen:
                continue
            seen.add(key)
            if key in stop or _is_input(layer):
                continue
            stack.extend(_history(t) for t in _node_inputs(layer, node_index))
        return seen

    def _trace_ids(self, layer, node_index):
        """(InputLayer, IntegerLookup or None) the ids of an Embedding call come from."""
        inputs = _node_inputs(layer, node_index)
        lookup = None
        while True:
            if len(inputs) != 1:
                raise InvalidInputError(
                    f"layer '{layer.name}' takes {len(inputs)} inputs; expected the ids only",
                    location=self.location,
                )
            source, source_node = _history(inputs[0])
            kind = type(source).__name__
            if _is_input(source):
                return source, lookup
            if kind == "IntegerLookup" and lookup is None:
                lookup = source
                layer, inputs = source, _node_inputs(source, source_node)
                continue
            raise InvalidInputError(
                f"the ids of Embedding '{layer.name}' come from layer '{source.name}' ({kind}); "
                "dissect maps ids to keys only for Input -> [IntegerLookup] -> Embedding",
                location=self.location,
                hint=_NO_DENSE_HINT,
            )

    def _key_map(self, lookup, table_rows: int) -> KeyMap:
        config = lookup.get_config()
        if config.get("invert") or config.get("output_mode", "int") != "int":
            raise InvalidInputError(
                f"IntegerLookup '{lookup.name}' must have output_mode='int' "
                "and invert=False to feed an Embedding",
                location=self.location,
            )
        vocab = np.asarray(lookup.get_vocabulary(include_special_tokens=False), dtype=np.int64)
        rows = np.asarray(lookup(vocab), dtype=np.int64).reshape(-1)
        keys = vocab
        mask_token, mask_row = config.get("mask_token"), None
        if mask_token is not None:
            mask_row = int(
                np.asarray(lookup(np.asarray([mask_token], dtype=np.int64))).reshape(-1)[0]
            )
            keys = np.concatenate([np.asarray([mask_token], dtype=np.int64), keys])
            rows = np.concatenate([np.asarray([mask_row], dtype=np.int64), rows])
        if rows.size and (rows.min() < 0 or rows.max() >= table_rows):
            raise InvalidInputError(
                f"IntegerLookup '{lookup.name}' maps ids to rows outside the "
                f"table's {table_rows} rows",
                location=self.location,
            )
        if np.unique(rows).size != rows.size:
            raise InvalidInputError(
                f"IntegerLookup '{lookup.name}' maps two ids to one row", location=self.location
            )
        unmapped = np.setdiff1d(np.arange(table_rows), rows)
        details = {
            "layer": lookup.name,
            "vocabulary_size": int(vocab.size),
            "num_oov_indices": int(config.get("num_oov_indices", 1)),
            "oov_rows": [int(r) for r in unmapped[:64]],
            "unwritten_rows": int(unmapped.size),
            "mask_token": None if mask_token is None else int(mask_token),
            "mask_row": mask_row,
            "oov_policy": OOV_POLICY,
        }
        return KeyMap("integer_lookup_vocabulary", keys, rows, details)

    def export_dense(self, dest) -> None:
        model = self.dense_model
        save_dense(
            dest,
            lambda args: model(args, training=False),
            self.dense_signature,
            self.outputs,
            model.variables,
        )

    def predict(self, feed: dict) -> dict:
        tf = import_tensorflow()
        args = [np.asarray(feed[i.name]) for i in self.inputs]
        result = tf.nest.flatten(self.model(args if len(args) > 1 else args[0], training=False))
        return {sig.name: np.asarray(t) for sig, t in zip(self.outputs, result)}

    def table_values(self, variable: str) -> np.ndarray:
        """The loaded model's value of a table variable (for the table check)."""
        for layer in self.model.layers:
            for w in layer.weights:
                name = w.path if hasattr(w, "path") else w.name.split(":")[0]
                if name == variable:
                    return np.asarray(w.numpy())
        raise KeyError(variable)
