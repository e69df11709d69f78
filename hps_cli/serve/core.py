"""The server's state, shared by the HTTP and gRPC front ends: options, runtimes, models and
their batchers, readiness, in-flight requests, statistics, and the admin operations.

Models:

- one lookup model per model of the ps.json given with ``--config`` (models.py);
- one inference model per package folder of ``--model-repository`` (a folder holding
  ``manifest.json``; served under the folder's name, see inference.py), and one per folder
  holding a TensorFlow SavedModel in Triton's or TF Serving's layout (saved_model.py: what
  ``hps build-graph`` writes to ``triton/``). A folder name must be a valid HPS name
  (``[A-Za-z0-9_-]{1,120}``) and must not be the name of a lookup model.

Readiness: the server is ready once every table is loaded, the embedding caches are prefilled
and every model answered one warm-up request; it stops being ready when it starts draining.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import __version__
from ..runtime.errors import ConfigError, InvalidInputError, NotFoundError, ServiceUnavailableError
from .arrivals import Arrivals
from .batcher import Batcher
from .limits import INLINE_BYTES, Limits
from .logs import event
from .metrics import Metrics
from .models import VERSION, LookupModel, ServedModel
from .protocol import InferRequest, InferResult, invalid, select_outputs
from .saved_model import find_saved_model
from .served_runtime import ServedRuntime
from .shared_memory import SharedMemoryRegions
from .worker_sharing import refuse_unshared_update

log = logging.getLogger("hps_cli.serve")

NAME = re.compile(r"^[A-Za-z0-9_\-]{1,120}$")
EXTENSIONS = ("binary_tensor_data", "model_configuration", "statistics", "model_repository")


def is_model_folder(folder: Path) -> bool:
    """A package (``manifest.json``) or a SavedModel folder of the model repository."""
    return (folder / "manifest.json").is_file() or find_saved_model(folder) is not None


@dataclass
class ServeOptions:
    """Everything ``hps serve`` takes (see the command's help and docs/serve.md)."""

    config: Path | None  # None: no lookup models, the repository's models only
    model_repository: Path | None = None
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    max_queue_delay_us: int = 0
    max_queue_size: int = 1024
    instances: int = 2
    max_request_bytes: int = 16 << 20
    max_elements: int = 1 << 18
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    admin_token: str | None = None
    shutdown_timeout_s: float = 30.0
    worker_threads: int | None = None
    redis_options: dict | None = None
    allow_shared_memory: bool = False
    reuse_port: bool = False  # HTTP and gRPC bind with SO_REUSEPORT (worker processes)
    workers: int = 1  # server processes on these ports (worker_sharing.py: what N > 1 means)
    persistent_read_only: bool = False  # open the config's RocksDB read-only (workers)


@dataclass
class Entry:
    model: ServedModel
    batcher: Batcher
    own_runtime: ServedRuntime | None = None  # closed with the model


class ServerCore:
    """Models, batchers and readiness; every method is called on the event loop."""

    def __init__(self, options: ServeOptions):
        self.options = options
        self.runtime: ServedRuntime | None = None
        self.entries: dict[str, Entry] = {}
        self.ready = False
        self.draining = False
        self.metrics = Metrics(self.runtimes)
        self.shared_memory = SharedMemoryRegions(options.allow_shared_memory)
        threads = options.worker_threads or max(4, 2 * options.instances)
        self.executor = ThreadPoolExecutor(threads, thread_name_prefix="hps-serve")
        self._inflight = 0
        self.metrics.inflight.set_function(lambda: self._inflight)
        self.arrivals = Arrivals()  # requests on their way, for the batchers
        self._idle = asyncio.Event()
        self._idle.set()
        self._admin = asyncio.Lock()
        self.limits = Limits(
            max_request_bytes=options.max_request_bytes,
            max_elements=options.max_elements,
            header_timeout_s=options.header_timeout_s,
            body_timeout_s=options.body_timeout_s,
        )
        # Decoding big bodies: off the event loop, a bounded number at a time.
        self._decoder = ThreadPoolExecutor(self.limits.decoders, thread_name_prefix="hps-decode")
        self._decoding = asyncio.Semaphore(self.limits.decoders)

    async def decode(self, size: int, fn, *args):
        """``fn(*args)``: on the event loop for bodies up to INLINE_BYTES (a few µs), else in a
        decoder thread, at most ``limits.decoders`` at once."""
        if size <= INLINE_BYTES:
            return fn(*args)
        async with self._decoding:
            return await asyncio.get_running_loop().run_in_executor(self._decoder, fn, *args)

    # ------------------------------------------------------------------ start-up

    def runtimes(self) -> list[ServedRuntime]:
        seen, out = set(), []
        for handle in [self.runtime] + [e.own_runtime for e in list(self.entries.values())]:
            if handle is not None and id(handle) not in seen:
                seen.add(id(handle))
                out.append(handle)
        return out

    async def load(self) -> None:
        """Load the runtime and every model, warm them up, then become ready."""
        loop = asyncio.get_running_loop()
        lookups, packages = await loop.run_in_executor(self.executor, self._load_all)
        for model in lookups:
            self._add(model, None)
        for model, own in packages:
            self._add(model, own)
        self.ready = True
        self.metrics.ready.set(1)

    def _load_all(self):
        options = self.options
        event(log, "loading", config=str(options.config) if options.config else None)
        lookups = []
        if options.config is not None:
            self.runtime = ServedRuntime(
                options.config,
                redis_options=options.redis_options,
                persistent_read_only=options.persistent_read_only,
            )
            for name in self.runtime.config.model_names:
                model = LookupModel(name, self.runtime)
                model.warm_up()
                lookups.append(model)
        packages = []
        try:
            for name in self._package_names():
                if self.runtime is not None and name in self.runtime.config.model_names:
                    raise ConfigError(
                        f"'{name}' is both a lookup model of {options.config} and a package "
                        f"folder of the model repository",
                        location=str(options.model_repository / name),
                        hint="rename the package folder (it is the inference model's name)",
                    )
                packages.append(self._build_package(name))
        except BaseException:
            for model, own in packages:
                model.close()
                if own is not None:
                    own.close()
            raise
        return lookups, packages

    def _package_names(self) -> list[str]:
        repo = self.options.model_repository
        if repo is None:
            return []
        if not repo.is_dir():
            raise ConfigError("the model repository is not a folder", location=str(repo))
        names = []
        for folder in sorted(repo.iterdir()):
            if not is_model_folder(folder):
                continue
            if not NAME.match(folder.name):
                event(
                    log,
                    "package_skipped",
                    logging.WARNING,
                    package=str(folder),
                    reason="the folder name is not a valid model name ([A-Za-z0-9_-]{1,120})",
                )
                continue
            names.append(folder.name)
        return names

    def _build_package(self, name: str):
        """(InferenceModel or SavedModelModel, its own runtime or None), warmed up. Runs in a
        worker thread."""
        from .inference import InferenceModel, read_manifest

        folder = self.options.model_repository / name
        if not (folder / "manifest.json").is_file():
            return self._build_saved_model(name, folder), None
        manifest = read_manifest(folder)
        own = None
        runtime = self.runtime
        if not self._shares_tables(folder, manifest):
            own = ServedRuntime(
                folder / manifest["ps_config"], redis_options=self.options.redis_options
            )
            runtime = own
        try:
            model = InferenceModel(name, folder, runtime, manifest)
            model.warm_up()
        except BaseException:
            if own is not None:
                own.close()
            raise
        event(
            log,
            "model_loaded",
            model=name,
            kind="inference",
            package=str(folder),
            hps_model=model.hps_model,
            runtime=str(runtime.path),
            shared_runtime=own is None,
        )
        return model, own

    @staticmethod
    def _build_saved_model(name: str, folder: Path) -> ServedModel:
        from .saved_model import load_saved_model

        model = load_saved_model(name, folder)
        model.warm_up()
        event(
            log,
            "model_loaded",
            model=name,
            kind=model.kind,
            saved_model=str(model.entry.path),
            version=model.version,
        )
        return model

    def _shares_tables(self, folder: Path, manifest: dict) -> bool:
        """True when the server's runtime serves exactly the package's model: same model name,
        and the same table folders (names, dims, files) in the same order. Then the package
        uses it (one copy of the tables; admin updates reach both); otherwise it gets a runtime
        of its own from its ps.json."""
        from ..runtime.config.validate import load_config

        name = manifest["model_name"]
        if self.runtime is None or name not in self.runtime.config.model_names:
            return False
        ours = self.runtime.config.model(name)
        theirs = load_config(folder / manifest["ps_config"], check_files=False).model(name)
        return ours.num_tables == theirs.num_tables and all(
            ours.table_name(t) == theirs.table_name(t)
            and ours.embedding_vecsize_per_table[t] == theirs.embedding_vecsize_per_table[t]
            and ours.table_path(t).resolve() == theirs.table_path(t).resolve()
            for t in range(ours.num_tables)
        )

    def _add(self, model: ServedModel, own: ServedRuntime | None) -> None:
        instances = self.options.instances
        cfg = model.runtime.config.model(model.hps_model) if model.runtime is not None else None
        if cfg is not None and cfg.gpucache:  # a lookup holds one of the model's worker buffers
            instances = max(1, min(instances, cfg.num_of_worker_buffer_in_pool))
        batcher = Batcher(
            model,
            self.executor,
            max_queue_delay_s=self.options.max_queue_delay_us / 1e6,
            instances=instances,
            max_queue_size=self.options.max_queue_size,
            on_batch=self.metrics.on_batch,
            arrivals=self.arrivals,
        )
        self.entries[model.name] = Entry(model, batcher, own)
        self.metrics.track_queue(model.name, lambda b=batcher: b.depth)

    # ------------------------------------------------------------------ requests

    def begin(self) -> None:
        self._inflight += 1
        self._idle.clear()

    def end(self) -> None:
        self._inflight -= 1
        if self._inflight <= 0:
            self._inflight = 0
            self._idle.set()

    def entry(self, name: str, version: str = "") -> Entry:
        entry = self.entries.get(name)
        if entry is None:
            hint = (
                ("models: " + ", ".join(sorted(self.entries)))
                if self.entries
                else "the server is still loading"
            )
            raise NotFoundError(f"unknown model '{name}'", location="model", hint=hint)
        if version not in ("", entry.model.version):
            raise NotFoundError(
                f"model '{name}' has no version '{version}' (versions: {entry.model.version})",
                location="model_version",
            )
        return entry

    def model_label(self, name: str) -> str:
        """The metrics label of a model name (unknown names share one label)."""
        return name if name in self.entries else "_unknown"

    def check_ready(self) -> None:
        if not self.ready:
            raise ServiceUnavailableError(
                "the server is not ready (loading or shutting down)", location="server"
            )

    async def infer(self, request: InferRequest) -> InferResult:
        self.check_ready()
        entry = self.entry(request.model, request.version)
        work = entry.model.prepare(request)
        return await entry.batcher.submit(work)

    def is_model_ready(self, name: str, version: str = "") -> bool:
        try:
            self.entry(name, version)
        except NotFoundError:
            return False
        return self.ready

    def server_metadata(self) -> dict:
        extensions = list(EXTENSIONS)
        if self.shared_memory.enabled:
            extensions.append("system_shared_memory")
        return {"name": "hps", "version": __version__, "extensions": extensions}

    async def write_shared(self, request: InferRequest, result: InferResult) -> None:
        """Write the outputs the request placed in shared memory into their regions (callers
        skip it for requests that place none: ``protocol.wants_shared_memory``)."""
        targets = [
            (tensor, ref) for tensor, _, ref in select_outputs(result, request) if ref is not None
        ]
        if not targets:
            return

        def write() -> None:
            for tensor, ref in targets:
                self.shared_memory.write(ref, tensor.array, f"outputs[{tensor.name}]")

        await asyncio.get_running_loop().run_in_executor(self.executor, write)

    def model_config(self, entry: Entry) -> dict:
        return entry.model.config(
            max_queue_delay_us=self.options.max_queue_delay_us, instances=entry.batcher.instances
        )

    def statistics(self, name: str = "", version: str = "") -> dict:
        entries = (
            [self.entry(name, version)] if name else [self.entries[n] for n in sorted(self.entries)]
        )
        out = []
        for entry in entries:
            s = entry.batcher.stats

            def duration(count, ns):
                return {"count": count, "ns": ns}

            out.append(
                {
                    "name": entry.model.name,
                    "version": entry.model.version,
                    "last_inference": s.last_inference_ms,
                    "inference_count": s.inferences,
                    "execution_count": s.executions,
                    "inference_stats": {
                        "success": duration(s.success, s.success_ns),
                        "fail": duration(s.fail, s.fail_ns),
                        "queue": duration(s.success + s.fail, s.queue_ns),
                        "compute_input": duration(0, 0),
                        "compute_infer": duration(s.success + s.fail, s.compute_ns),
                        "compute_output": duration(0, 0),
                        "cache_hit": duration(0, 0),
                        "cache_miss": duration(0, 0),
                    },
                    "batch_stats": [],
                }
            )
        return {"model_stats": out}

    # ------------------------------------------------------------------ admin

    def _check_package_name(self, name: str) -> Path:
        if not NAME.match(name):
            raise invalid("a model name is 1 to 120 of [A-Za-z0-9_-]", "model")
        if self.runtime is not None and name in self.runtime.config.model_names:
            raise invalid(
                f"'{name}' is a lookup model of {self.options.config}; lookup models "
                "live as long as the server",
                "model",
            )
        if self.options.model_repository is None:
            raise invalid("the server has no model repository (--model-repository)", "model")
        folder = self.options.model_repository / name
        if not is_model_folder(folder):
            raise NotFoundError(
                f"no package '{name}' (a folder with manifest.json, or a SavedModel) in the "
                f"model repository {self.options.model_repository}",
                location="model",
            )
        return folder

    async def load_model(self, name: str) -> None:
        """(Re)load a package of the repository. A loaded one is unloaded first (its
        in-flight requests finish), so a package with its own RocksDB can reopen it."""
        async with self._admin:
            if not self.ready:
                raise ServiceUnavailableError("the server is not ready", location="server")
            self._check_package_name(name)
            if name in self.entries:
                await self._unload(name)
            loop = asyncio.get_running_loop()
            model, own = await loop.run_in_executor(self.executor, self._build_package, name)
            self._add(model, own)

    async def unload_model(self, name: str) -> None:
        async with self._admin:
            if self.runtime is not None and name in self.runtime.config.model_names:
                raise invalid(
                    f"'{name}' is a lookup model of {self.options.config}; lookup "
                    "models live as long as the server",
                    "model",
                )
            self.entry(name)
            await self._unload(name)

    async def _unload(self, name: str) -> None:
        entry = self.entries.pop(name)
        self.metrics.forget(name)
        await entry.batcher.close()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self.executor, self._close_entry, entry)
        event(log, "model_unloaded", model=name)

    @staticmethod
    def _close_entry(entry: Entry) -> None:
        entry.model.close()
        if entry.own_runtime is not None:
            entry.own_runtime.close()

    def repository_index(self) -> list[dict]:
        names = set(self.entries)
        if self.options.model_repository is not None and self.options.model_repository.is_dir():
            names |= {
                p.name
                for p in self.options.model_repository.iterdir()
                if is_model_folder(p) and NAME.match(p.name)
            }
        return [
            {
                "name": n,
                "version": self.entries[n].model.version if n in self.entries else VERSION,
                "state": "READY" if n in self.entries and self.ready else "UNAVAILABLE",
                "reason": "" if n in self.entries else "unloaded",
            }
            for n in sorted(names)
        ]

    async def update_table(
        self,
        name: str,
        table: str,
        operation: str,
        keys: np.ndarray,
        vectors: np.ndarray | None = None,
    ) -> int:
        """Insert or remove rows of a table of a served model's runtime (every tier and the
        cached copies); returns the number of keys."""
        if not self.ready:
            raise ServiceUnavailableError("the server is not ready", location="server")
        entry = self.entry(name)
        model = entry.model
        if model.runtime is None:
            raise invalid(
                f"model '{name}' is a SavedModel: its tables are part of it (rebuild it with "
                "hps build-graph to change them)",
                "model",
            )
        cfg = model.runtime.config.model(model.hps_model)
        names = list(cfg.embedding_table_names)
        if table in names:
            table_id = names.index(table)
        elif table.isdigit() and int(table) < cfg.num_tables:
            table_id = int(table)
        else:
            raise NotFoundError(
                f"model '{name}' (HPS model '{model.hps_model}') has no table '{table}'",
                location="table",
                hint="tables: " + ", ".join(names),
            )
        if operation == "insert":
            dim = cfg.embedding_vecsize_per_table[table_id]
            if vectors is None or vectors.shape != (keys.size, dim):
                raise invalid(
                    f"VECTORS must have shape [{keys.size}, {dim}] (one row of dim "
                    f"{dim} per key), got "
                    f"{None if vectors is None else list(vectors.shape)}",
                    "VECTORS",
                )
        refuse_unshared_update(model.runtime, model.hps_model, self.options.workers)
        hps = model.runtime.hps
        loop = asyncio.get_running_loop()
        if operation == "insert":
            await loop.run_in_executor(
                self.executor, hps.insert, model.hps_model, table_id, keys, vectors
            )
        else:
            await loop.run_in_executor(self.executor, hps.remove, model.hps_model, table_id, keys)
        event(
            log,
            "table_updated",
            model=name,
            hps_model=model.hps_model,
            table=names[table_id],
            operation=operation,
            keys=int(keys.size),
        )
        return int(keys.size)

    # ------------------------------------------------------------------ shutdown

    async def drain(self, timeout: float) -> bool:
        """Stop being ready and wait for in-flight requests; False on timeout."""
        self.ready = False
        self.draining = True
        self.metrics.ready.set(0)
        if self._idle.is_set():
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def close(self) -> None:
        for name in list(self.entries):
            entry = self.entries.pop(name)
            await entry.batcher.close()
            await asyncio.get_running_loop().run_in_executor(
                self.executor, self._close_entry, entry
            )
        if self.runtime is not None:
            await asyncio.get_running_loop().run_in_executor(self.executor, self.runtime.close)
        self.executor.shutdown(wait=True)
        self._decoder.shutdown(wait=True)
        self.shared_memory.close()


def admin_token_from(path: Path | None) -> str | None:
    """The admin token: the file's content (stripped) or $HPS_ADMIN_TOKEN; None disables."""
    if path is not None:
        try:
            token = Path(path).read_text().strip()
        except OSError as exc:
            raise InvalidInputError(
                f"cannot read the admin token: {exc.strerror}", location=str(path)
            ) from None
        if len(token) < 16:
            raise InvalidInputError(
                "the admin token must be at least 16 characters", location=str(path)
            )
        return token
    token = os.environ.get("HPS_ADMIN_TOKEN", "").strip()
    if token and len(token) < 16:
        raise InvalidInputError(
            "the admin token must be at least 16 characters", location="HPS_ADMIN_TOKEN"
        )
    return token or None
