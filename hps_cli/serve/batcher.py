"""Dynamic batching: concurrent requests for a model become one execution.

Each model has a queue and runs at most ``instances`` executions at once (Triton's instance
count). Without a queue delay, a request that nothing else will join (no other request queued
or on its way, see arrivals.py) and that may run inline (below) runs at once, without a queue or
a loop turn. Any other request is queued and a flush is scheduled for the next turn of the event
loop, so every request that arrived in the same turn joins it; while gRPC calls are expected
soon (arrivals.py: grpc.aio hands over calls one per turn), the flush waits for them, at most
``arrivals.HOLD_S``. The flush takes the oldest request, then adds queued requests while their
samples fit in ``max_batch_size``; with ``max_queue_delay`` > 0 an incomplete batch waits until
its oldest request has waited that long (0: take only what is queued, Triton's default). A
request is never split and a batch never exceeds ``max_batch_size`` samples (bigger requests
were refused by the model's ``prepare``).

Small batches of models that allow it (``ServedModel.inline_cost``: in-process lookups of a few
thousand keys, tens to hundreds of µs) run right on the event loop: no thread hop, no GIL
hand-over. Bigger batches, and models that wait on I/O (Redis, TensorFlow), run in a worker
thread (``model.execute``), so the loop keeps serving; so does every batch while worker threads
work on the model's tables (``ServedRuntime.threads_busy``: an admin update holds their write
lock, a batch's write-back the volatile tier's; a lookup must not wait for those on the event
loop). An inline batch that turns out slow (above ``INLINE_MAX_S``) because it waited (keys
read from RocksDB on a cold disk, say: the thread blocked, or spent that long on the CPU) sends
the model's batches to the worker thread for ``INLINE_BACKOFF_S``, after which inline execution
is tried again; a batch that was only slow because other processes had the CPU (a busy
machine) does not. The queue is bounded: when ``max_queue_size`` requests wait, new ones are
refused with UNAVAILABLE (503) at once.

Devices: a model over HPS tables runs on every device of its ``deployed_device_list``
(``model.devices``). Each device is an execution lane with ``instances`` executions of its own
(Triton's instance group: ``count`` per GPU); a batch, inline or not, goes to the device with
the fewest executions running, ties taken in turn. A device
has its own embedding caches and worker buffers (``num_of_worker_buffer_in_pool`` per model
and device), so lanes never wait on each other.

``close`` refuses new requests, runs every queued one, and waits for running executions.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from concurrent.futures import Executor
from dataclasses import dataclass

from ..runtime.errors import ServiceUnavailableError
from .arrivals import Arrivals
from .models import ServedModel, Work
from .protocol import InferResult

try:
    from resource import RUSAGE_THREAD, getrusage
except ImportError:  # not Linux: every slow inline batch counts as one that waited
    RUSAGE_THREAD = getrusage = None

log = logging.getLogger("hps_cli.serve")

INLINE_MAX_S = 0.010  # an inline batch slower than this ...
INLINE_BACKOFF_S = 1.0  # ... sends the model's batches to the worker thread for this long


@dataclass
class BatchStats:
    """Cumulative counters for the statistics extension (nanoseconds)."""

    success: int = 0
    fail: int = 0
    inferences: int = 0  # samples
    executions: int = 0  # batches run
    queue_ns: int = 0
    compute_ns: int = 0  # per request: the execution time of its batch
    success_ns: int = 0
    fail_ns: int = 0
    last_inference_ms: int = 0


class _Item:
    __slots__ = ("work", "future", "arrival")

    def __init__(self, work: Work, future: asyncio.Future, arrival: float):
        self.work = work
        self.future = future
        self.arrival = arrival


class Batcher:
    """The queue and executions of one model.

    Args:
        model: the served model.
        executor: worker threads for ``model.execute``.
        max_queue_delay_s: how long the oldest request may wait for others (0: no wait).
        instances: concurrent executions of this model on each of its devices.
        max_queue_size: requests allowed to wait.
        on_batch: called with (model name, requests, samples, device) after each execution
            (metrics; device None for a model without devices).
        arrivals: the server's view of requests on their way (None: every request is queued
            and flushed in the next turn).
    """

    def __init__(
        self,
        model: ServedModel,
        executor: Executor,
        *,
        max_queue_delay_s: float = 0.0,
        instances: int = 1,
        max_queue_size: int = 1024,
        on_batch=None,
        arrivals: Arrivals | None = None,
    ):
        self.model = model
        self.executor = executor
        self.delay = max(0.0, float(max_queue_delay_s))
        self.max_queue_size = max(1, int(max_queue_size))
        self.on_batch = on_batch
        self.arrivals = arrivals
        self.stats = BatchStats()
        self._instances = max(1, int(instances))
        self._devices = tuple(getattr(model, "devices", (None,))) or (None,)
        self._busy = dict.fromkeys(self._devices, 0)  # executions running per device
        self._turn = 0  # the device a tie (and the next inline batch) goes to
        self._loop = asyncio.get_running_loop()
        self._queue: collections.deque[_Item] = collections.deque()
        self._flush_at: asyncio.Handle | None = None
        self._flush_when = 0.0  # perf_counter time of the scheduled flush (0: next turn)
        self._running: set[asyncio.Task] = set()
        self._closing = False
        self._inline_from = 0.0  # perf_counter time from which batches may run inline again

    @property
    def instances(self) -> int:
        """Concurrent executions per device."""
        return self._instances

    def _pick_device(self):
        """The device of the next batch: the one with the fewest executions running (``_flush``
        starts a batch only while one runs fewer than ``instances``, so it has a worker buffer
        free), ties in turn."""
        n = len(self._devices)
        if n == 1:  # most models: nothing to choose
            return self._devices[0]
        order = [self._devices[(self._turn + i) % n] for i in range(n)]
        order.sort(key=self._busy.__getitem__)  # stable: ties keep their turn
        device = order[0]
        self._turn = (self._devices.index(device) + 1) % n
        return device

    def _execute(self, works: list[Work], device) -> list[InferResult]:
        if device is None:
            return self.model.execute(works)
        return self.model.execute(works, device=device)

    @property
    def depth(self) -> int:
        return len(self._queue)

    async def submit(self, work: Work) -> InferResult:
        if self._closing:
            raise ServiceUnavailableError(
                f"model '{self.model.name}' is being unloaded or the server is shutting down",
                location="model",
            )
        queue = self._queue
        now = time.perf_counter()
        if (
            not queue
            and not self._running
            and not self.delay  # a queue delay asks every request to wait for company
            and self._inline(work.cost, now)
            and (self.arrivals is None or not self.arrivals.coming(now))
        ):
            return self._run_alone(work, now)
        if len(queue) >= self.max_queue_size:
            raise ServiceUnavailableError(
                f"model '{self.model.name}' has {len(queue)} requests queued (the limit); "
                "retry later",
                location="model",
                hint="raise --max-queue-size or add capacity",
            )
        item = _Item(work, self._loop.create_future(), now)
        queue.append(item)
        self._schedule(now)
        return await item.future

    def _inline(self, cost: int, now: float) -> bool:
        """Whether a batch of this cost runs on the event loop (models with an inline_cost
        only, not while backing off, and not while worker threads work on the model's tables:
        served_runtime.py)."""
        limit = self.model.inline_cost
        if limit <= 0 or cost > limit or now < self._inline_from:
            return False
        runtime = self.model.runtime
        return runtime is None or not runtime.threads_busy

    def _schedule(self, now: float) -> None:
        """(Re)schedule the flush: the next turn, or when the clients expected back are due."""
        hold = 0.0
        if self.arrivals is not None and self._queue:
            hold = self.arrivals.hold_until(now, self._queue[0].arrival)
        current = self._flush_at
        if current is not None:
            if hold >= self._flush_when:
                return  # what is scheduled comes no later
            current.cancel()
        self._flush_when = hold
        if hold > now:
            self._flush_at = self._loop.call_later(hold - now, self._flush)
        else:
            self._flush_when = 0.0
            self._flush_at = self._loop.call_soon(self._flush)

    def _run_alone(self, work: Work, now: float) -> InferResult:
        """Execute one request on the event loop right away (see the module doc), on the
        device a batch would go to. What ``_run_inline`` and ``_account`` do for a batch, for
        one request in one frame: at concurrency 1 every request comes this way, and each
        call and temporary object it saves is a few µs of the request's time (docs/benchmarks.md,
        "Serving")."""
        device = self._pick_device()
        usage = getrusage(RUSAGE_THREAD) if getrusage is not None else None
        started = time.perf_counter()
        try:
            results = self._execute([work], device)
            error = _check_count(results, (work,)) if results is None or len(results) != 1 else None
        except Exception as exc:
            results, error = None, exc
        done = time.perf_counter()
        if done - started > INLINE_MAX_S and _waited(usage, done - started):
            self._inline_from = done + INLINE_BACKOFF_S
        if error is not None:
            if not isinstance(error, ServiceUnavailableError):
                self._log_failure(1, error)
            self._account_safely([_Item(work, None, now)], started, False, device)
            raise error
        try:  # _account of one successful request
            stats = self.stats
            stats.executions += 1
            stats.last_inference_ms = int(time.time() * 1000)
            stats.queue_ns += int((started - now) * 1e9)
            stats.compute_ns += int((done - started) * 1e9)
            stats.success += 1
            stats.success_ns += int((done - now) * 1e9)
            stats.inferences += work.size
            if self.on_batch is not None:
                self.on_batch(self.model.name, 1, work.size, device)
        except Exception:  # statistics must never stop the batcher
            log.exception("model %s: accounting failed", self.model.name)
        return results[0]

    def _flush(self) -> None:
        """Start batches while an instance is free and requests are queued."""
        self._flush_at = None
        self._flush_when = 0.0
        limit = self.model.max_batch_size
        while self._queue and len(self._running) < self._instances * len(self._devices):
            first = self._queue[0]
            if first.future.done():  # cancelled by its client
                self._queue.popleft()
                continue
            samples, count = 0, 0
            for item in self._queue:
                if samples + item.work.size > limit:
                    break
                samples += item.work.size
                count += 1
            full = count < len(self._queue) or samples >= limit
            if not full and not self._closing:
                now = time.perf_counter()
                wait = max(
                    first.arrival + self.delay if self.delay else 0.0,
                    self.arrivals.hold_until(now, first.arrival) if self.arrivals else 0.0,
                )
                if wait > now:
                    self._flush_when = wait
                    self._flush_at = self._loop.call_later(wait - now, self._flush)
                    return
            batch = [self._queue.popleft() for _ in range(count)]
            live = [item for item in batch if not item.future.done()]
            if not live:
                continue
            if self._inline(sum(item.work.cost for item in live), time.perf_counter()):
                self._execute_inline(live, self._pick_device())
            else:
                device = self._pick_device()
                self._busy[device] += 1
                task = self._loop.create_task(self._execute_in_thread(live, device))
                self._running.add(task)
                task.add_done_callback(lambda t, d=device: self._finished(t, d))

    def _finished(self, task: asyncio.Task, device) -> None:
        self._running.discard(task)
        self._busy[device] -= 1
        if self._queue and self._flush_at is None:
            self._flush_at = self._loop.call_soon(self._flush)

    def _run_inline(self, works: list[Work], device) -> tuple[list | None, Exception | None, float]:
        """The batch executed on ``device`` on the event loop: (results, error, start time). A
        run slower than INLINE_MAX_S that waited (see the module doc) starts the back-off."""
        usage = getrusage(RUSAGE_THREAD) if getrusage is not None else None
        started = time.perf_counter()
        try:
            results, error = self._execute(works, device), None
        except Exception as exc:  # every request of the batch gets the error
            results, error = None, exc
        took = time.perf_counter() - started
        if took > INLINE_MAX_S and _waited(usage, took):
            self._inline_from = started + took + INLINE_BACKOFF_S
        return results, error, started

    def _execute_inline(self, live: list[_Item], device) -> None:
        results, error, started = self._run_inline([item.work for item in live], device)
        if error is None:
            error = _check_count(results, live)
        self._deliver(live, results, error, started, device)

    async def _execute_in_thread(self, live: list[_Item], device) -> None:
        started = time.perf_counter()
        results, error = None, None
        works = [item.work for item in live]
        runtime = self.model.runtime
        try:
            if runtime is None:
                results = await self._loop.run_in_executor(
                    self.executor, self._execute, works, device
                )
            else:  # counted: no lookup of these tables runs inline meanwhile
                results = await runtime.run_in_thread(self.executor, self._execute, works, device)
            error = _check_count(results, live)
        except BaseException as exc:  # every request of the batch gets the error
            error = exc
            if not isinstance(exc, Exception):
                self._deliver(live, None, error, started, device)
                raise
        self._deliver(live, results, error, started, device)

    def _log_failure(self, requests: int, error: BaseException) -> None:
        log.warning(
            "model %s: a batch of %d request(s) failed: %s: %s",
            self.model.name,
            requests,
            type(error).__name__,
            error,
        )

    def _deliver(self, live: list[_Item], results, error, started: float, device=None) -> None:
        if error is not None and not isinstance(error, ServiceUnavailableError):
            self._log_failure(len(live), error)
        for i, item in enumerate(live):
            if item.future.done():
                continue
            if error is None:
                item.future.set_result(results[i])
            elif isinstance(error, Exception):
                item.future.set_exception(error)
            else:
                item.future.set_exception(
                    ServiceUnavailableError("the batch was interrupted", location="model")
                )
        self._account_safely(live, started, error is None, device)

    def _account_safely(self, live: list[_Item], started: float, ok: bool, device=None) -> None:
        try:
            self._account(live, started, ok, device)
        except Exception:  # statistics must never stop the batcher
            log.exception("model %s: accounting failed", self.model.name)

    def _account(self, live: list[_Item], started: float, ok: bool, device=None) -> None:
        done = time.perf_counter()
        stats = self.stats
        samples = sum(item.work.size for item in live)
        stats.executions += 1
        stats.last_inference_ms = int(time.time() * 1000)
        for item in live:
            stats.queue_ns += int((started - item.arrival) * 1e9)
            stats.compute_ns += int((done - started) * 1e9)
            if ok:
                stats.success += 1
                stats.success_ns += int((done - item.arrival) * 1e9)
            else:
                stats.fail += 1
                stats.fail_ns += int((done - item.arrival) * 1e9)
        if ok:
            stats.inferences += samples
        if self.on_batch is not None:
            self.on_batch(self.model.name, len(live), samples, device)

    async def close(self) -> None:
        """Refuse new requests, run the queued ones, wait for the running executions."""
        self._closing = True
        if self._flush_at is not None:
            self._flush_at.cancel()
            self._flush_at = None
        while self._queue or self._running:
            self._flush()
            if self._running:
                await asyncio.wait(set(self._running))


def _waited(usage, took: float) -> bool:
    """Whether an inline run of ``took`` seconds waited (blocked, or ran that long on the CPU)
    rather than lost the CPU to other processes; ``usage``: the thread's rusage before it."""
    if usage is None:
        return True
    after = getrusage(RUSAGE_THREAD)
    blocked = after.ru_nvcsw > usage.ru_nvcsw or after.ru_majflt > usage.ru_majflt
    cpu = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
    return blocked or cpu > INLINE_MAX_S / 2


def _check_count(results: list, live: list) -> Exception | None:
    if results is None or len(results) != len(live):
        return RuntimeError(f"{0 if results is None else len(results)} results for {len(live)}")
    return None
