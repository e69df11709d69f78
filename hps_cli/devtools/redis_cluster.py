"""A real local Redis Cluster for tests, benchmarks and examples: N masters on loopback ports.

    with LocalRedisCluster(3) as cluster:
        cluster.address      # "127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3" (HPS's address syntax)
        cluster.kill(1)      # SIGKILL one node, e.g. to test fall-through

Each node is ``redis-server --port P --cluster-enabled yes`` without persistence, in its own
folder; ``redis-cli --cluster create`` assigns the slots; start-up waits for ``cluster_state:ok``
on every node. ``stop`` kills what was started (only those processes).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_cluster_ports(count: int) -> list[int]:
    """Ports P where P and the cluster bus port P + 10000 are both free."""
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port < 55000 and port not in ports and _port_free(port + 10000):
            ports.append(port)
    return ports


class LocalRedisCluster:
    """Start ``masters`` redis-server processes as one cluster (no replicas)."""

    def __init__(
        self, masters: int = 3, *, node_timeout_ms: int = 2000, workdir: Path | str | None = None
    ):
        if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
            raise RuntimeError(
                "redis-server and redis-cli are needed (apt-get install redis-server)"
            )
        self.masters = masters
        self.node_timeout_ms = node_timeout_ms
        self._own_dir = workdir is None
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="hps-redis-"))
        self.ports: list[int] = []
        self.procs: list[subprocess.Popen] = []

    @property
    def address(self) -> str:
        return ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def start(self, timeout: float = 30.0) -> "LocalRedisCluster":
        for attempt in range(3):
            self.ports = free_cluster_ports(self.masters)
            try:
                self._start_nodes(timeout)
                break
            except RuntimeError:
                self._kill_all()
                if attempt == 2:
                    raise
        nodes = [f"127.0.0.1:{p}" for p in self.ports]
        create = subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *nodes,
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if create.returncode != 0:
            self.stop()
            raise RuntimeError(f"redis-cli --cluster create failed: {create.stdout}{create.stderr}")
        self._wait(
            lambda p: "cluster_state:ok" in self.cli(p, "cluster", "info"),
            timeout,
            "cluster_state:ok",
        )
        return self

    def _start_nodes(self, timeout: float) -> None:
        self.procs = []
        for port in self.ports:
            folder = self.dir / str(port)
            folder.mkdir(parents=True, exist_ok=True)
            self.procs.append(
                subprocess.Popen(
                    [
                        "redis-server",
                        "--port",
                        str(port),
                        "--bind",
                        "127.0.0.1",
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        str(folder / "nodes.conf"),
                        "--cluster-node-timeout",
                        str(self.node_timeout_ms),
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--daemonize",
                        "no",
                        "--dir",
                        str(folder),
                        "--logfile",
                        str(folder / "redis.log"),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        self._wait(lambda p: self.cli(p, "ping") == "PONG", timeout, "PONG")

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        pending = list(self.ports)
        while pending:
            if any(proc.poll() is not None for proc in self.procs):
                raise RuntimeError("a redis-server exited during start-up")
            pending = [p for p in pending if not ready(p)]
            if pending and time.monotonic() > deadline:
                raise RuntimeError(f"redis nodes {pending} did not reach {what}")
            if pending:
                time.sleep(0.05)

    @staticmethod
    def cli(port: int, *args: str) -> str:
        res = subprocess.run(
            ["redis-cli", "-p", str(port), *args], capture_output=True, text=True, timeout=10
        )
        return res.stdout.strip()

    def kill(self, index: int) -> None:
        """SIGKILL node ``index`` (its slots become unreachable; no replica takes over)."""
        proc = self.procs[index]
        proc.kill()
        proc.wait(timeout=10)

    def _kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:  # pragma: no cover
                pass
        self.procs = []

    def stop(self) -> None:
        self._kill_all()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def flushall(self) -> None:
        for port, proc in zip(self.ports, self.procs):
            if proc.poll() is None:
                self.cli(port, "flushall")

    def __enter__(self) -> "LocalRedisCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
