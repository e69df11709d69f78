"""Running the real `hps serve` in a subprocess for the serve tests.

    with ServerProcess(["--config", str(ps)]) as server:
        server.http     # "127.0.0.1:PORT" (tritonclient.http's url form)
        server.grpc     # "127.0.0.1:PORT"
        server.metrics  # "http://127.0.0.1:PORT/metrics"

Ports are 0 (the server picks free ones) and read from its ``ready`` log event, so parallel test
runs cannot collide. The log (JSON lines: events and the access log) goes to a file, never to a
pipe that could fill up; ``log_events()`` parses it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


class ServerProcess:
    def __init__(self, args: list[str], *, env: dict | None = None, timeout: float = 120.0):
        self.args = list(args)
        self.env = dict(os.environ, **(env or {}))
        self.env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        self.timeout = timeout
        self.dir = Path(tempfile.mkdtemp(prefix="hps-serve-test-"))
        self.log_path = self.dir / "server.log"
        self.proc: subprocess.Popen | None = None
        self.ports: dict[str, int] = {}

    def start(self) -> "ServerProcess":
        return self.launch().wait_for("ready")

    def launch(self) -> "ServerProcess":
        cmd = [
            sys.executable,
            "-m",
            "hps_cli",
            "serve",
            "--http-port",
            "0",
            "--grpc-port",
            "0",
            "--metrics-port",
            "0",
            *self.args,
        ]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        return self

    def wait_for(self, event: str) -> "ServerProcess":
        """Wait for a log event ("listening": ports bound; "ready") and read the ports."""
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            for doc in self.log_events():
                if doc.get("event") == event:
                    self.ports = {k: doc[f"{k}_port"] for k in ("http", "grpc", "metrics")}
                    return self
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"hps serve exited with {self.proc.returncode}:\n{self.log_text()[-4000:]}"
                )
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(
            f"hps serve logged no '{event}' in {self.timeout} s:\n{self.log_text()[-4000:]}"
        )

    @property
    def http(self) -> str:
        return f"127.0.0.1:{self.ports['http']}"

    @property
    def grpc(self) -> str:
        return f"127.0.0.1:{self.ports['grpc']}"

    @property
    def metrics(self) -> str:
        return f"http://127.0.0.1:{self.ports['metrics']}/metrics"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_events(self) -> list[dict]:
        out = []
        for line in self.log_text().splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    pass  # a line being written
        return out

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.terminate(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()


def http_get(url: str, path: str, headers: dict | None = None) -> tuple[int, bytes]:
    import http.client

    host, port = url.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def http_post(
    url: str, path: str, body: bytes, headers: dict | None = None, conn=None
) -> tuple[int, dict, bytes]:
    """POST and return (status, headers, body); reuses ``conn`` when given."""
    import http.client

    own = conn is None
    if own:
        host, port = url.split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("POST", path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        if own:
            conn.close()


def binary_lookup_body(keys: np.ndarray, counts: np.ndarray) -> tuple[bytes, dict]:
    """An HPS-backend request (KEYS binary, NUMKEYS JSON, binary output) as tritonclient
    sends it; returns (body, headers)."""
    keys = np.ascontiguousarray(keys, dtype=np.int64)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "KEYS",
                    "shape": [1, keys.size],
                    "datatype": "INT64",
                    "parameters": {"binary_data_size": keys.nbytes},
                },
                {
                    "name": "NUMKEYS",
                    "shape": [1, len(counts)],
                    "datatype": "INT32",
                    "data": [int(c) for c in counts],
                },
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    return header + keys.tobytes(), {"Inference-Header-Content-Length": str(len(header))}


def binary_output(headers: dict, body: bytes) -> np.ndarray:
    """OUTPUT0 of a binary response."""
    start = int(headers["Inference-Header-Content-Length"])
    return np.frombuffer(body, dtype=np.float32, offset=start)


def lookup_inputs(module, keys: np.ndarray, counts: np.ndarray, *, binary: bool = True):
    """tritonclient InferInputs of the HPS backend contract ([1, total] and [1, n_tables])."""
    a = module.InferInput("KEYS", [1, keys.size], "INT64")
    b = module.InferInput("NUMKEYS", [1, len(counts)], "INT32")
    kwargs = {"binary_data": binary} if module.__name__.endswith("http") else {}
    a.set_data_from_numpy(np.asarray(keys, np.int64).reshape(1, -1), **kwargs)
    b.set_data_from_numpy(np.asarray(counts, np.int32).reshape(1, -1), **kwargs)
    return [a, b]


def scrape(url: str) -> dict[str, float]:
    """Prometheus text -> {'name{labels}': value} (samples only)."""
    import urllib.request

    with urllib.request.urlopen(url, timeout=30) as response:
        text = response.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out
