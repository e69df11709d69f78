"""JSON Schema validation of a config, turned into ConfigIssues with HPS-aware severities.

HPS ignores unknown keys and falls back to the default for unknown enum strings, so those are
warnings (errors under --strict); every other schema violation is an error.
"""

from __future__ import annotations

import difflib
import json
from functools import cache

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from ..resources import load_schema
from .issues import ERROR, WARNING, ConfigIssue, json_path

SCHEMA_NAME = "ps_config.schema.json"

# Keys of older HPS samples that v24.06 ignores, with what replaced them.
_LEGACY_KEYS = {
    "max_get_batch_size": "max_batch_size",
    "max_set_batch_size": "max_batch_size",
}
_JSON_TYPES = {
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    list: "array",
    dict: "object",
    type(None): "null",
}


@cache
def _validator() -> Draft202012Validator:
    return Draft202012Validator(load_schema(SCHEMA_NAME))


def schema_issues(doc: object) -> list[ConfigIssue]:
    """Every schema violation of ``doc`` as a ConfigIssue, sorted by JSON path."""
    issues: list[ConfigIssue] = []
    for error in _validator().iter_errors(doc):
        issues.extend(_convert(error))
    return sorted(issues, key=lambda i: (i.json_path, i.rule))


def _path_of(error: ValidationError, *extra: object) -> str:
    return json_path(*error.absolute_path, *extra)


def _describe(value: object) -> str:
    kind = _JSON_TYPES.get(type(value), type(value).__name__)
    text = json.dumps(value) if not isinstance(value, (dict, list)) else kind
    return f"{kind} {text}" if kind not in ("object", "array") else f"an {kind}"


def _suggest(word: str, choices) -> str | None:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None


def _convert(error: ValidationError) -> list[ConfigIssue]:
    rule = str(error.validator)
    schema = error.schema if isinstance(error.schema, dict) else {}
    if rule == "additionalProperties" and isinstance(error.instance, dict):
        known = schema.get("properties", {})
        out = []
        for key in sorted(set(error.instance) - set(known)):
            if key in _LEGACY_KEYS:
                hint = f"HPS v24.06 ignores this legacy key; use '{_LEGACY_KEYS[key]}'"
            else:
                hint = _suggest(key, known) or "HPS ignores unknown keys; remove it"
            out.append(
                ConfigIssue(
                    WARNING, _path_of(error, key), f"unknown key '{key}'", "unknown_key", hint
                )
            )
        return out
    if rule == "enum":
        value = error.instance
        if isinstance(value, str):
            default = schema.get("default")
            fallback = (
                f"; HPS silently falls back to '{default}'"
                if default
                else "; HPS silently falls back to its default"
            )
            hint = _suggest(value, schema.get("enum", ())) or "one of: " + ", ".join(
                schema.get("enum", ())
            )
            return [
                ConfigIssue(
                    WARNING,
                    _path_of(error),
                    f"unknown value '{value}'{fallback}",
                    "unknown_enum",
                    hint,
                )
            ]
        return []  # the value is not a string: the 'type' keyword reports it
    if rule == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        return [
            ConfigIssue(
                ERROR,
                _path_of(error, missing),
                "required key is missing",
                "required",
                _required_hint(missing),
            )
        ]
    if rule == "type":
        expected = error.validator_value
        hint = None
        if expected == "boolean" and isinstance(error.instance, str):
            hint = "write true or false without quotes (HPS's parser is strictly typed)"
        elif expected in ("integer", "number") and isinstance(error.instance, str):
            hint = "write the number without quotes"
        elif expected == "integer" and isinstance(error.instance, float):
            hint = "use a whole number"
        return [
            ConfigIssue(
                ERROR,
                _path_of(error),
                f"expected {_article(expected)}, got {_describe(error.instance)}",
                "type",
                hint,
            )
        ]
    return [ConfigIssue(ERROR, _path_of(error), _message(error), rule, None)]


def _article(kind: object) -> str:
    kind = str(kind)
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


def _required_hint(key: str) -> str | None:
    return {
        "supportlonglong": "true for int64 keys (Triton backend, TF plugin), false for uint32",
        "models": "add a list with at least one model",
        "deployed_device_list": "e.g. [0] to cache on GPU 0",
    }.get(key)


def _message(error: ValidationError) -> str:
    rule, value, inst = error.validator, error.validator_value, error.instance
    if rule == "minimum":
        return f"{inst} is below the minimum {value}"
    if rule == "maximum":
        return f"{inst} is above the maximum {value}"
    if rule == "exclusiveMinimum":
        return f"{inst} must be greater than {value}"
    if rule == "exclusiveMaximum":
        return f"{inst} must be less than {value}"
    if rule == "minItems":
        return "the list is empty" if value == 1 else f"the list needs at least {value} entries"
    if rule == "uniqueItems":
        return f"the list has repeated entries: {json.dumps(inst)}"
    if rule == "pattern":
        return (
            f"{json.dumps(inst)} is not a valid name: use 1 to 120 letters, digits, '_' or "
            "'-' (HPS builds storage tags from it)"
        )
    if rule == "minLength":
        return "the string is empty"
    return error.message
