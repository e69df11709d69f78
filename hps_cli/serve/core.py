"""The server's state, shared by the HTTP and gRPC front ends: options, runtimes, models and
their batchers, readiness, in-flight requests, statistics, and the admin operations.

Models:

- one lookup model per model of the ps.json given with ``--config`` (models.py), each served
  by a runtime of its own (lookup_configs.py: its config, the server's top-level blocks and
  its model block), so that it can be loaded, reloaded and unloaded alone;
- one inference model per package folder of ``--model-repository`` (a folder holding
  ``manifest.json``; served under the folder's name, see inference.py), and one per folder
  holding a TensorFlow SavedModel in Triton's or TF Serving's layout (saved_model.py: what
  ``hps build-graph`` writes to ``triton/``). A folder name must be a valid HPS name
  (``[A-Za-z0-9_-]{1,120}``) and must not be the name of a lookup model.

Readiness: the server is ready once every table is loaded, the embedding caches are prefilled
and every model answered one warm-up request; it stops being ready when it starts draining.

Repository operations (admin): ``load_model`` builds the new model (a lookup model from its
source, a package from its folder) beside the one it replaces, warms it up, then swaps it in on
the event loop: a request is queued in the old model's batcher or in the new one's, never in
both, so every answer comes from one version. The old batcher then runs what it holds and the
old model and runtime are closed (``unload_model`` does the same without a successor). Admin
operations, table updates included, run one at a time.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import __version__
from ..runtime.cpu_affinity import free_this_thread
from ..runtime.errors import (
    ConfigError,
    InvalidInputError,
    NotFoundError,
    ServiceUnavailableError,
    Terminated,
)
from . import lookup_configs
from .arrivals import Arrivals
from .batcher import Batcher
from .host_memory import release_free_memory, rss_bytes
from .limits import INLINE_BYTES, Limits
from .logs import event
from .lookup_configs import LookupSource, ServerConfig
from .metrics import Metrics
from .models import VERSION, LookupModel, ServedModel
from .protocol import InferRequest, InferResult, invalid, select_outputs
from .saved_model import find_saved_model
from .served_runtime import ServedRuntime
from .shared_memory import SharedMemoryRegions
from .worker_sharing import refuse_repository_change, refuse_unshared_update

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
    custom_objects: tuple[str, ...] = ()  # MODULE[:ATTR] specs imported before packages load
    allow_non_finite: bool = False  # tables and admin inserts may hold NaN/Inf
    checked: object | None = None  # the config's runtime.preflight.Preflight, set by serve()
    reuse_port: bool = False  # HTTP and gRPC bind with SO_REUSEPORT (worker processes)
    workers: int = 1  # server processes on these ports (worker_sharing.py: what N > 1 means)
    persistent_read_only: bool = False  # open the config's RocksDB read-only (workers)
    pin_event_loop: bool = True  # the event loop and gRPC's poller on one CPU (event_loop.py)
    loop_cpu_slot: int | None = None  # which allowed CPU (worker i: i); None: where it runs


@dataclass
class Entry:
    model: ServedModel
    batcher: Batcher
    own_runtime: ServedRuntime | None = None  # closed with the model
    source: LookupSource | None = None  # a lookup model's config source (reloads)


@dataclass
class Built:
    """A model built in a worker thread, not yet served."""

    model: ServedModel
    own_runtime: ServedRuntime | None = None
    source: LookupSource | None = None

    def close(self) -> None:
        self.model.close()
        if self.own_runtime is not None:
            self.own_runtime.close()


class ServerCore:
    """Models, batchers and readiness; every method is called on the event loop."""

    def __init__(self, options: ServeOptions):
        self.options = options
        self.server = ServerConfig()  # the --config ps.json as it was at start-up
        self.entries: dict[str, Entry] = {}
        self.ready = False
        self.draining = False
        self.metrics = Metrics(self.runtimes)
        self.shared_memory = SharedMemoryRegions(options.allow_shared_memory)
        # Room for the executions of a model on two devices (--instances each) beside the
        # encoding of big answers and admin builds.
        threads = options.worker_threads or max(8, 4 * options.instances)
        self.executor = ThreadPoolExecutor(
            threads, thread_name_prefix="hps-serve", initializer=free_this_thread
        )
        self._inflight = 0
        self.metrics.inflight.set_function(lambda: self._inflight)
        self.arrivals = Arrivals()  # requests on their way, for the batchers
        self._idle = asyncio.Event()
        self._idle.set()
        self._admin = asyncio.Lock()
        self._cancel_load = threading.Event()
        self.limits = Limits(
            max_request_bytes=options.max_request_bytes,
            max_elements=options.max_elements,
            header_timeout_s=options.header_timeout_s,
            body_timeout_s=options.body_timeout_s,
        )
        # Decoding big bodies: off the event loop, a bounded number at a time.
        self._decoder = ThreadPoolExecutor(
            self.limits.decoders, thread_name_prefix="hps-decode", initializer=free_this_thread
        )
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
        for entry in list(self.entries.values()):
            handle = entry.model.runtime
            if isinstance(handle, ServedRuntime) and id(handle) not in seen:
                seen.add(id(handle))
                out.append(handle)
        return out

    def cancel_loading(self) -> None:
        """Make a start-up load that is still running stop at its next chunk (SIGTERM while
        loading): it removes what it was building and the server exits."""
        self._cancel_load.set()

    def _load_progress(self, _bytes: int) -> None:
        if self._cancel_load.is_set():
            raise Terminated()

    async def load(self) -> None:
        """Load every model (lookup models first), warm them up, then become ready."""
        loop = asyncio.get_running_loop()
        for built in await loop.run_in_executor(self.executor, self._load_all):
            self._serve(built)
        self.ready = True
        self.metrics.ready.set(1)

    def _load_all(self) -> list[Built]:
        options = self.options
        event(log, "loading", config=str(options.config) if options.config else None)
        built: list[Built] = []
        try:
            if options.config is not None:
                self.server, models = lookup_configs.server_models(
                    options.config, options.checked, allow_non_finite=options.allow_non_finite
                )
                row_cache = None
                if self.server.config.persistent_db.enabled:  # one row cache for all of them
                    from ..runtime.persistent.rocksdb_tier import auto_row_cache_bytes

                    row_cache = auto_row_cache_bytes(lookup_configs.table_bytes(self.server.config))
                for source, checked in models:
                    built.append(self._build_lookup(source, checked, row_cache))
            lookups = {b.model.name: b.own_runtime for b in built}
            for name in self._package_names():
                if name in lookups:
                    raise ConfigError(
                        f"'{name}' is both a lookup model of {options.config} and a package "
                        f"folder of the model repository",
                        location=str(options.model_repository / name),
                        hint="rename the package folder (it is the inference model's name)",
                    )
                built.append(self._build_package(name, lookups))
        except BaseException:
            for done in reversed(built):
                done.close()
            raise
        return built

    def _build_lookup(self, source: LookupSource, checked, row_cache: int | None = None) -> Built:
        """A lookup model in a runtime of its own (``checked``: the ``Preflight`` of its
        one-model config), warmed up. Runs in a worker thread."""
        runtime = ServedRuntime(
            checked,
            path=source.label,
            redis_options=self.options.redis_options,
            rocksdb_row_cache_bytes=row_cache,
            allow_non_finite=self.options.allow_non_finite,
            progress=self._load_progress,
        )
        try:
            model = LookupModel(source.name, runtime)
            model.warm_up()
        except BaseException:
            runtime.close()
            raise
        event(
            log,
            "model_loaded",
            model=source.name,
            kind="lookup",
            config=source.label,
            devices=list(model.devices),
        )
        return Built(model, runtime, source)

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

    def _build_package(self, name: str, lookups: dict[str, ServedRuntime]) -> Built:
        """An InferenceModel or SavedModelModel, warmed up; ``lookups``: the lookup models'
        runtimes by name (a package over the same tables uses its model's). Runs in a worker
        thread."""
        from .inference import InferenceModel, read_manifest

        folder = self.options.model_repository / name
        if not (folder / "manifest.json").is_file():
            return Built(self._build_saved_model(name, folder))
        manifest = read_manifest(folder)
        _import_recorded_code(folder, manifest)
        own = None
        runtime = self._shared_runtime(folder, manifest, lookups)
        if runtime is None:
            own = ServedRuntime(
                folder / manifest["ps_config"],
                redis_options=self.options.redis_options,
                allow_non_finite=self.options.allow_non_finite,
                progress=self._load_progress,
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
        return Built(model, own)

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

    @staticmethod
    def _shared_runtime(
        folder: Path, manifest: dict, lookups: dict[str, ServedRuntime]
    ) -> ServedRuntime | None:
        """The runtime of the lookup model that serves exactly the package's model: same model
        name, and the same table folders (names, dims, files) in the same order. The package
        then uses it (one copy of the tables; admin updates reach both); otherwise it gets a
        runtime of its own from its ps.json."""
        from ..runtime.config.validate import load_config

        name = manifest["model_name"]
        runtime = lookups.get(name)
        if runtime is None:
            return None
        ours = runtime.config.model(name)
        theirs = load_config(folder / manifest["ps_config"], check_files=False).model(name)
        same = ours.num_tables == theirs.num_tables and all(
            ours.table_name(t) == theirs.table_name(t)
            and ours.embedding_vecsize_per_table[t] == theirs.embedding_vecsize_per_table[t]
            and ours.table_path(t).resolve() == theirs.table_path(t).resolve()
            for t in range(ours.num_tables)
        )
        return runtime if same else None

    def _serve(self, built: Built) -> Entry | None:
        """Serve a built model under its name; returns the entry it replaces (still to be
        drained and closed), if any. Called on the event loop: the swap is atomic for the
        requests."""
        model = built.model
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
        old = self.entries.get(model.name)
        self.entries[model.name] = Entry(model, batcher, built.own_runtime, built.source)
        self.metrics.track_queue(model.name, lambda b=batcher: b.depth)
        return old

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
        if self.options.model_repository is None:
            raise NotFoundError(
                f"no model '{name}': it is no lookup model of the server's ps.json and the "
                "server has no model repository (--model-repository)",
                location="model",
                hint="load a lookup model with parameters.config (a model block or a ps.json)",
            )
        folder = self.options.model_repository / name
        if not is_model_folder(folder):
            raise NotFoundError(
                f"no package '{name}' (a folder with manifest.json, or a SavedModel) in the "
                f"model repository {self.options.model_repository}, and no lookup model "
                "of that name in the server's ps.json",
                location="model",
            )
        return folder

    def _lookup_source(self, name: str, parameters: dict) -> LookupSource | None:
        """Where lookup model ``name`` is (re)loaded from; None: it is a package. Reads files:
        runs in a worker thread."""
        source = lookup_configs.source_of_parameters(name, parameters, self.server)
        if source is not None:
            return source
        entry = self.entries.get(name)
        if entry is not None and entry.source is not None:
            return lookup_configs.refreshed(entry.source)
        repo = self.options.model_repository
        if entry is None and repo is not None and is_model_folder(repo / name):
            return None
        if entry is None and self.server.path is not None:
            return lookup_configs.source_of_file(name, self.server.path)
        return None

    def _lookup_runtimes(self) -> dict[str, ServedRuntime]:
        return {
            name: entry.own_runtime
            for name, entry in self.entries.items()
            if entry.model.kind == "lookup" and entry.own_runtime is not None
        }

    def _check_unshared(self, name: str, entry: Entry) -> None:
        """Refuse to replace or remove a lookup model whose runtime packages use."""
        if entry.own_runtime is None:
            return
        users = sorted(
            n
            for n, e in self.entries.items()
            if e is not entry and e.model.runtime is entry.own_runtime
        )
        if users:
            raise invalid(
                f"inference model(s) {', '.join(users)} use the tables of '{name}'; unload "
                "them first (a package loaded afterwards uses the new tables)",
                "model",
            )

    def _build_checked_lookup(self, source: LookupSource) -> Built:
        checked = lookup_configs.checked(
            source, self.server, allow_non_finite=self.options.allow_non_finite
        )
        return self._build_lookup(source, checked)

    async def load_model(self, name: str, parameters: dict | None = None) -> None:
        """(Re)load model ``name``: a lookup model from ``parameters`` (lookup_configs.py), from
        the source it was loaded from, or from the server's ps.json; else the package of that
        name in the repository. The new model is built and warmed up beside the one it
        replaces, then swapped in; the old one finishes what it holds and is closed. Refused
        with several worker processes (worker_sharing.py)."""
        refuse_repository_change(name, "load", self.options.workers)
        async with self._admin:
            if not self.ready:
                raise ServiceUnavailableError("the server is not ready", location="server")
            if not NAME.match(name):
                raise invalid("a model name is 1 to 120 of [A-Za-z0-9_-]", "model")
            loop = asyncio.get_running_loop()
            source = await loop.run_in_executor(
                self.executor, self._lookup_source, name, parameters or {}
            )
            current = self.entries.get(name)
            if current is not None:
                if (current.model.kind == "lookup") != (source is not None):
                    raise invalid(
                        f"'{name}' is a loaded {current.model.kind} model; unload it first",
                        "model",
                    )
                self._check_unshared(name, current)
            if source is not None:
                built = await loop.run_in_executor(
                    self.executor, self._build_checked_lookup, source
                )
            else:
                self._check_package_name(name)
                built = await loop.run_in_executor(
                    self.executor, self._build_package, name, self._lookup_runtimes()
                )
            old = self._serve(built)
            if old is not None:
                await self._retire(name, old, "model_replaced")

    async def unload_model(self, name: str) -> None:
        """Stop serving ``name``: new requests get 404, queued and running ones finish, then
        its model and runtime are closed (caches, tiers and device memory freed). Refused
        with several worker processes (worker_sharing.py)."""
        refuse_repository_change(name, "unload", self.options.workers)
        async with self._admin:
            entry = self.entry(name)
            self._check_unshared(name, entry)
            del self.entries[name]
            self.metrics.forget(name)
            await self._retire(name, entry, "model_unloaded")

    async def _retire(self, name: str, entry: Entry, what: str) -> None:
        """Drain a model that no longer takes requests, then close it; the log event says how
        long each took and the resident memory before and after."""
        started = time.perf_counter()
        await entry.batcher.close()
        drained = time.perf_counter()
        rss_before = rss_bytes()
        await asyncio.get_running_loop().run_in_executor(self.executor, self._close_entry, entry)
        event(
            log,
            what,
            model=name,
            drain_ms=round((drained - started) * 1000, 3),
            close_ms=round((time.perf_counter() - drained) * 1000, 3),
            rss_before=rss_before,
            rss_after=rss_bytes(),
        )

    @staticmethod
    def _close_entry(entry: Entry) -> None:
        entry.model.close()
        if entry.own_runtime is not None:
            entry.own_runtime.close()
        gc.collect()
        release_free_memory()

    def repository_index(self) -> list[dict]:
        names = set(self.entries) | lookup_configs.model_names(self.server)
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

    def durable_updates(self, name: str) -> bool:
        """Whether table updates of a served model outlive the server (a writable RocksDB
        tier journals them; docs/serve.md)."""
        return self.entry(name).model.runtime.hps.durable_updates

    async def update_table(
        self,
        name: str,
        table: str,
        operation: str,
        keys: np.ndarray,
        vectors: np.ndarray | None = None,
    ) -> int:
        """Insert or remove rows of a table of a served model's runtime (every tier and the
        cached copies on every device); returns the number of keys. Vectors holding NaN or Inf
        are refused (400) unless the server runs with --allow-non-finite. Runs between loads,
        never during one: an update reaches the version that serves when it starts."""
        async with self._admin:
            return await self._update_table(name, table, operation, keys, vectors)

    async def _update_table(
        self,
        name: str,
        table: str,
        operation: str,
        keys: np.ndarray,
        vectors: np.ndarray | None = None,
    ) -> int:
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
        runtime, hps = model.runtime, model.runtime.hps
        # Counted by the runtime: an update holds its tables' write lock throughout, so their
        # lookups run in worker threads meanwhile, never on the event loop (batcher.py).
        if operation == "insert":
            await runtime.run_in_thread(
                self.executor, hps.insert, model.hps_model, table_id, keys, vectors
            )
        else:
            await runtime.run_in_thread(self.executor, hps.remove, model.hps_model, table_id, keys)
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
        """Run what every batcher holds, then close the models and their runtimes (batchers
        first: a package may use a lookup model's runtime)."""
        entries = list(self.entries.values())
        self.entries.clear()
        for entry in entries:
            await entry.batcher.close()
        for entry in entries:
            await asyncio.get_running_loop().run_in_executor(
                self.executor, self._close_entry, entry
            )
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


def _import_recorded_code(folder: Path, manifest: dict) -> None:
    """Import the user code the package records (``--custom-objects`` of dissect/build-graph,
    e.g. custom TensorFlow ops of its dense part); what cannot be imported here is logged and
    skipped (plain dense parts load without it)."""
    from ..common.custom_objects import resolve_recorded

    specs = manifest.get("custom_objects") or []
    if not isinstance(specs, list) or not specs:
        return
    _, skipped = resolve_recorded([str(s) for s in specs])
    for text in skipped:
        event(log, "custom_objects_skipped", logging.WARNING, package=str(folder), reason=text)
