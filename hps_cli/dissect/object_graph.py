"""Real variable names of an object-based checkpoint, from its ``_CHECKPOINTABLE_OBJECT_GRAPH``.

Checkpoint keys follow the object structure (``model/_operations/1/_embeddings/...`` in Keras 3,
``layer_with_weights-0/embeddings/...`` in Keras 2, ``variables/0/...`` in SavedModels); the
object graph stored in the checkpoint maps each key to the variable's ``full_name``
(``user_emb/embeddings``). It also tells optimizer state apart: slot variables are listed as
such by Keras 2's legacy optimizers, and every optimizer (Keras 2 and 3) is a node with an
iteration counter whose variables are reachable only through it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from .bundle import OBJECT_GRAPH_KEY, BundleReader, TensorInfo
from .protowire import TrackableNode, decode_object_graph

VALUE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
_OPTIMIZER_MARKERS = {"_iterations", "iter"}
_BOOKKEEPING = {"save_counter"}

MODEL, OPTIMIZER, BOOKKEEPING = "model", "optimizer", "bookkeeping"


@dataclass(frozen=True)
class CheckpointVariable:
    """A variable of a checkpoint with the name its creator gave it."""

    name: str  # unique display name: full_name, or the object path if ambiguous
    full_name: str  # the variable's own name (may repeat, e.g. "Variable")
    path: str  # object path from the root, e.g. "model/_operations/1/_embeddings"
    checkpoint_key: str
    kind: str  # MODEL, OPTIMIZER or BOOKKEEPING
    tensor: TensorInfo
    aliases: tuple[str, ...] = ()  # other checkpoint keys holding the same variable


def _paths(nodes: list[TrackableNode], skip_optimizers: bool) -> dict[int, str]:
    """The shortest object path of every node reachable from the root (node 0)."""
    paths = {0: ""}
    queue = deque([0])
    while queue:
        node_id = queue.popleft()
        for child in nodes[node_id].children:
            target = child.node_id
            if target in paths or not 0 <= target < len(nodes):
                continue
            if skip_optimizers and _is_optimizer(nodes[target], child.local_name):
                continue
            prefix = paths[node_id]
            paths[target] = f"{prefix}/{child.local_name}" if prefix else child.local_name
            queue.append(target)
    return paths


def _is_optimizer(node: TrackableNode, local_name: str) -> bool:
    return local_name == "optimizer" or any(
        c.local_name in _OPTIMIZER_MARKERS for c in node.children
    )


def checkpoint_variables(reader: BundleReader) -> list[CheckpointVariable]:
    """Every variable of the checkpoint, named from its object graph when it has one.

    Checkpoints without an object graph (TF1 name-based ones) use their keys as names.
    """
    if OBJECT_GRAPH_KEY not in reader.tensors:
        return [
            CheckpointVariable(key, key, key, key, MODEL, info)
            for key, info in sorted(reader.tensors.items())
        ]
    nodes = decode_object_graph(
        reader.read_strings(OBJECT_GRAPH_KEY)[0], f"{reader.index_path}: {OBJECT_GRAPH_KEY}"
    )
    model_paths = _paths(nodes, skip_optimizers=True)
    model_nodes = set(model_paths)
    paths = {**_paths(nodes, skip_optimizers=False), **model_paths}
    slots = {s.slot_variable_node_id for n in nodes for s in n.slot_variables}
    found: list[tuple[int, str, str, TensorInfo]] = []
    for node_id, node in enumerate(nodes):
        for attr in node.attributes:
            if attr.name != "VARIABLE_VALUE" or attr.checkpoint_key not in reader.tensors:
                continue
            found.append(
                (
                    node_id,
                    attr.full_name or attr.checkpoint_key,
                    attr.checkpoint_key,
                    reader.tensors[attr.checkpoint_key],
                )
            )
    # The same variable saved twice (Keras 3 export: variables/<i> and _all_variables/<j>):
    # same name, shape, dtype and content checksum -> one entry with aliases.
    groups: dict[tuple, list[tuple[int, str, str, TensorInfo]]] = {}
    for item in found:
        _, full, _, info = item
        signature = (full, info.shape, info.dtype, info.entry.size, info.entry.crc32c)
        groups.setdefault(signature, []).append(item)
    merged = []
    for items in groups.values():
        items.sort(key=lambda it: (it[0] not in model_nodes, len(paths.get(it[0], "")), it[2]))
        merged.append((items[0], tuple(it[2] for it in items[1:])))
    counts: dict[str, int] = {}
    for (_, full, _, _), _ in merged:
        counts[full] = counts.get(full, 0) + 1
    result = []
    for (node_id, full, key, info), aliases in merged:
        path = paths.get(node_id, key[: -len(VALUE_SUFFIX)] if key.endswith(VALUE_SUFFIX) else key)
        if node_id in slots or node_id not in model_nodes:
            kind = OPTIMIZER
        elif full in _BOOKKEEPING or path in _BOOKKEEPING or "/metrics/" in f"/{path}/":
            kind = BOOKKEEPING
        else:
            kind = MODEL
        name = full if counts[full] == 1 else path
        result.append(CheckpointVariable(name, full, path, key, kind, info, aliases))
    result.sort(key=lambda v: (v.kind != MODEL, v.name))
    return result
