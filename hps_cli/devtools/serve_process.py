"""Run `hps serve` in the background on free loopback ports (examples, benchmarks, notebooks).

with ServeProcess("ps.json", model_repository="repo") as server:
    client = tritonclient.http.InferenceServerClient(url=server.http_url)
    ...
# leaving the block sends SIGTERM and waits for a clean exit (exit code 0)
"""

from __future__ import annotations

import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServeProcess:
    """`hps serve` as a child process; ``http_url``/``grpc_url`` are ``host:port`` strings."""

    def __init__(
        self,
        config: Path | str,
        *,
        model_repository: Path | str | None = None,
        extra_args: tuple[str, ...] = (),
        ready_timeout: float = 180,
        echo: bool = True,
    ):
        self.http_port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()
        self.args = [
            "serve",
            "--config",
            str(config),
            "--http-port",
            str(self.http_port),
            "--grpc-port",
            str(self.grpc_port),
            "--metrics-port",
            str(self.metrics_port),
            *extra_args,
        ]
        if model_repository is not None:
            self.args += ["--model-repository", str(model_repository)]
        self.ready_timeout = ready_timeout
        self.echo = echo
        self.process: subprocess.Popen | None = None

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self) -> "ServeProcess":
        if self.echo:
            print(f"$ hps {' '.join(shlex.quote(a) for a in self.args)} &", flush=True)
        self.process = subprocess.Popen([sys.executable, "-m", "hps_cli", *self.args])
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"hps serve exited with code {self.process.returncode} before it was ready"
                )
            try:
                with urllib.request.urlopen(
                    f"http://{self.http_url}/v2/health/ready", timeout=1
                ) as resp:
                    if resp.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.2)
        self.process.kill()
        raise RuntimeError("hps serve did not become ready in time")

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, wait; returns the exit code (0 for a clean shutdown)."""
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

    def __enter__(self) -> "ServeProcess":
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        code = self.stop()
        if exc_type is None and code != 0:
            raise RuntimeError(f"hps serve exited with code {code} after SIGTERM")
