"""Dissecting a SavedModel by cutting its serving graph at the embedding lookups.

Works for any SavedModel, whoever wrote it (Keras 3 ``export``, tf_keras ``save``,
``tf.saved_model.save`` of subclassed models such as the HPS notebooks' ``tf.Variable`` +
``embedding_lookup_sparse`` pattern), without the model's code:

1. load it with ``tf.saved_model.load`` and take the serving signature's concrete function;
2. inline its function calls and freeze every variable except the tables to constants
   (TensorFlow's own ``convert_to_constants`` machinery, with the tables on its deny list);
3. find each table's lookups: ``GatherV2``/``ResourceGather`` on the table, and a
   ``SparseSegment{Sum,Mean,SqrtN}`` right after it for ``embedding_lookup_sparse`` (the cut is
   then after the combiner, giving one vector per sample, like HPS's ``SparseLookupLayer``);
4. trace the looked-up ids back to a signature input (through casts and index fix-ups), noting a
   ``LookupTableFindV2`` (an IntegerLookup/StaticHashTable), whose exported contents give keys;
5. prune the graph to ``[lookup results..., other inputs] -> outputs`` and save it.

The dense part's weights become constants of its graph (fine for inference; a dense part over
2 GB would exceed the protobuf limit). Control dependencies are dropped, so ops kept alive only
by them (assertions, prints) are not in the dense part.
"""

from __future__ import annotations

from collections import defaultdict, deque

import numpy as np

from ..common.tf_loader import import_tensorflow
from ..runtime.errors import InvalidInputError
from .dense import save_dense
from .graph_usage import COMBINERS, GATHERS, PASS_THROUGH
from .inspect import TableChoice
from .model_keras import OOV_POLICY
from .plan import (
    DirectInput,
    KeyMap,
    Lookup,
    ModelInput,
    ModelPlan,
    TensorSig,
    dense_input_names,
)
from .source_types import Source

# The graph ops that pass a variable through, gather from it, or combine gathered rows: the
# same vocabulary graph_usage.py scans saved_model.pb with.
PASS = PASS_THROUGH
_NO_DENSE_HINT = "pass --no-dense to extract only the tables"


def _src(name: str) -> str:
    return name.lstrip("^").split(":", 1)[0]


def _tensor(name: str) -> str:
    """A GraphDef input reference as a tensor name (``node:0``)."""
    base, _, index = name.partition(":")
    return f"{base}:{index or 0}"


class GraphPlan(ModelPlan):
    cut = "graph"
    variables_kept = False

    def __init__(self, source: Source, choices: list[TableChoice], signature: str | None = None):
        super().__init__()
        tf = import_tensorflow("cutting a SavedModel")
        self.tf = tf
        self.location = str(source.path)
        try:
            self.loaded = tf.saved_model.load(self.location)
        except Exception as exc:  # TF raises many types here; all mean "cannot load"
            text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise InvalidInputError(
                f"TensorFlow cannot load this SavedModel: {text[:300]}",
                location=self.location,
                hint=_NO_DENSE_HINT,
            ) from exc
        self.signature = self._pick_signature(signature)
        self.fn = self.loaded.signatures[self.signature]
        self._read_inputs()
        captures = self._captures()
        tables = self._table_placeholders(choices, captures)
        self.graph_def = self._frozen_graph(set(tables))
        self.nodes = {n.name: n for n in self.graph_def.node}
        self.consumers: dict[str, list] = defaultdict(list)
        for node in self.graph_def.node:
            for index, name in enumerate(node.input):
                self.consumers[_src(name)].append((node, index))
        self.static = self._static_graph()
        found = []  # (choice, cut node, combiner, ids input, lookup-table node or None)
        for placeholder, choice in tables.items():
            gathers = self._gathers(placeholder)
            if not gathers:
                raise InvalidInputError(
                    f"the serving graph never looks rows of '{choice.variable.name}' up",
                    location=self.location,
                    hint=_NO_DENSE_HINT,
                )
            for gather in gathers:
                cut, combiner = self._cut_after(gather)
                model_input, table_node = self._trace_ids(gather, choice)
                found.append((choice, gather, cut, combiner, model_input, table_node))
        names = dense_input_names(
            [(f[4], f[0].name) for f in found],
            taken={i.name for i in self.inputs} | set(self.flat_inputs),
        )
        self._cuts = []
        for (choice, gather, cut, combiner, model_input, table_node), name in zip(found, names):
            dim = choice.variable.shape[1]
            spec = self.input(model_input)
            if combiner == "none":
                ids_shape = self._shape(gather.input[1])
                if (ids_shape is None or None in ids_shape[1:]) and spec.format == "dense":
                    ids_shape = [None] + list(spec.shape[1:])  # ids keep the input's shape
                shape = ids_shape + [dim] if ids_shape is not None else [None, None, dim]
            else:
                shape = [None, dim]
            per_sample = spec.shape[1:]
            ids_per_sample = (
                int(np.prod(per_sample))
                if per_sample and all(d is not None for d in per_sample)
                else (1 if not per_sample else None)
            )
            keys = self._key_map(table_node, choice) if table_node is not None else KeyMap()
            self.lookups.append(
                Lookup(
                    choice.variable.name,
                    model_input,
                    combiner,
                    ids_per_sample,
                    TensorSig(name, "float32", shape),
                    keys,
                )
            )
            self._cuts.append(f"{cut.name}:0")
        self._read_outputs()
        self.direct_inputs = self._dense_inputs({c.split(":")[0] for c in self._cuts}, tables)
        for flat in self.direct_inputs:
            spec = self.flat_inputs[flat]
            self.direct.append(
                DirectInput(flat, TensorSig(flat, spec.dtype.name, _dims(spec.shape)))
            )

    # -- reading the signature ------------------------------------------------------------

    def _pick_signature(self, wanted: str | None) -> str:
        names = [n for n in self.loaded.signatures.keys() if not n.startswith("__")]
        if wanted:
            if wanted not in names:
                raise InvalidInputError(
                    f"no signature '{wanted}' (has: {', '.join(names) or 'none'})",
                    location=self.location,
                )
            return wanted
        if "serving_default" in names:
            return "serving_default"
        if len(names) == 1:
            return names[0]
        raise InvalidInputError(
            f"no serving_default signature (has: {', '.join(names) or 'none'})",
            location=self.location,
            hint=_NO_DENSE_HINT,
        )

    def _read_inputs(self) -> None:
        kwargs = self.fn.structured_input_signature[1]
        self.flat_inputs = dict(kwargs)
        self.placeholder_of = self._placeholders(kwargs)
        self.input_of = {ph: key for key, ph in self.placeholder_of.items()}
        sparse_shapes = self._sparse_specs()
        grouped: set[str] = set()
        for name, spec in sorted(kwargs.items()):
            values, shape_part = kwargs.get(f"{name}_1"), kwargs.get(f"{name}_2")
            if (
                values is not None
                and shape_part is not None
                and spec.dtype.name == "int64"
                and _dims(spec.shape) == [None, 2]
                and _dims(shape_part.shape) == [2]
            ):
                dense_shape = sparse_shapes.get(name) or self._sparse_fallback or [None, None]
                self.inputs.append(
                    ModelInput(
                        name,
                        values.dtype.name,
                        dense_shape,
                        "sparse",
                        {"indices": name, "values": f"{name}_1", "dense_shape": f"{name}_2"},
                    )
                )
                grouped |= {name, f"{name}_1", f"{name}_2"}
        for name, spec in sorted(kwargs.items()):
            if name not in grouped:
                self.inputs.append(ModelInput(name, spec.dtype.name, _dims(spec.shape)))
        self.component_of = {}
        for spec in self.inputs:
            for part in (spec.components or {name: name for name in [spec.name]}).values():
                self.component_of[part] = spec.name

    def _placeholders(self, kwargs: dict) -> dict[str, str]:
        """Signature input name -> the name of its placeholder in the graph.

        TensorFlow sanitizes placeholder names (``C1`` -> ``c1``, ``user-id`` -> ``user_id``,
        and uniquifies them: ``x``, ``x_1``) while the signature keeps the names clients send,
        so the two are matched by position: the function's parameters come in the order of its
        inputs (the captured variables follow them).
        """
        try:
            params = list(self.fn.function_type.parameters)
        except AttributeError:  # older TensorFlow: the same list under its former name
            params = list(getattr(self.fn, "_arg_keywords", None) or [])
        mapping = {
            key: tensor.op.name for key, tensor in zip(params, self.fn.inputs) if key in kwargs
        }
        missing = sorted(set(kwargs) - set(mapping))
        if missing:
            raise InvalidInputError(
                f"cannot match the signature inputs {', '.join(missing)} to graph placeholders",
                location=self.location,
                hint=_NO_DENSE_HINT,
            )
        return mapping

    def _sparse_specs(self) -> dict[str, list]:
        """Dense shapes of SparseTensor inputs, from the restored functions' own signatures.

        The flattened serving signature drops a SparseTensor's static shape; the functions the
        object carries still have it. Matched by argument name, else (one sparse input) taken
        when every SparseTensorSpec found agrees.
        """
        tf = self.tf
        by_name: dict[str, list] = {}
        seen: set[tuple] = set()
        for attr in dir(self.loaded):
            if attr.startswith("__") and attr != "__call__":
                continue
            try:
                func = getattr(self.loaded, attr)
            except Exception:
                continue
            for concrete in getattr(func, "concrete_functions", None) or []:
                try:
                    names = list(concrete.function_type.parameters)
                    args, kwargs = concrete.structured_input_signature
                except (AttributeError, TypeError, ValueError):
                    continue
                for name, arg in list(zip(names, args)) + list(kwargs.items()):
                    for spec in tf.nest.flatten(arg, expand_composites=False):
                        if isinstance(spec, tf.SparseTensorSpec):
                            if spec is arg:
                                by_name.setdefault(name, _dims(spec.shape))
                            seen.add(tuple(_dims(spec.shape)))
        self._sparse_fallback = list(seen.pop()) if len(seen) == 1 else None
        return by_name

    def _read_outputs(self) -> None:
        structured = self.fn.structured_outputs
        if isinstance(structured, dict):
            keys = sorted(structured)
            specs = [structured[k] for k in keys]
        else:
            specs = self.tf.nest.flatten(structured)
            keys = [f"output_{i}" for i in range(len(specs))]
        self.output_tensors = [t.name for t in self.fn.outputs]
        self.outputs = [TensorSig(k, s.dtype.name, _dims(s.shape)) for k, s in zip(keys, specs)]

    def _captures(self) -> dict[str, tuple[str, object]]:
        by_handle = {id(v.handle): v for v in self.fn.variables}
        out = {}
        for value, placeholder in self.fn.graph.captures:
            name = placeholder.name.split(":")[0]
            var = by_handle.get(id(value))
            out[name] = ("variable", var) if var is not None else ("resource", value)
        return out

    def _table_placeholders(self, choices, captures) -> dict[str, TableChoice]:
        tables = {}
        self.table_variables = {}
        for choice in choices:
            want = choice.variable
            hits = [
                name
                for name, (kind, var) in captures.items()
                if kind == "variable"
                and var.name.split(":")[0] == want.name
                and tuple(var.shape) == want.shape
            ]
            if not hits:
                raise InvalidInputError(
                    f"the '{self.signature}' signature does not use table '{want.name}'",
                    location=self.location,
                    hint=_NO_DENSE_HINT,
                )
            tables[hits[0]] = choice
            self.table_variables[want.name] = captures[hits[0]][1]
        self.captures = captures
        return tables

    def _frozen_graph(self, keep: set[str]):
        from tensorflow.python.framework import convert_to_constants as c2c

        try:
            data = c2c._FunctionConverterDataInEager(
                func=self.fn,
                lower_control_flow=False,
                aggressive_inlining=True,
                variable_names_denylist=keep,
            )
            graph_def, _ = c2c._replace_variables_by_constants(data)
        except Exception as exc:
            raise InvalidInputError(
                f"cannot inline and freeze the serving graph: {exc}",
                location=self.location,
                hint=_NO_DENSE_HINT,
            ) from exc
        for node in graph_def.node:  # ordering-only edges would keep the tables alive
            kept = [name for name in node.input if not name.startswith("^")]
            del node.input[:]
            node.input.extend(kept)
        return graph_def

    def _static_graph(self):
        tf = self.tf
        graph = tf.Graph()
        with graph.as_default():
            tf.graph_util.import_graph_def(self.graph_def, name="")
        return graph

    def _shape(self, name: str) -> list | None:
        shape = self.static.get_tensor_by_name(_tensor(name)).shape
        return None if shape.rank is None else _dims(shape)

    # -- finding lookups ------------------------------------------------------------------

    def _gathers(self, placeholder: str) -> list:
        found, seen, stack = [], {placeholder}, [placeholder]
        while stack:
            for node, index in self.consumers.get(stack.pop(), []):
                if node.op in PASS and node.name not in seen:
                    seen.add(node.name)
                    stack.append(node.name)
                elif node.op in GATHERS and index == 0:
                    if node.op == "GatherV2" and not self._axis_zero(node):
                        raise InvalidInputError(
                            f"'{node.name}' gathers along a non-zero axis",
                            location=self.location,
                            hint=_NO_DENSE_HINT,
                        )
                    found.append(node)
        return found

    def _axis_zero(self, node) -> bool:
        axis = self.nodes.get(_src(node.input[2]))
        if axis is None or axis.op != "Const" or node.attr["batch_dims"].i != 0:
            return False
        return int(self.tf.make_ndarray(axis.attr["value"].tensor).reshape(-1)[0]) == 0

    def _cut_after(self, gather):
        """The gather itself, or the sparse-segment combiner right after it."""
        frontier, seen, users = [gather.name], {gather.name}, []
        while frontier:
            for node, index in self.consumers.get(frontier.pop(), []):
                if node.op == "Identity" and node.name not in seen:
                    seen.add(node.name)
                    frontier.append(node.name)
                else:
                    users.append((node, index))
        combiners = [(n, i) for n, i in users if n.op in COMBINERS and i == 0]
        if combiners and len(users) == len(combiners) == 1:
            return combiners[0][0], COMBINERS[combiners[0][0].op]
        if combiners:
            raise InvalidInputError(
                f"the rows gathered by '{gather.name}' are combined and also used otherwise",
                location=self.location,
                hint=_NO_DENSE_HINT,
            )
        if any(n.op in ("Mul", "SegmentSum", "UnsortedSegmentSum") for n, _ in users):
            raise InvalidInputError(
                f"the rows gathered by '{gather.name}' are combined with "
                "weights (embedding_lookup_sparse with sp_weights), which HPS "
                "lookups do not do",
                location=self.location,
                hint=_NO_DENSE_HINT,
            )
        return gather, "none"

    def _trace_ids(self, gather, choice):
        """(model input the ids come from, LookupTableFindV2 node or None)."""
        reached, tables = set(), []
        seen, stack = set(), [_src(gather.input[1])]
        while stack:
            name = stack.pop()
            if name in seen:
                continue
            seen.add(name)
            node = self.nodes.get(name)
            if node is None:
                continue
            if node.op == "Placeholder":
                key = self.input_of.get(name)
                if key is not None:
                    reached.add(self.component_of.get(key, key))
                continue
            if node.op in ("LookupTableFindV2", "LookupTableFind"):
                tables.append(node)
            stack.extend(_src(i) for i in node.input)
        if len(reached) != 1:
            raise InvalidInputError(
                f"the ids looked up in '{choice.variable.name}' depend on "
                f"{len(reached)} model inputs ({', '.join(sorted(reached)) or 'none'}); "
                "expected exactly one",
                location=self.location,
                hint=_NO_DENSE_HINT,
            )
        if len(tables) > 1:
            raise InvalidInputError(
                f"the ids of '{choice.variable.name}' pass through {len(tables)} lookup tables",
                location=self.location,
                hint=_NO_DENSE_HINT,
            )
        return reached.pop(), (tables[0] if tables else None)

    def _key_map(self, table_node, choice) -> KeyMap:
        tf = self.tf
        handle_name = _src(table_node.input[0])
        while self.nodes[handle_name].op in PASS:
            handle_name = _src(self.nodes[handle_name].input[0])
        kind, handle = self.captures.get(handle_name, (None, None))
        if kind != "resource":
            raise InvalidInputError(
                f"cannot read the vocabulary of '{table_node.name}'",
                location=self.location,
                hint=_NO_DENSE_HINT,
            )
        keys, rows = tf.raw_ops.LookupTableExportV2(
            table_handle=handle,
            Tkeys=table_node.attr["Tin"].type,
            Tvalues=table_node.attr["Tout"].type,
        )
        keys = np.asarray(keys).astype(np.int64)
        rows = np.asarray(rows).astype(np.int64)
        order = np.argsort(rows, kind="stable")
        keys, rows = keys[order], rows[order]
        total = choice.variable.shape[0]
        if rows.size and (
            rows.min() < 0 or rows.max() >= total or np.unique(rows).size != rows.size
        ):
            raise InvalidInputError(
                f"the vocabulary of '{table_node.name}' does not map ids to "
                f"distinct rows of the {total}-row table",
                location=self.location,
                hint=_NO_DENSE_HINT,
            )
        unmapped = np.setdiff1d(np.arange(total), rows)
        layer = table_node.name.split("/")
        details = {
            "layer": "/".join(layer[:-2]) if len(layer) > 2 else table_node.name,
            "vocabulary_size": int(keys.size),
            "num_oov_indices": None,
            "oov_rows": [int(r) for r in unmapped[:64]],
            "unwritten_rows": int(unmapped.size),
            "mask_token": None,
            "mask_row": None,
            "oov_policy": OOV_POLICY
            + "; a mask token, if the layer had one, is not recoverable from a graph and its "
            "row is not written either",
        }
        return KeyMap("integer_lookup_vocabulary", keys, rows, details)

    def _dense_inputs(self, cut_nodes: set[str], tables: dict) -> list[str]:
        """Signature inputs (by name) the outputs still need once lookups are fed."""
        needed, seen = [], set()
        stack = deque(_src(t) for t in self.output_tensors)
        while stack:
            name = stack.pop()
            if name in seen or name in cut_nodes:
                continue
            seen.add(name)
            node = self.nodes.get(name)
            if node is None:
                continue
            if node.op == "Placeholder":
                if name in self.input_of:
                    needed.append(self.input_of[name])
                elif name in tables:
                    raise InvalidInputError(
                        f"the model uses table '{tables[name].variable.name}' outside its lookups",
                        location=self.location,
                        hint=_NO_DENSE_HINT,
                    )
                elif self.captures.get(name, (None,))[0] == "resource":
                    raise InvalidInputError(
                        "the dense part reads a resource (e.g. a lookup table) "
                        "dissect cannot carry over",
                        location=self.location,
                        hint=_NO_DENSE_HINT,
                    )
                continue
            stack.extend(_src(i) for i in node.input)
        return sorted(needed)

    # -- running ----------------------------------------------------------------------------

    def export_dense(self, dest) -> None:
        from tensorflow.python.eager import wrap_function

        feeds = self._cuts + [f"{self.placeholder_of[key]}:0" for key in self.direct_inputs]
        try:
            pruned = wrap_function.function_from_graph_def(
                self.graph_def, feeds, self.output_tensors
            )
        except Exception as exc:
            raise InvalidInputError(
                f"cannot separate the dense part: {str(exc)[:300]}",
                location=self.location,
                hint=_NO_DENSE_HINT,
            ) from exc
        save_dense(dest, lambda args: pruned(*args), self.dense_signature, self.outputs)

    def predict(self, feed: dict) -> dict:
        tf = self.tf
        kwargs = {}
        for spec in self.inputs:
            value = feed[spec.name]
            if spec.format == "sparse":
                parts = spec.components
                kwargs[parts["indices"]] = tf.constant(value.indices, tf.int64)
                kwargs[parts["values"]] = tf.constant(value.values, spec.dtype)
                kwargs[parts["dense_shape"]] = tf.constant(value.dense_shape, tf.int64)
            else:
                kwargs[spec.name] = tf.constant(value, spec.dtype)
        result = self.fn(**kwargs)
        if not isinstance(result, dict):
            result = dict(zip([o.name for o in self.outputs], tf.nest.flatten(result)))
        return {k: np.asarray(v) for k, v in result.items()}

    def table_values(self, variable: str) -> np.ndarray:
        return np.asarray(self.table_variables[variable].numpy())


def _dims(shape) -> list:
    try:
        return [None if d is None else int(d) for d in shape]
    except (TypeError, ValueError):
        return []


__all__ = ["GraphPlan"]
