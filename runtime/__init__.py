"""hps runtime: the HPS table format, the typed config and the lookup hierarchy.

Importing it loads neither TensorFlow, PyCUDA nor Click; heavy backends load on first use.
"""

from .errors import (CapacityError, CheckFailedError, ConfigError, DependencyMissingError,
                     ExitCode, HpsError, InvalidInputError, NotFoundError, OutputExistsError,
                     ServiceUnavailableError)

__all__ = [
    "CapacityError", "CheckFailedError", "ConfigError", "DependencyMissingError", "ExitCode",
    "HpsError", "InvalidInputError", "NotFoundError", "OutputExistsError",
    "ServiceUnavailableError",
]
