"""Which variables a SavedModel's functions look rows up in (static, from ``saved_model.pb``).

A variable is captured by a concrete function as one of its trailing resource arguments
(``SavedConcreteFunction.bound_inputs`` lists the object-graph nodes they bind to). Inside the
function library we follow each resource argument through ``ReadVariableOp``/``Identity`` into
``GatherV2`` or ``ResourceGather`` (what ``Embedding``, ``tf.gather`` and
``tf.nn.embedding_lookup`` produce) and into the functions it is passed to, and note a
``SparseSegment{Sum,Mean,SqrtN}`` on the gathered rows (``embedding_lookup_sparse``). Nothing is
loaded or executed, so this works without the model's code and on any SavedModel.
"""

from __future__ import annotations

from pathlib import Path

from ..common.tf_loader import import_tensorflow
from ..runtime.errors import InvalidInputError

RESOURCE = 20  # DataType DT_RESOURCE
PASS_THROUGH = {"Identity", "ReadVariableOp", "IdentityN"}
GATHERS = {"GatherV2": 0, "ResourceGather": 0, "Gather": 0}
COMBINERS = {
    "SparseSegmentSum": "sum",
    "SparseSegmentMean": "mean",
    "SparseSegmentSqrtN": "sqrtn",
    "SparseSegmentSumWithNumSegments": "sum",
    "SparseSegmentMeanWithNumSegments": "mean",
    "SparseSegmentSqrtNWithNumSegments": "sqrtn",
}
CALLS = {"StatefulPartitionedCall", "PartitionedCall"}


def _source(name: str) -> str:
    return name.split(":", 1)[0]


class _Library:
    def __init__(self, functions):
        self.functions = {f.signature.name: f for f in functions}
        self._memo: dict[str, dict[int, set[str]]] = {}

    def uses(self, fname: str) -> dict[int, set[str]]:
        """For each resource argument of ``fname``: how rows of it are looked up."""
        if fname in self._memo:
            return self._memo[fname]
        self._memo[fname] = {}  # recursion guard
        func = self.functions.get(fname)
        if func is None:
            return {}
        consumers: dict[str, list[tuple[object, int]]] = {}
        for node in func.node_def:
            for index, name in enumerate(node.input):
                if not name.startswith("^"):
                    consumers.setdefault(_source(name), []).append((node, index))
        result: dict[int, set[str]] = {}
        for arg_index, arg in enumerate(func.signature.input_arg):
            if arg.type != RESOURCE:
                continue
            kinds = self._follow(arg.name, consumers)
            if kinds:
                result[arg_index] = kinds
        self._memo[fname] = result
        return result

    def _follow(self, start: str, consumers) -> set[str]:
        kinds: set[str] = set()
        seen, stack = {start}, [start]
        while stack:
            for node, index in consumers.get(stack.pop(), []):
                if node.op in PASS_THROUGH:
                    if node.name not in seen:
                        seen.add(node.name)
                        stack.append(node.name)
                elif node.op in GATHERS and index == GATHERS[node.op]:
                    kinds.add(node.op)
                    for after, _ in self._after(node.name, consumers):
                        if after.op in COMBINERS:
                            kinds.add(f"embedding_lookup_sparse({COMBINERS[after.op]})")
                elif node.op in CALLS and "f" in node.attr:
                    callee = node.attr["f"].func.name
                    kinds |= self.uses(callee).get(index, set())
        return kinds

    @staticmethod
    def _after(name: str, consumers):
        seen, stack, out = {name}, [name], []
        while stack:
            for node, index in consumers.get(stack.pop(), []):
                if node.op == "Identity" and node.name not in seen:
                    seen.add(node.name)
                    stack.append(node.name)
                else:
                    out.append((node, index))
        return out


def read_saved_model(path: Path):
    """Parse ``saved_model.pb`` with TensorFlow's protobuf classes."""
    import_tensorflow("reading a SavedModel")
    from tensorflow.core.protobuf import saved_model_pb2

    model = saved_model_pb2.SavedModel()
    try:
        model.ParseFromString((path / "saved_model.pb").read_bytes())
    except Exception as exc:  # protobuf raises DecodeError, a bare Exception subclass
        raise InvalidInputError(
            f"unreadable saved_model.pb: {exc}", location=str(path / "saved_model.pb")
        ) from exc
    if not model.meta_graphs:
        raise InvalidInputError("saved_model.pb holds no MetaGraph", location=str(path))
    return model


def gathered_variables(path: Path) -> dict[tuple[str, tuple[int, ...]], set[str]]:
    """(variable name, shape) -> lookup kinds, for every variable whose rows are gathered."""
    meta = read_saved_model(path).meta_graphs[0]
    library = _Library(meta.graph_def.library.function)
    nodes = meta.object_graph_def.nodes
    found: dict[tuple[str, tuple[int, ...]], set[str]] = {}
    for fname, concrete in meta.object_graph_def.concrete_functions.items():
        bound = list(concrete.bound_inputs)
        if not bound or fname not in library.functions:
            continue
        args = library.functions[fname].signature.input_arg
        uses = library.uses(fname)
        first = len(args) - len(bound)
        for offset, node_id in enumerate(bound):
            kinds = uses.get(first + offset)
            if not kinds or not 0 <= node_id < len(nodes):
                continue
            node = nodes[node_id]
            if node.WhichOneof("kind") != "variable":
                continue
            shape = tuple(int(d.size) for d in node.variable.shape.dim)
            found.setdefault((node.variable.name, shape), set()).update(kinds)
    return found
