"""Validation of an HPS config: syntax, schema, semantics, files; and loading the typed config."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from .files import file_issues
from .issues import ConfigIssue
from .loader import build_config
from .model import PsConfig
from .parse import read_config_file
from .schema_check import schema_issues
from .semantic import semantic_issues


@dataclass(frozen=True)
class ValidationResult:
    """Issues found in one config; ``config`` is the typed config when there is no error."""

    source: str
    issues: tuple[ConfigIssue, ...] = field(default=())
    config: PsConfig | None = None

    @property
    def errors(self) -> tuple[ConfigIssue, ...]:
        return tuple(i for i in self.issues if i.is_error)

    @property
    def warnings(self) -> tuple[ConfigIssue, ...]:
        return tuple(i for i in self.issues if not i.is_error)

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict:
        return {
            "file": self.source,
            "valid": self.ok,
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "issues": [i.to_dict() for i in self.issues],
        }


def validate_document(
    doc: object,
    *,
    source: str = "<config>",
    base_dir: Path | str | None = None,
    check_files: bool = True,
    strict: bool = False,
    early: tuple[ConfigIssue, ...] = (),
) -> ValidationResult:
    """Validate a parsed document. ``strict`` turns warnings into errors."""
    issues = list(early) + schema_issues(doc)
    if isinstance(doc, dict):
        issues += semantic_issues(doc)
    # An error at a path supersedes a warning at the same path (e.g. rocks_db in volatile_db).
    error_paths = {i.json_path for i in issues if i.is_error}
    issues = [
        i for i in issues if i.is_error or i.json_path not in error_paths or i.json_path == "$"
    ]
    if strict:
        issues = [i.as_error() for i in issues]
    config = None
    if not any(i.is_error for i in issues) and isinstance(doc, dict):
        config = build_config(doc, base_dir, source)
        if check_files:
            found = file_issues(config)
            issues += found
            if found:
                config = None
    return ValidationResult(source, tuple(issues), config)


def validate_config_file(
    path: Path | str, *, check_files: bool = True, strict: bool = False
) -> ValidationResult:
    """Validate a config file; JSON syntax errors come back as one issue with line and column."""
    path = Path(path)
    try:
        doc, early = read_config_file(path)
    except ConfigError as exc:
        if not exc.issues:
            raise
        return ValidationResult(str(path), exc.issues, None)
    return validate_document(
        doc,
        source=str(path),
        base_dir=path.parent,
        check_files=check_files,
        strict=strict,
        early=tuple(early),
    )


def load_config(
    source: Path | str | dict | PsConfig,
    *,
    check_files: bool = False,
    base_dir: Path | str | None = None,
) -> PsConfig:
    """The typed config of a file, a parsed document, or a PsConfig (returned as is).

    Raises:
        ConfigError: the config has errors; ``.issues`` lists all of them, the message names
            the first with its JSON path.
    """
    if isinstance(source, PsConfig):
        return source
    config = load_validated(source, check_files=check_files, base_dir=base_dir).config
    assert config is not None  # load_validated raised otherwise
    return config


def load_validated(
    source: Path | str | dict,
    *,
    check_files: bool = False,
    base_dir: Path | str | None = None,
) -> ValidationResult:
    """``load_config``'s validation, returned whole: ``config`` is set, ``warnings`` are what
    start-up reports (fields hps ignores, non-exact settings, ...).

    Raises:
        ConfigError: as ``load_config``.
    """
    if isinstance(source, dict):
        result = validate_document(source, base_dir=base_dir or Path.cwd(), check_files=check_files)
    else:
        result = validate_config_file(source, check_files=check_files)
    if not result.ok or result.config is None:
        first = result.errors[0]
        more = len(result.errors) - 1
        suffix = f" (and {more} more error{'s' * (more > 1)})" if more else ""
        raise ConfigError(
            f"{first.message}{suffix}",
            issues=result.issues,
            location=f"{result.source} {first.json_path}"
            if first.json_path != "$"
            else (first.location or result.source),
            hint=first.hint or f"run 'hps validate-config {result.source}'",
        )
    return result
