"""One problem found in a config: severity, JSON path, message, hint."""

from __future__ import annotations

from dataclasses import dataclass

ERROR = "error"
WARNING = "warning"


@dataclass(frozen=True)
class ConfigIssue:
    """A config problem.

    ``json_path`` points into the document (``$.models[0].embedding_vecsize_per_table[1]``);
    ``location`` adds ``file:line:column`` for syntax errors or a file path for on-disk checks.
    ``rule`` names the check (a JSON Schema keyword such as ``type``, or ours such as
    ``array_lengths``) so scripts can match on it.
    """

    severity: str
    json_path: str
    message: str
    rule: str
    hint: str | None = None
    location: str | None = None

    @property
    def is_error(self) -> bool:
        return self.severity == ERROR

    def as_error(self) -> "ConfigIssue":
        return ConfigIssue(ERROR, self.json_path, self.message, self.rule, self.hint, self.location)

    def to_dict(self) -> dict:
        return {
            "severity": self.severity,
            "json_path": self.json_path,
            "message": self.message,
            "rule": self.rule,
            "hint": self.hint,
            "location": self.location,
        }

    def one_line(self) -> str:
        where = self.json_path + (f" ({self.location})" if self.location else "")
        hint = f" (hint: {self.hint})" if self.hint else ""
        return f"{self.severity}: {where}: {self.message}{hint}"


def json_path(*parts: object) -> str:
    """Build a JSON path such as ``$.models[0].sparse_files`` from keys and indices."""
    text = "$"
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text
