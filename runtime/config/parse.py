"""Reading config JSON as strictly as HPS's parser (nlohmann::json) does, with error positions."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ConfigError, NotFoundError
from .issues import ERROR, WARNING, ConfigIssue


class _DuplicateKeys(list):
    pass


def parse_config_text(text: str, source: str = "<config>") -> tuple[dict, list[ConfigIssue]]:
    """Parse JSON text; syntax errors raise ConfigError whose issue carries line and column.

    Returns the document and warnings (duplicate object keys).
    """
    duplicates = _DuplicateKeys()

    def pairs_hook(pairs: list[tuple[str, object]]) -> dict:
        seen: dict[str, object] = {}
        for key, value in pairs:
            if key in seen:
                duplicates.append(key)
            seen[key] = value
        return seen

    def reject_constant(name: str) -> float:
        raise ValueError(f"{name} is not valid JSON")

    try:
        doc = json.loads(text, object_pairs_hook=pairs_hook, parse_constant=reject_constant)
    except json.JSONDecodeError as exc:
        raise _syntax_error(exc, text, source) from None
    except ValueError as exc:  # NaN / Infinity
        issue = ConfigIssue(
            ERROR, "$", str(exc), "syntax", "HPS's JSON parser rejects it too", source
        )
        raise ConfigError(f"invalid JSON: {exc}", issues=(issue,), location=source) from None
    if not isinstance(doc, dict):
        issue = ConfigIssue(
            ERROR,
            "$",
            f"the config must be a JSON object, got {type(doc).__name__}",
            "type",
            None,
            source,
        )
        raise ConfigError(issue.message, issues=(issue,), location=source)
    warnings = [
        ConfigIssue(
            WARNING,
            "$",
            f"the key '{key}' appears more than once in one object; only one of its values is used",
            "duplicate_key",
            "remove the extra copies",
            source,
        )
        for key in duplicates
    ]
    return doc, warnings


def _syntax_error(exc: json.JSONDecodeError, text: str, source: str) -> ConfigError:
    where = f"{source}:{exc.lineno}:{exc.colno}"
    hint = None
    rest = text[exc.pos : exc.pos + 2]
    if rest.startswith("//") or rest.startswith("/*") or rest.startswith("#"):
        hint = "JSON has no comments, and HPS's parser rejects them too: remove them"
    elif exc.msg.startswith("Expecting property name") and text[: exc.pos].rstrip().endswith(","):
        hint = "remove the trailing comma"
    elif exc.msg.startswith("Expecting value") and text[: exc.pos].rstrip().endswith(","):
        hint = "remove the trailing comma"
    issue = ConfigIssue(ERROR, "$", f"invalid JSON: {exc.msg}", "syntax", hint, where)
    return ConfigError(f"invalid JSON: {exc.msg}", issues=(issue,), location=where, hint=hint)


def read_config_file(path: Path | str) -> tuple[dict, list[ConfigIssue]]:
    """Read and parse a config file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NotFoundError("the config file does not exist", location=str(path)) from None
    except IsADirectoryError:
        raise NotFoundError("the config path is a folder, not a file", location=str(path)) from None
    except UnicodeDecodeError as exc:
        issue = ConfigIssue(
            ERROR, "$", f"not UTF-8 text (byte {exc.start})", "syntax", None, str(path)
        )
        raise ConfigError(
            "the config is not UTF-8 text", issues=(issue,), location=str(path)
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read the config: {exc.strerror}", location=str(path)) from None
    return parse_config_text(text, str(path))
