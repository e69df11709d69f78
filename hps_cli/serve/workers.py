"""``hps serve --workers N``: a supervisor and N worker processes on the same ports.

1. The supervisor makes the start-up checks once (server.check_options: the checks
   validate-config runs, runtime/preflight.py; and what N > 1 allows: worker_sharing.py),
   reserves the HTTP and gRPC ports (bound with SO_REUSEPORT, never listening: with port 0 this
   picks the port every worker then binds), loads into RocksDB what it lacks when the workers
   will open it read-only, and binds ``--metrics-port`` (worker_metrics.py). Each worker then
   checks the config it serves (RocksDB read-only) as any server does before it loads.
2. It starts N workers (``python -m hps_cli.serve.worker``: a fresh interpreter, no fork of a
   process holding threads or CUDA); each is a whole server bound with SO_REUSEPORT, so the
   kernel spreads new connections over them. The supervisor logs ``ready`` (with the ports)
   once every worker is ready.
3. A worker that dies after it was ready is started again (logged at warning,
   ``hps_worker_restarts_total``), at most once a second, as often as it takes; the others keep
   answering meanwhile. A worker that fails before it was first ready stops the whole server,
   which exits with that worker's exit code (its error line is on stderr).
4. SIGTERM / SIGINT: every worker gets SIGTERM and drains with ``--shutdown-timeout`` less
   ``EXIT_MARGIN_S``; what is still running at ``--shutdown-timeout`` is killed; exit 0.
   A supervisor killed outright takes its workers with it (worker.py: PR_SET_PDEATHSIG and the
   end of file of their stdin).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
import time

from ..runtime.errors import InvalidInputError
from .core import ServeOptions
from .logs import event
from .server import check_options
from .worker import options_to_json
from .worker_metrics import WorkerMetrics
from .worker_sharing import needs_read_only_persistent, prepare_persistent, refuse_private_volatile

log = logging.getLogger("hps_cli.serve")

RESTART_INTERVAL_S = 1.0  # a worker that keeps dying is started at most once a second
EXIT_MARGIN_S = 0.5  # of the shutdown timeout, left for the workers' interpreters to exit
MIN_SHUTDOWN_S = 1.5  # a worker's shutdown takes about 1 s even with --shutdown-timeout 0


class WorkerProcess:
    """One worker as the supervisor sees it."""

    def __init__(self, index: int):
        self.index = index
        self.process: subprocess.Popen | None = None
        self.status_fd: int | None = None
        self.pending = b""
        self.ready = False
        self.ever_ready = False
        self.metrics_url: str | None = None
        self.restarts = 0
        self.started = 0.0
        self.restart_at: float | None = None


class Supervisor:
    def __init__(self, options: ServeOptions, log_level: str, access_log: str | None):
        self.options = options
        self.count = options.workers
        self.log_level = log_level
        self.access_log = access_log
        self.workers = [WorkerProcess(i) for i in range(self.count)]
        self.selector = selectors.DefaultSelector()
        self.signal_received: int | None = None
        self.announced = False
        self.reserved: list[socket.socket] = []
        self.metrics = WorkerMetrics(lambda: self.workers, self.count)
        self.worker_options: ServeOptions | None = None
        self.ports: dict[str, int] = {}

    # ------------------------------------------------------------------ start-up

    def prepare(self) -> None:
        options = self.options
        config = check_options(options)
        read_only = False
        if config is not None:
            refuse_private_volatile(config, self.count)
            read_only = needs_read_only_persistent(config, self.count)
        http_port = self._reserve(options.http_port, "--http-port")
        grpc_port = self._reserve(options.grpc_port, "--grpc-port")
        if read_only:
            prepare_persistent(options.checked)
        metrics_port = self.metrics.start(options.host, options.metrics_port)
        self.ports = {"http": http_port, "grpc": grpc_port, "metrics": metrics_port}
        self.worker_options = dataclasses.replace(
            options,
            http_port=http_port,
            grpc_port=grpc_port,
            metrics_port=0,
            reuse_port=True,
            persistent_read_only=read_only,
            checked=None,
            shutdown_timeout_s=max(0.0, options.shutdown_timeout_s - EXIT_MARGIN_S),
        )

    def _reserve(self, port: int, option: str) -> int:
        """Bind (without listening) with SO_REUSEPORT: the port stays ours, the workers join."""
        host = self.options.host
        try:
            family, kind, proto, _, address = socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )[0]
            sock = socket.socket(family, kind, proto)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(address)
        except OSError as exc:
            raise InvalidInputError(
                f"cannot listen on {host}:{port}: {exc.strerror}",
                location=option,
                hint="choose another port or host",
            ) from None
        self.reserved.append(sock)
        return sock.getsockname()[1]

    def _spawn(self, worker: WorkerProcess) -> None:
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        try:
            worker.process = subprocess.Popen(
                [sys.executable, "-m", "hps_cli.serve.worker"],
                stdin=subprocess.PIPE,
                pass_fds=(write_fd,),  # the same number in the worker
            )
        finally:
            os.close(write_fd)
        spec = {
            "worker": worker.index,
            "parent": os.getpid(),
            "status_fd": write_fd,
            "options": json.loads(options_to_json(self.worker_options)),
            "log_level": self.log_level,
            "access_log": self.access_log,
        }
        worker.process.stdin.write(json.dumps(spec).encode() + b"\n")
        worker.process.stdin.flush()  # stdin stays open: its end of file means we are gone
        worker.status_fd = read_fd
        worker.pending = b""
        worker.ready = False
        worker.metrics_url = None
        worker.started = time.monotonic()
        worker.restart_at = None
        self.selector.register(read_fd, selectors.EVENT_READ, worker)

    # ------------------------------------------------------------------ running

    def run(self) -> int:
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        self.selector.register(wake_r, selectors.EVENT_READ, None)
        try:
            self.prepare()
            for worker in self.workers:
                self._spawn(worker)
            return self._supervise()
        finally:
            self._stop_all()
            signal.set_wakeup_fd(-1)
            os.close(wake_r)
            os.close(wake_w)

    def _on_signal(self, signum, frame) -> None:
        if self.signal_received is None:
            self.signal_received = signum

    def _supervise(self) -> int:
        while self.signal_received is None:
            for key, _ in self.selector.select(timeout=0.2):
                if key.data is None:
                    _drain(key.fd)
                else:
                    self._read_status(key.data)
            now = time.monotonic()
            for worker in self.workers:
                if worker.process is not None and worker.process.poll() is not None:
                    code = self._exited(worker)
                    if code is not None:
                        return code
                if worker.restart_at is not None and now >= worker.restart_at:
                    worker.restarts += 1
                    self._spawn(worker)
            if not self.announced and all(w.ready for w in self.workers):
                self.announced = True
                event(
                    log,
                    "ready",
                    host=self.options.host,
                    http_port=self.ports["http"],
                    grpc_port=self.ports["grpc"],
                    metrics_port=self.ports["metrics"],
                    workers=self.count,
                    pids=[w.process.pid for w in self.workers],
                )
        event(log, "draining", signal=signal.Signals(self.signal_received).name)
        return 0

    def _read_status(self, worker: WorkerProcess) -> bool:
        """Read what the worker reported; False when there was nothing to read."""
        try:
            data = os.read(worker.status_fd, 65536)
        except BlockingIOError:
            return False
        if not data:  # the worker exited; poll() sees it
            self._close_status(worker)
            return False
        worker.pending += data
        *lines, worker.pending = worker.pending.split(b"\n")
        for line in lines:
            doc = json.loads(line)
            if doc.get("event") == "listening":
                host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(
                    self.options.host, self.options.host
                )  # the worker's metrics port, on --host
                if ":" in host and not host.startswith("["):
                    host = f"[{host}]"
                worker.metrics_url = f"http://{host}:{doc['metrics_port']}/metrics"
            elif doc.get("event") == "ready":
                worker.ready = worker.ever_ready = True
        return True

    def _close_status(self, worker: WorkerProcess) -> None:
        if worker.status_fd is not None:
            self.selector.unregister(worker.status_fd)
            os.close(worker.status_fd)
            worker.status_fd = None

    def _exited(self, worker: WorkerProcess) -> int | None:
        """Handle a worker that exited: the server's exit code when it failed at start-up,
        else None (it is started again)."""
        code = worker.process.returncode
        for _ in range(64):  # what it reported just before it died ("ready", say)
            if worker.status_fd is None or not self._read_status(worker):
                break
        self._close_status(worker)
        worker.process.stdin.close()
        worker.process = None
        worker.ready = False
        if not worker.ever_ready:
            event(log, "worker_failed", logging.ERROR, worker=worker.index, exit_code=code)
            return code if code > 0 else 1
        worker.restart_at = max(time.monotonic(), worker.started + RESTART_INTERVAL_S)
        event(
            log,
            "worker_restarting",
            logging.WARNING,
            worker=worker.index,
            exit_code=code,
            message="the worker died; starting it again",
        )
        return None

    # ------------------------------------------------------------------ shutdown

    def _stop_all(self) -> None:
        started = time.monotonic()
        deadline = started + max(self.options.shutdown_timeout_s, MIN_SHUTDOWN_S)
        running = [w for w in self.workers if w.process is not None]
        for worker in running:
            if worker.process.poll() is None:
                worker.process.send_signal(signal.SIGTERM)
        for worker in running:
            try:
                worker.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                event(log, "worker_killed", logging.WARNING, worker=worker.index)
                worker.process.kill()
                worker.process.wait()
            worker.process.stdin.close()
            self._close_status(worker)
            worker.process = None
        self.metrics.stop()
        for sock in self.reserved:
            sock.close()
        self.reserved.clear()
        if self.signal_received is not None:
            event(log, "stopped", seconds=round(time.monotonic() - started, 3))


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def serve_workers(options: ServeOptions, log_level: str, access_log: str | None) -> None:
    """Run ``options.workers`` server processes until SIGTERM/SIGINT (blocking). Start-up
    errors of the supervisor are raised; a worker's start-up failure exits with its code."""
    code = Supervisor(options, log_level, access_log).run()
    if code:
        sys.exit(code)
