"""Where a lookup model's config comes from, checked as start-up checks a ps.json.

Every lookup model is served by a runtime of its own, built from a config that holds that one
model: the top-level blocks of a ps.json (``supportlonglong``, ``fuse_embedding_table``,
``volatile_db``, ``persistent_db``, ``update_source``) and the model's block. Its sources:

- the server's ps.json (``--config``): at start-up, each of its models; on a load without
  parameters, the model's block as the file holds it then (re-read: a model added to the
  file, or changed, is loaded);
- a load request's ``parameters.config``: a model block (``{"model": ..., "sparse_files":
  ...}``, the server's top-level blocks apply) or a whole ps.json document holding the model;
  relative ``sparse_files`` resolve against the server's ps.json folder (the working
  directory without ``--config``);
- a load request's ``parameters.ps_config``: the path of a ps.json on the server's machine
  holding the model (relative ``sparse_files`` resolve against its folder).

The stores are the server's: a document's ``supportlonglong``, ``volatile_db``,
``persistent_db`` and ``update_source`` must equal the server's ps.json's (a restart changes
them); without ``--config`` a load must give a whole document. A config is checked as at
start-up (runtime/preflight.py: schema, semantics, every table file, the shared-memory segment,
the database) and its errors name the JSON path in what the client sent (``$.sparse_files[1]``
of a model block, ``$.models[2]....`` of a document). What comes out is the ``Preflight`` of the
one-model config, which its runtime starts from without checking again.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path

from ..runtime.config import PsConfig
from ..runtime.config.parse import parse_config_text, read_config_file
from ..runtime.config.validate import ValidationResult, validate_document
from ..runtime.errors import ConfigError, InvalidInputError, NotFoundError
from ..runtime.preflight import Preflight, log_warnings, preflight
from ..runtime.table.file_layout import KEY_FILE, VECTOR_FILE
from .protocol import invalid

log = logging.getLogger("hps_cli.serve")

STORE_FIELDS = ("supportlonglong", "volatile_db", "persistent_db", "update_source")
LOAD_PARAMETERS = ("config", "ps_config")


@dataclass(frozen=True)
class LookupSource:
    """How to (re)build one lookup model's config.

    ``file``: the ps.json it is read from (re-read on every reload), or None for a document
    sent in a request (kept as sent). ``top``: the document's top-level blocks; ``block``: the
    model's; ``prefix``: the block's JSON path in its document (``$`` for a bare block);
    ``base_dir``: where relative table paths resolve; ``label``: its name in messages.
    """

    name: str
    label: str
    top: dict
    block: dict
    prefix: str
    base_dir: Path
    file: Path | None = None


@dataclass(frozen=True)
class ServerConfig:
    """The server's ps.json as it was at start-up: its typed config (None without
    ``--config``), its top-level blocks and its folder."""

    path: Path | None = None
    config: PsConfig | None = None
    top: dict | None = None

    @property
    def base_dir(self) -> Path:
        return self.path.parent if self.path is not None else Path.cwd()


def top_blocks(doc: dict) -> dict:
    return {k: v for k, v in doc.items() if k != "models"}


def server_models(
    path: Path, checked: Preflight | None = None, *, allow_non_finite: bool = False
) -> tuple[ServerConfig, list[tuple[LookupSource, Preflight]]]:
    """The server's ps.json, checked as start-up checks it (``checked``: the preflight
    ``hps serve`` ran before binding its ports; else it runs here) with its warnings logged,
    and for each model its source and the ``Preflight`` of its one-model config (the same
    findings, no second check)."""
    path = Path(path)
    if checked is None:
        checked = preflight(path, allow_non_finite=allow_non_finite)
    config = checked.checked_config()
    log_warnings(checked)
    doc, _ = read_config_file(path)
    server = ServerConfig(path, config, top_blocks(doc))
    models = []
    for i, model in enumerate(config.models):
        source = LookupSource(
            model.model,
            str(path),
            server.top,
            doc["models"][i],
            f"$.models[{i}]",
            path.parent,
            path,
        )
        one = ValidationResult(str(path), (), replace(config, models=(model,)))
        models.append((source, Preflight(one, checked.tables, checked.allow_non_finite)))
    return server, models


def model_names(server: ServerConfig) -> set[str]:
    """The models the server's ps.json names now (as at start-up when it cannot be read)."""
    if server.path is None:
        return set()
    try:
        doc, _ = read_config_file(server.path)
        return {
            m["model"]
            for m in doc.get("models", [])
            if isinstance(m, dict) and isinstance(m.get("model"), str)
        }
    except InvalidInputError:
        return set(server.config.model_names) if server.config is not None else set()


def table_bytes(config: PsConfig) -> int:
    """Bytes of the key and vector files of every table of the config (sizes the RocksDB row
    cache once for all the runtimes that share the database)."""
    total = 0
    for model in config.models:
        for t in range(model.num_tables):
            folder = model.table_path(t)
            for name in (KEY_FILE, VECTOR_FILE):
                try:
                    total += os.path.getsize(folder / name)
                except OSError:
                    pass
    return total


def source_of_file(name: str, path: Path, label: str | None = None) -> LookupSource | None:
    """The source of model ``name`` in the ps.json at ``path`` (None when it has none)."""
    doc, _ = read_config_file(path)
    return _from_document(name, doc, label or str(path), path.parent, path)


def source_of_parameters(name: str, parameters: dict, server: ServerConfig) -> LookupSource | None:
    """The source a load request's parameters give (None: they give none)."""
    unknown = sorted(set(parameters) - set(LOAD_PARAMETERS))
    if unknown:
        raise invalid(
            f"unknown load parameter(s) {', '.join(unknown)} (parameters: config, ps_config)",
            "parameters",
        )
    if "config" in parameters and "ps_config" in parameters:
        raise invalid("give config or ps_config, not both", "parameters")
    if "ps_config" in parameters:
        value = parameters["ps_config"]
        if not isinstance(value, str) or not value:
            raise invalid("must be the path of a ps.json file", "parameters.ps_config")
        path = Path(value).expanduser()
        if not path.is_absolute():
            path = server.base_dir / path
        source = source_of_file(name, path)
        if source is None:
            raise NotFoundError(f"no model '{name}' in {path}", location="parameters.ps_config")
        return source
    if "config" not in parameters:
        return None
    text = parameters["config"]
    if not isinstance(text, str):
        raise invalid("must be a JSON text (a string)", "parameters.config")
    label = "parameters.config"
    doc, _ = parse_config_text(text, label)
    if "models" in doc:
        source = _from_document(name, doc, label, server.base_dir, None)
        if source is None:
            raise NotFoundError(
                f"the document holds no model '{name}'", location=f"{label} $.models"
            )
        return source
    if server.top is None:
        raise invalid(
            "a model block needs the server's ps.json for its top-level blocks; this server "
            "has none (no --config): send a whole ps.json document",
            label,
        )
    block = dict(doc)
    if block.setdefault("model", name) != name:
        raise invalid(
            f"the block's model is '{block['model']}' but the request loads '{name}'",
            f"{label} $.model",
        )
    return LookupSource(name, label, server.top, block, "$", server.base_dir)


def _from_document(
    name: str, doc: dict, label: str, base_dir: Path, file: Path | None
) -> LookupSource | None:
    models = doc.get("models")
    if not isinstance(models, list):
        return None
    for i, block in enumerate(models):
        if isinstance(block, dict) and block.get("model") == name:
            return LookupSource(
                name, label, top_blocks(doc), block, f"$.models[{i}]", base_dir, file
            )
    return None


def refreshed(source: LookupSource) -> LookupSource:
    """The source as its file holds it now (a source sent in a request: as it was)."""
    if source.file is None:
        return source
    fresh = source_of_file(source.name, source.file, source.label)
    if fresh is None:
        raise NotFoundError(
            f"{source.file} holds no model '{source.name}' any more", location="model"
        )
    return fresh


def checked(
    source: LookupSource, server: ServerConfig, *, allow_non_finite: bool = False
) -> Preflight:
    """The one-model config of a source, checked as start-up checks a ps.json (preflight:
    files, shared memory and database included); its warnings are logged.

    Raises:
        ConfigError: the first error, located in what the client sent.
    """
    doc = {**source.top, "models": [source.block]}
    result = validate_document(
        doc, source=source.label, base_dir=source.base_dir, check_files=False
    )
    if not result.ok or result.config is None:
        raise _located(result, source)
    config = replace(result.config, source_path=source.label)
    if server.config is not None:
        for name in STORE_FIELDS:
            if getattr(config, name) != getattr(server.config, name):
                raise ConfigError(
                    f"{name} differs from the server's ps.json ({server.path}): every lookup "
                    "model of a server uses its stores",
                    location=f"{source.label} $.{name}",
                    hint="send the model's block alone, or restart the server to change the stores",
                )
    found = preflight(config, allow_non_finite=allow_non_finite)
    issues = result.issues + found.issues
    if not found.ok:
        raise _located(ValidationResult(source.label, issues), source)
    for issue in issues:
        log.warning(
            "config %s: %s",
            source.label,
            replace(issue, json_path=relocated(issue.json_path, source.prefix)).one_line(),
        )
    return Preflight(
        ValidationResult(source.label, (), found.checked_config()), found.tables, allow_non_finite
    )


def _located(result: ValidationResult, source: LookupSource) -> ConfigError:
    """The first error of ``result`` as a ``ConfigError`` located in what the client sent."""
    first = result.errors[0]
    more = len(result.errors) - 1
    return ConfigError(
        first.message + (f" (and {more} more error{'s' * (more > 1)})" if more else ""),
        issues=result.issues,
        location=f"{source.label} {relocated(first.json_path, source.prefix)}",
        hint=first.hint,
    )


def relocated(json_path: str, prefix: str) -> str:
    """A JSON path of the one-model document as a path in the document the model came from."""
    head = "$.models[0]"
    if json_path == head or json_path.startswith(head + ".") or json_path.startswith(head + "["):
        return prefix + json_path[len(head) :]
    return json_path
