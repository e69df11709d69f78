"""Render the config schema, what hps does with each field (ignored.py) and the environment
variables as a Markdown reference (docs/config.md).

Regenerate with ``python -m hps_cli.runtime.config.docs docs/config.md``; a test fails when the
committed file differs from what the schema gives.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..resources import load_schema
from .environment import ENVIRONMENT
from .ignored import field_note
from .schema_check import SCHEMA_NAME

_SECTIONS = (
    ("Top level", "$", None),
    ("models[]", "$.models[]", "model"),
    ("volatile_db", "$.volatile_db", "volatile_db"),
    ("persistent_db", "$.persistent_db", "persistent_db"),
    ("update_source", "$.update_source", "update_source"),
)


def _type_of(prop: dict) -> str:
    if "$ref" in prop:
        return "object"
    kind = prop.get("type", "")
    if kind == "array":
        inner = prop.get("items", {})
        inner_kind = "object" if "$ref" in inner else inner.get("type", "any")
        return f"array of {inner_kind}"
    return str(kind)


def _constraints(prop: dict, required: bool) -> str:
    parts = ["**required**"] if required else []
    if "enum" in prop:
        parts.append("one of " + ", ".join(f"`{v}`" for v in prop["enum"]))
    for key, sign in (
        ("minimum", "≥"),
        ("maximum", "≤"),
        ("exclusiveMinimum", ">"),
        ("exclusiveMaximum", "<"),
    ):
        if key in prop:
            parts.append(f"{sign} {prop[key]}")
    if prop.get("minItems"):
        parts.append(f"at least {prop['minItems']} item(s)")
    if prop.get("uniqueItems"):
        parts.append("unique items")
    items = prop.get("items", {})
    if isinstance(items, dict):
        if "minimum" in items:
            parts.append(f"items ≥ {items['minimum']}")
        if "pattern" in items:
            parts.append(f"items match `{items['pattern']}`")
    if "pattern" in prop:
        parts.append(f"matches `{prop['pattern']}`")
    return "; ".join(parts)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(schema: dict | None = None) -> str:
    schema = schema or load_schema(SCHEMA_NAME)
    lines = [
        "# HPS config reference (ps.json)",
        "",
        "<!-- Generated from schemas/ps_config.schema.json and runtime/config/environment.py by "
        "`python -m hps_cli.runtime.config.docs docs/config.md`; do not edit by hand. -->",
        "",
        schema["description"],
        "",
        "Validate a file with `hps validate-config FILE`. Every field, type and default below is "
        "HPS's (HugeCTR v24.06). The last column says what hps does with it: where it takes "
        "effect, or **ignored** and why, or **refused** (start-up stops with an error), and where "
        "it has no effect. `hps validate-config` and start-up (`hps serve`, `HPS(config)`) warn "
        "about every field a config sets that has no effect (rule `ignored_field`, with its JSON "
        "path and why).",
        "",
    ]
    for title, path, ref in _SECTIONS:
        node = schema if ref is None else schema["$defs"][ref]
        intro = [node.get("description", ""), ""] if ref is not None else []
        lines += [
            f"## {title}",
            "",
            *intro,
            "| key | type | default | constraints | description | in hps |",
            "|---|---|---|---|---|---|",
        ]
        required = set(node.get("required", ()))
        for name, prop in node["properties"].items():
            if name == "$schema":
                continue
            default = f"`{json.dumps(prop['default'])}`" if "default" in prop else ""
            desc = prop.get("description", "")
            if "$ref" in prop:
                desc = schema["$defs"][prop["$ref"].split("/")[-1]].get("description", "")
            examples = prop.get("examples")
            if examples:
                desc += " Example: " + ", ".join(f"`{json.dumps(e)}`" for e in examples[:2]) + "."
            lines.append(
                f"| `{path}.{name}` | {_type_of(prop)} | {_cell(default)} | "
                f"{_cell(_constraints(prop, name in required))} | {_cell(desc)} | "
                f"{_cell(field_note(f'{path}.{name}'))} |"
            )
        lines.append("")
    lines += _environment_section()
    return "\n".join(lines)


def _environment_section() -> list[str]:
    lines = [
        "## Environment variables",
        "",
        "Besides ps.json, these variables of the environment steer hps; each is read when it is "
        "used. `hps --help` lists their names.",
        "",
        "| variable | what it does | default | read by |",
        "|---|---|---|---|",
    ]
    for var in ENVIRONMENT:
        lines.append(
            f"| `{var.name}` | {_cell(var.effect)} | {_cell(var.default)} | {_cell(var.read_by)} |"
        )
    lines.append("")
    return lines


def main(argv: list[str]) -> None:
    text = render_markdown()
    if argv:
        Path(argv[0]).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main(sys.argv[1:])
