"""The HPS parameter-server config: schema validation, semantic checks and the typed model."""

from .issues import ERROR, WARNING, ConfigIssue
from .model import ModelConfig, PersistentDbConfig, PsConfig, UpdateSourceConfig, VolatileDbConfig
from .validate import ValidationResult, load_config, validate_config_file, validate_document

__all__ = [
    "ERROR",
    "WARNING",
    "ConfigIssue",
    "ModelConfig",
    "PersistentDbConfig",
    "PsConfig",
    "UpdateSourceConfig",
    "VolatileDbConfig",
    "ValidationResult",
    "load_config",
    "validate_config_file",
    "validate_document",
]
