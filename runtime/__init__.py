"""hps runtime: the HPS table format, the typed config and the lookup hierarchy.

Importing it loads neither TensorFlow, PyCUDA nor Click; heavy backends load on first use.
"""

from .errors import (
    CapacityError,
    CheckFailedError,
    ConfigError,
    DependencyMissingError,
    ExitCode,
    HpsError,
    InvalidInputError,
    NotFoundError,
    OutputExistsError,
    ServiceUnavailableError,
)

__all__ = [
    "HPS",
    "TableTiers",
    "CapacityError",
    "CheckFailedError",
    "ConfigError",
    "DependencyMissingError",
    "ExitCode",
    "HpsError",
    "InvalidInputError",
    "NotFoundError",
    "OutputExistsError",
    "ServiceUnavailableError",
]


def __getattr__(name: str):
    # The lookup runtime loads on first use (it imports the config validator and table code).
    if name == "HPS":
        from .hps import HPS

        return HPS
    if name == "TableTiers":
        from .cpu_tiers import TableTiers

        return TableTiers
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
