"""The variable listing of a model and which variables are embedding tables.

Evidence that a variable is an embedding table, strongest first:

- ``keras_embedding_layer``: it is the weight of a Keras ``Embedding`` layer (from the model's
  config, a tf_keras SavedModel's metadata, or Keras 3's weight-file layout);
- ``graph:<op>``: a SavedModel's functions look rows of it up (``GatherV2``,
  ``ResourceGather``, ``embedding_lookup_sparse(<combiner>)``), see graph_usage.py;
- ``name:embeddings``: in a bare checkpoint, it is named like a Keras Embedding weight.

Only rank-2 floating-point model variables qualify; optimizer slots and counters never do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from ..runtime.errors import InvalidInputError, NotFoundError
from .bundle import FLOAT_DTYPES
from .graph_usage import gathered_variables
from .keras_files import inbound_layers, layer_configs
from .source_types import MODEL, OPTIMIZER, SAVED_MODEL, Source, Variable, sanitize_name

TABLE_NAME = re.compile(r"^[A-Za-z0-9_\-]{1,120}$")
EVIDENCE_TEXT = {
    "keras_embedding_layer": "Keras Embedding layer",
    "name:embeddings": "named like a Keras Embedding weight",
}


OOV_NOTE = (
    "out-of-vocabulary rows are not written, so an id outside the vocabulary gets the "
    "table's default value in HPS, not the OOV vector"
)


def describe_evidence(code: str) -> str:
    if code.startswith("graph:"):
        return f"looked up by {code[len('graph:') :]} in the graph"
    return EVIDENCE_TEXT.get(code, code)


def eligible(var: Variable) -> bool:
    return var.kind == MODEL and var.rank == 2 and var.dtype in FLOAT_DTYPES


@dataclass(frozen=True)
class TableChoice:
    """A variable to write as an HPS table, and the table's name."""

    variable: Variable
    name: str
    explicit: bool = False


@dataclass
class Inventory:
    source: Source
    variables: list[Variable]
    notes: list[str] = field(default_factory=list)

    @property
    def candidates(self) -> list[Variable]:
        return [v for v in self.variables if eligible(v) and v.evidence]

    def to_dict(self) -> dict:
        src = self.source
        return {
            "source": {
                "path": str(src.path),
                "format": src.format,
                "keras": src.flavour,
                "keras_version": src.keras_version,
                "model_name": src.model_name,
                "loadable": src.loadable,
            },
            "variables": [
                {
                    "name": v.name,
                    "shape": list(v.shape),
                    "dtype": v.dtype,
                    "kind": v.kind,
                    "location": v.location,
                    "object_path": v.path,
                    "layer": v.layer,
                    "layer_class": v.layer_class,
                    "embedding_candidate": eligible(v) and bool(v.evidence),
                    "evidence": list(v.evidence),
                    "id_lookup": v.id_lookup,
                    "default_table_name": default_table_name(v) if eligible(v) else None,
                }
                for v in self.variables
            ],
            "notes": list(self.notes),
        }


def inspect_source(source: Source) -> Inventory:
    """List the source's variables and mark embedding-table candidates."""
    notes = list(source.notes)
    layers = (source.keras_config or {}).get("_layers", {}) if source.format == SAVED_MODEL else {}
    gathered: dict = {}
    if source.format == SAVED_MODEL:
        gathered = gathered_variables(source.path)
    configs: dict = {}
    if source.keras_config:
        configs = layer_configs(source.keras_config)
    out = []
    for var in source.variables:
        if var.layer is None and "/" in var.name and var.name.split("/")[0] in layers:
            layer = var.name.split("/")[0]
            var = replace(var, layer=layer, layer_class=layers[layer].get("class_name"))
        if eligible(var):
            if var.layer_class == "Embedding":
                var = var.with_evidence("keras_embedding_layer")
                feeders = [
                    name
                    for name in inbound_layers(configs.get(var.layer) or {})
                    if (configs.get(name) or {}).get("class_name") == "IntegerLookup"
                ]
                if feeders:
                    var = replace(var, id_lookup=feeders[0])
                    notes.append(
                        f"{var.name}: fed by IntegerLookup '{feeders[0]}', so its keys "
                        f"are that vocabulary (the raw ids); {OOV_NOTE}"
                    )
            for kind in sorted(gathered.get((var.name, var.shape), ())):
                var = var.with_evidence(f"graph:{kind}")
            if (
                not var.evidence
                and source.format != SAVED_MODEL
                and var.layer_class is None
                and var.name.rsplit("/", 1)[-1] == "embeddings"
            ):
                var = var.with_evidence("name:embeddings")
        out.append(var)
    skipped = sum(v.kind == OPTIMIZER for v in out)
    if skipped:
        notes.append(f"{skipped} optimizer variable(s) (slots, counters) are never tables")
    return Inventory(source, out, notes)


def default_table_name(var: Variable) -> str:
    if var.layer and var.layer_class == "Embedding":
        return sanitize_name(var.layer)
    parts = var.name.split("/")
    if len(parts) > 1 and parts[-1] == "embeddings":
        return sanitize_name(parts[-2])
    return sanitize_name(var.name.replace("/", "_"))


def select_tables(
    inventory: Inventory, specs: list[str] | tuple[str, ...] = ()
) -> list[TableChoice]:
    """The tables to write: every candidate, or exactly those named by ``VAR[=NAME]`` specs."""
    src = inventory.source
    location = str(src.path)
    if not any(v.kind == MODEL and v.rank == 2 for v in inventory.variables):
        raise InvalidInputError(
            "no rank-2 variable in this model: it holds no embedding table", location=location
        )
    choices: list[TableChoice] = []
    if specs:
        for spec in specs:
            var_name, _, table = spec.partition("=")
            try:
                var = next(
                    v
                    for v in inventory.variables
                    if var_name in (v.name, v.location, v.path) or var_name in v.aliases
                )
            except StopIteration:
                raise NotFoundError(
                    f"--table {spec}: no variable named '{var_name}'",
                    location=location,
                    hint="see the names with `hps dissect MODEL OUT --list`",
                ) from None
            if not eligible(var):
                why = (
                    "is optimizer state"
                    if var.kind == OPTIMIZER
                    else f"has shape {list(var.shape)}, not [rows, dim]"
                    if var.rank != 2
                    else f"has dtype {var.dtype}, not a float type"
                    if var.dtype not in FLOAT_DTYPES
                    else "is not a model variable"
                )
                raise InvalidInputError(
                    f"--table {spec}: variable '{var.name}' {why}", location=location
                )
            choices.append(TableChoice(var, table or default_table_name(var), explicit=True))
    else:
        choices = [TableChoice(v, default_table_name(v)) for v in inventory.candidates]
        if not choices:
            shown = ", ".join(
                f"{v.name} {list(v.shape)}" for v in inventory.variables if eligible(v)
            )[:300]
            raise InvalidInputError(
                f"no embedding table detected (no Embedding layer, no lookup in a graph); "
                f"rank-2 variables: {shown}",
                location=location,
                hint="choose tables explicitly with --table VAR[=NAME]",
            )
    _check_names(choices, location)
    return choices


def _check_names(choices: list[TableChoice], location: str) -> None:
    seen_vars: dict[str, str] = {}
    seen_names: set[str] = set()
    for choice in choices:
        if not TABLE_NAME.match(choice.name):
            raise InvalidInputError(
                f"table name '{choice.name}' is not valid in HPS configs "
                "(letters, digits, _ and -, at most 120)",
                location=location,
            )
        if choice.variable.name in seen_vars:
            raise InvalidInputError(
                f"variable '{choice.variable.name}' is selected twice", location=location
            )
        if choice.name in seen_names:
            raise InvalidInputError(
                f"two tables would be named '{choice.name}'",
                location=location,
                hint="name them explicitly with --table VAR=NAME",
            )
        seen_vars[choice.variable.name] = choice.name
        seen_names.add(choice.name)
