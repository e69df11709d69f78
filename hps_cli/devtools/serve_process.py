"""Run `hps serve` in the background on free loopback ports (examples, tests, benchmarks).

    with ServeProcess("ps.json", model_repository="repo") as server:
        client = tritonclient.http.InferenceServerClient(url=server.http_url)
        ...
    # leaving the block sends SIGTERM and waits for a clean exit (exit code 0)

The ports are 0 (the server binds free ones) and are read from its ``ready`` log event, so
parallel runs cannot collide. The server's log (JSON lines: events and the access log) goes to
a file, never to a pipe that could fill up; ``log_events()`` parses it, and an error raised
here quotes its end.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


class ServeProcess:
    """`hps serve` as a child process.

    Args:
        config: the ps.json to serve (None: only the model repository's models).
        model_repository: a model repository (``--model-repository``), if any.
        extra_args: more ``hps serve`` options.
        env: variables set for the server on top of this process's environment.
        ready_timeout: seconds to wait for a log event in ``start``/``wait_for``.
        log_path: where the server's output goes (default: a new temporary folder).
        echo: print the command line before starting it.

    ``http_url``/``grpc_url`` are ``host:port`` strings (tritonclient's form), ``metrics_url``
    a full URL; ``ports`` maps ``http``, ``grpc`` and ``metrics`` to the bound ports.
    """

    def __init__(
        self,
        config: Path | str | None,
        *,
        model_repository: Path | str | None = None,
        extra_args: tuple[str, ...] | list[str] = (),
        env: dict[str, str] | None = None,
        ready_timeout: float = 180,
        log_path: Path | str | None = None,
        echo: bool = False,
    ):
        self.args = ["serve"] + ([] if config is None else ["--config", str(config)])
        if model_repository is not None:
            self.args += ["--model-repository", str(model_repository)]
        # Ports first: a caller's own --http-port in extra_args comes later and wins.
        self.args += ["--http-port", "0", "--grpc-port", "0", "--metrics-port", "0", *extra_args]
        self.env = dict(os.environ, **(env or {}))
        self.env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        self.ready_timeout = ready_timeout
        if log_path is None:
            log_path = Path(tempfile.mkdtemp(prefix="hps-serve-")) / "server.log"
        self.log_path = Path(log_path)
        self.echo = echo
        self.process: subprocess.Popen | None = None
        self.ports: dict[str, int] = {}

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.ports['http']}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.ports['grpc']}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['metrics']}/metrics"

    def start(self) -> "ServeProcess":
        """Launch the server and wait until it is ready (its models loaded)."""
        return self.launch().wait_for("ready")

    def launch(self) -> "ServeProcess":
        """Start the server without waiting for it."""
        if self.echo:
            command = " ".join(shlex.quote(a) for a in self.args)
            print(f"$ hps {command} &  (log: {self.log_path})", flush=True)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "hps_cli", *self.args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        return self

    def wait_for(self, event: str) -> "ServeProcess":
        """Wait for a log event ("listening": ports bound; "ready") and read the ports."""
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            for doc in self.log_events():
                if doc.get("event") == event:
                    self.ports = {k: doc[f"{k}_port"] for k in ("http", "grpc", "metrics")}
                    return self
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"hps serve exited with code {self.process.returncode}:\n"
                    f"{self.log_text()[-4000:]}"
                )
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(
            f"hps serve logged no '{event}' in {self.ready_timeout} s:\n{self.log_text()[-4000:]}"
        )

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_events(self) -> list[dict]:
        """The JSON lines of the log so far."""
        out = []
        for line in self.log_text().splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    pass  # a line being written
        return out

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, wait (kill after ``timeout`` seconds); returns the exit code (0 for a clean
        shutdown)."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        code = self.process.returncode
        self.process = None
        return code

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)

    def __enter__(self) -> "ServeProcess":
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        code = self.stop()
        if exc_type is None and code != 0:
            raise RuntimeError(f"hps serve exited with code {code} after SIGTERM")
