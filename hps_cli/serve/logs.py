"""Structured logs: one JSON object per line.

``hps_cli.serve.access``: one record per request (time, protocol, method, path or RPC, model,
status, milliseconds, bytes in and out, peer, request id). Everything else (start-up, readiness
with the bound ports, shutdown, warnings) goes to ``hps_cli.serve`` / ``hps_cli.runtime``.
``configure_logging`` is called by the command, never by the library.
"""

from __future__ import annotations

import logging
import sys
import time

from ..common import finite_json

ACCESS = logging.getLogger("hps_cli.serve.access")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        fields = getattr(record, "fields", None)
        if fields:
            doc.update(fields)
        else:
            doc["message"] = record.getMessage()
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return finite_json.dumps(doc, default=str)


def configure_logging(level: str = "info", access_log: str | None = "-") -> None:
    """JSON lines on stderr; the access log on stderr ("-"), in a file, or off (None)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("hps_cli")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    ACCESS.handlers.clear()
    ACCESS.propagate = False
    if access_log is None:
        ACCESS.disabled = True
        return
    ACCESS.disabled = False
    ACCESS.setLevel(logging.INFO)
    target = handler if access_log == "-" else logging.FileHandler(access_log)
    if target is not handler:
        target.setFormatter(JsonFormatter())
    ACCESS.addHandler(target)


def event(logger: logging.Logger, name: str, level: int = logging.INFO, **fields) -> None:
    """A structured record ``{"event": name, ...fields}``."""
    if logger.isEnabledFor(level):
        logger.log(level, name, extra={"fields": {"event": name, **fields}})


def access_enabled() -> bool:
    """Whether access records are written (callers skip gathering their fields otherwise)."""
    return not ACCESS.disabled and ACCESS.isEnabledFor(logging.INFO)


def access(**fields) -> None:
    if access_enabled():
        ACCESS.info("access", extra={"fields": fields})
