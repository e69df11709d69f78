"""One worker process of ``hps serve --workers N``, started by the supervisor (workers.py) with
``python -m hps_cli.serve.worker``; not a command of its own.

- Its ``ServeOptions``, its number, the supervisor's pid and the descriptor of its status pipe
  arrive as one JSON line on stdin (the admin token never shows in ``ps`` or the
  environment); stdin then stays open: end of file means the supervisor is gone,
  and the worker shuts down as on SIGTERM. ``PR_SET_PDEATHSIG`` sends it SIGTERM too, so a
  supervisor killed with SIGKILL leaves no worker behind.
- Its log records carry ``"worker": i``; its lifecycle events are renamed ``worker_listening``,
  ``worker_ready``, ... (``ready`` is the supervisor's, once every worker is ready), and
  ``listening`` / ``ready`` are also written to the status pipe the supervisor reads, with the
  worker's own metrics port.
- A start-up error is printed as ``hps`` prints it (one line, a hint) and exits with its code.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import logging
import os
import signal
import sys
import threading
from dataclasses import fields
from pathlib import Path

LIFECYCLE = ("listening", "ready", "draining", "stopped", "stopped_while_loading")
REPORTED = ("listening", "ready")
PR_SET_PDEATHSIG = 1
EXIT_BACKSTOP_S = 5.0  # past the shutdown timeout, a worker whose supervisor died exits hard


NOT_SENT = ("checked",)  # the supervisor's preflight: a worker checks the config it serves


def options_to_json(options) -> str:
    doc = {f.name: getattr(options, f.name) for f in fields(options) if f.name not in NOT_SENT}
    for key in ("config", "model_repository"):
        if doc[key] is not None:
            doc[key] = str(doc[key])
    return json.dumps(doc)


def options_from_json(text: str):
    from .core import ServeOptions

    doc = json.loads(text)
    for key in ("config", "model_repository"):
        if doc[key] is not None:
            doc[key] = Path(doc[key])
    doc["custom_objects"] = tuple(doc["custom_objects"])
    return ServeOptions(**doc)


class _WorkerRecords(logging.Filter):
    """Adds the worker's number to every record, renames lifecycle events and reports
    ``listening`` / ``ready`` to the supervisor."""

    def __init__(self, index: int, status_fd: int):
        super().__init__()
        self.index = index
        self.status_fd = status_fd

    def filter(self, record: logging.LogRecord) -> bool:
        fields_ = getattr(record, "fields", None)
        if fields_ is None:
            fields_ = {"message": record.getMessage()}
        fields_ = dict(fields_)
        name = fields_.get("event")
        if name in REPORTED and not getattr(record, "_reported", False):
            record._reported = True  # several handlers see the same record
            self._report(fields_)
        if name in LIFECYCLE:
            fields_["event"] = f"worker_{name}"
        fields_["worker"] = self.index
        record.fields = fields_
        return True

    def _report(self, doc: dict) -> None:
        try:
            os.write(self.status_fd, (json.dumps(doc, default=str) + "\n").encode())
        except OSError:
            pass  # the supervisor is gone; stdin's end of file stops this worker


def _die_with_parent(parent: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: stdin's end of file still stops us
        pass
    if os.getppid() != parent:  # the supervisor died before prctl
        os._exit(1)


def _watch_stdin(shutdown_timeout_s: float) -> None:
    """SIGTERM to this process when the supervisor's end of stdin closes (it died), and a hard
    exit if the shutdown overruns."""
    try:
        while os.read(0, 4096):
            pass
    except OSError:
        pass
    os.kill(os.getpid(), signal.SIGTERM)
    timer = threading.Timer(shutdown_timeout_s + EXIT_BACKSTOP_S, os._exit, args=(1,))
    timer.daemon = True
    timer.start()


def _read_line(fd: int) -> bytes:
    """The first line of ``fd``, read unbuffered (the rest of stdin is watched for its end)."""
    line = b""
    while not line.endswith(b"\n"):
        chunk = os.read(fd, 1)
        if not chunk:
            raise SystemExit("hps serve worker: the supervisor sent no options")
        line += chunk
    return line


def main() -> None:
    from ..cli import _report
    from ..runtime.errors import HpsError
    from .logs import ACCESS, configure_logging
    from .server import serve

    spec = json.loads(_read_line(0))
    index, status_fd = spec["worker"], spec["status_fd"]
    _die_with_parent(spec["parent"])
    options = options_from_json(json.dumps(spec["options"]))
    options = dataclasses.replace(options, loop_cpu_slot=index)  # workers spread over CPUs
    if options.custom_objects:
        from ..common.custom_objects import allow_cwd_imports

        allow_cwd_imports()  # as the hps command does (the worker runs in its folder)
    configure_logging(spec["log_level"], spec["access_log"])
    records = _WorkerRecords(index, status_fd)
    for logger in (logging.getLogger("hps_cli"), ACCESS):
        for handler in logger.handlers:
            handler.addFilter(records)
    threading.Thread(
        target=_watch_stdin, args=(options.shutdown_timeout_s,), daemon=True, name="hps-parent"
    ).start()
    try:
        serve(options)
    except HpsError as exc:
        _report(exc, debug=os.environ.get("HPS_DEBUG", "") not in ("", "0"), json_mode=False)
        sys.exit(int(exc.exit_code))


if __name__ == "__main__":
    main()
