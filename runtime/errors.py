"""Typed errors of the hps libraries: every one carries a location and maps to one exit code.

Library code raises these and never prints or exits; the CLI boundary (hps_cli.cli) turns them
into a one-line message, a hint and the documented exit code.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Documented process exit codes of the `hps` command (README.md, "Exit codes")."""

    OK = 0
    FAILURE = 1  # an unexpected failure: a bug, or an I/O error the tool could not classify
    USAGE = 2  # wrong command line (Click's own code)
    INVALID = 3  # the input is invalid: config, table, model file, request
    CONFLICT = 4  # the destination exists (pass --overwrite) or is locked by another process
    DEPENDENCY = 5  # an optional dependency is missing (TensorFlow, pycuda, redis-py, ...)
    UNAVAILABLE = 6  # an external service (Redis, a server) cannot be reached
    CHECK_FAILED = 7  # a self-check or verification of a result failed
    INTERRUPTED = 130  # Ctrl-C (SIGINT): 128 + 2, as shells report it
    TERMINATED = 143  # SIGTERM: 128 + 15; outputs in progress were removed first


class HpsError(Exception):
    """Base class of every error the hps libraries raise on purpose.

    Args:
        message: what is wrong, one line, no trailing period needed.
        location: where: a file path, a JSON path such as ``$.models[0].sparse_files[1]``,
            a request field, or ``path:line:column``.
        hint: what the user can do about it; without one, the class's ``default_hint`` (every
            class has one, so every error the CLI prints ends with a ``hint:`` line).
    """

    exit_code: ExitCode = ExitCode.FAILURE
    default_hint = "rerun with --debug for the traceback, and report it"

    def __init__(self, message: str, *, location: str | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.location = location
        self.hint = hint or type(self).default_hint

    def __str__(self) -> str:
        return f"{self.location}: {self.message}" if self.location else self.message

    def to_dict(self) -> dict[str, object]:
        return {
            "error": type(self).__name__,
            "message": self.message,
            "location": self.location,
            "hint": self.hint,
            "exit_code": int(self.exit_code),
        }


class InvalidInputError(HpsError):
    """The input (a file, a table, a model, a request) is malformed or inconsistent."""

    exit_code = ExitCode.INVALID
    default_hint = "fix the file, field or request named above"


class ConfigError(InvalidInputError):
    """An HPS parameter-server config is invalid; ``issues`` holds every problem found."""

    default_hint = "run 'hps validate-config' on the config: it lists every problem by JSON path"

    def __init__(
        self,
        message: str,
        *,
        issues: tuple = (),
        location: str | None = None,
        hint: str | None = None,
    ):
        super().__init__(message, location=location, hint=hint)
        self.issues = tuple(issues)


class NotFoundError(InvalidInputError):
    """A named thing (model, table, variable, file) does not exist."""

    default_hint = "check the name or path (names are case-sensitive)"


class OutputExistsError(HpsError):
    """The destination already exists and --overwrite was not given, or it is locked."""

    exit_code = ExitCode.CONFLICT
    default_hint = "pass --overwrite to replace it, choose another path, or stop the other process"


class DependencyMissingError(HpsError):
    """An optional dependency needed for this operation is not installed."""

    exit_code = ExitCode.DEPENDENCY
    default_hint = "pip install 'hps-cli[all]'"

    def __init__(self, package: str, extra: str, purpose: str):
        super().__init__(
            f"{purpose} needs the Python package '{package}', which is not installed",
            location=package,
            hint=f"pip install 'hps-cli[{extra}]'",
        )
        self.package = package
        self.extra = extra


class ServiceUnavailableError(HpsError):
    """An external service (Redis Cluster, an inference server) cannot be reached."""

    exit_code = ExitCode.UNAVAILABLE
    default_hint = "check that the service runs and that the configured address reaches it"


class CheckFailedError(HpsError):
    """A result failed its own verification (e.g. dissect's self-check)."""

    exit_code = ExitCode.CHECK_FAILED
    default_hint = "nothing was kept; rerun with --debug and report the mismatch"


class CapacityError(HpsError):
    """A bounded resource (a worker buffer pool, a queue) stayed exhausted past its wait limit."""

    exit_code = ExitCode.UNAVAILABLE
    default_hint = "retry later, or raise the limit named above"


class Terminated(BaseException):
    """SIGTERM arrived (raised by the CLI's handler in the main thread). A BaseException, like
    KeyboardInterrupt, so that it unwinds through every ``except Exception`` and every
    ``finally`` / ``except BaseException`` cleanup removes what it was building."""
