"""Dynamic batching: concurrent requests for a model become one execution.

Each model has a queue and ``instances`` schedulers (Triton's instance count). A scheduler takes
the oldest request, then keeps adding queued requests while their samples fit in
``max_batch_size``, waiting at most ``max_queue_delay`` after the oldest request arrived for more
to come (0: take only what is already queued, Triton's default). The batch runs in a worker
thread (``model.execute``), so the event loop never blocks; meanwhile new requests queue up and
form the next batch. A request is never split and a batch never exceeds ``max_batch_size``
samples (bigger requests were refused by the model's ``prepare``). The queue is bounded: when
``max_queue_size`` requests wait, new ones are refused with UNAVAILABLE (503) at once.

``close`` refuses new requests, lets every queued one run, and waits for the schedulers.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from concurrent.futures import Executor
from dataclasses import dataclass

from ..runtime.errors import ServiceUnavailableError
from .models import ServedModel, Work
from .protocol import InferResult

log = logging.getLogger("hps_cli.serve")


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

    def __init__(self, work: Work, future: asyncio.Future):
        self.work = work
        self.future = future
        self.arrival = time.perf_counter()


class Batcher:
    """The queue and schedulers of one model.

    Args:
        model: the served model.
        executor: worker threads for ``model.execute``.
        max_queue_delay_s: how long the oldest request may wait for others (0: no wait).
        instances: concurrent executions of this model.
        max_queue_size: requests allowed to wait.
        on_batch: called with (model name, requests, samples) after each execution (metrics).
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
    ):
        self.model = model
        self.executor = executor
        self.delay = max(0.0, float(max_queue_delay_s))
        self.max_queue_size = max(1, int(max_queue_size))
        self.on_batch = on_batch
        self.stats = BatchStats()
        self._queue: collections.deque[_Item] = collections.deque()
        self._arrived = asyncio.Event()
        self._closing = False
        self._tasks = [
            asyncio.get_running_loop().create_task(
                self._schedule(), name=f"batcher-{model.name}-{i}"
            )
            for i in range(max(1, int(instances)))
        ]

    @property
    def instances(self) -> int:
        return len(self._tasks)

    @property
    def depth(self) -> int:
        return len(self._queue)

    async def submit(self, work: Work) -> InferResult:
        if self._closing:
            raise ServiceUnavailableError(
                f"model '{self.model.name}' is being unloaded or the server is shutting down",
                location="model",
            )
        if len(self._queue) >= self.max_queue_size:
            raise ServiceUnavailableError(
                f"model '{self.model.name}' has {len(self._queue)} requests queued (the limit); "
                "retry later",
                location="model",
                hint="raise --max-queue-size or add capacity",
            )
        item = _Item(work, asyncio.get_running_loop().create_future())
        self._queue.append(item)
        self._arrived.set()
        return await item.future

    async def _next_batch(self) -> list[_Item] | None:
        while not self._queue:
            if self._closing:
                return None
            self._arrived.clear()
            await self._arrived.wait()
        first = self._queue.popleft()
        batch, samples = [first], first.work.size
        deadline = first.arrival + self.delay
        limit = self.model.max_batch_size
        while samples < limit:
            while self._queue and samples + self._queue[0].work.size <= limit:
                item = self._queue.popleft()
                batch.append(item)
                samples += item.work.size
            if samples >= limit or (self._queue and samples + self._queue[0].work.size > limit):
                break
            wait = deadline - time.perf_counter()
            if wait <= 0 or self._closing:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), wait)
            except asyncio.TimeoutError:
                pass
        if self._queue:
            self._arrived.set()  # let another scheduler start on what is left
        return batch

    async def _schedule(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            if batch is None:
                return
            live = [item for item in batch if not item.future.done()]  # cancelled by clients
            if not live:
                continue
            started = time.perf_counter()
            results, error = None, None
            try:
                results = await loop.run_in_executor(
                    self.executor, self.model.execute, [item.work for item in live]
                )
                if len(results) != len(live):
                    raise RuntimeError(f"{len(results)} results for {len(live)} requests")
            except Exception as exc:  # every request of the batch gets the error
                error = exc
                if not isinstance(exc, ServiceUnavailableError):
                    log.warning(
                        "model %s: a batch of %d request(s) failed: %s: %s",
                        self.model.name,
                        len(live),
                        type(exc).__name__,
                        exc,
                    )
            finally:
                for i, item in enumerate(live):
                    if item.future.done():
                        continue
                    if error is None and results is not None:
                        item.future.set_result(results[i])
                    else:
                        item.future.set_exception(
                            error
                            or ServiceUnavailableError(
                                "the batch was interrupted", location="model"
                            )
                        )
            try:
                self._account(live, started, error is None)
            except Exception:  # statistics must never stop the scheduler
                log.exception("model %s: accounting failed", self.model.name)

    def _account(self, live: list[_Item], started: float, ok: bool) -> None:
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
            self.on_batch(self.model.name, len(live), samples)

    async def close(self) -> None:
        """Refuse new requests, run the queued ones, stop the schedulers."""
        self._closing = True
        self._arrived.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
