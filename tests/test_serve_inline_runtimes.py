"""Which worker-thread work keeps a model's lookups off the event loop: work on its own
runtime's tables (served_runtime.py counts it), not work through another runtime, even one
over the same RocksDB database (hps serve gives every lookup model a runtime of its own, and a
reload builds the new one beside the old)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from helpers.runtime_configs import make_tables, ps_config, rocks_db
from hps_cli.runtime.table.synthetic import synthetic_vectors

from hps_cli.serve import batcher as batching
from hps_cli.serve.batcher import Batcher
from hps_cli.serve.models import LookupModel
from hps_cli.serve.protocol import InferRequest, Tensor
from hps_cli.serve.served_runtime import ServedRuntime

DIM = 16


class _Observed(LookupModel):
    """A lookup model that notes whether each batch ran on the event loop's thread."""

    def __init__(self, *args):
        super().__init__(*args)
        self.on_loop: list[bool] = []

    def execute(self, works, device=None):
        self.on_loop.append(threading.current_thread() is threading.main_thread())
        return super().execute(works, device)


def _request(name: str, keys: np.ndarray) -> InferRequest:
    return InferRequest(
        name,
        inputs={
            "KEYS": Tensor("KEYS", "INT64", keys.reshape(1, -1)),
            "NUMKEYS": Tensor("NUMKEYS", "INT32", np.array([[keys.size]], np.int32)),
        },
    )


def test_an_update_through_another_runtime_does_not_keep_lookups_off_the_loop(
    tmp_path, monkeypatch
):
    """Two runtimes of one ps.json share its RocksDB database (and the table's family). While
    the second runs a long insert in a worker thread (holding its tables' write lock), the
    first's small lookups still run on the event loop and are all answered before the insert
    ends; the second's run in a worker thread, waiting for the insert. Once it is done, the
    second's lookups run on the loop again (its count is back at 0)."""
    # A lookup that waits for the GIL behind the insert's thread may take over INLINE_MAX_S and
    # send its model to the worker threads for a while (the back-off, test_serve_hostile.py);
    # here only the count decides.
    monkeypatch.setattr(batching, "INLINE_MAX_S", 60.0)
    tables = make_tables(tmp_path, {"t": (20_000, DIM)})
    path = tmp_path / "ps.json"
    path.write_text(
        json.dumps(
            ps_config(tables, {"t": DIM}, persistent=rocks_db(tmp_path / "db"), max_batch_size=4096)
        )
    )
    rows = 300_000
    new_keys = np.arange(1 << 40, (1 << 40) + rows, dtype=np.int64)
    vectors = np.ones((rows, DIM), np.float32)
    keys = np.arange(0, 6400, 100, dtype=np.int64)
    want = synthetic_vectors(keys, DIM).reshape(1, -1)

    async def run():
        executor = ThreadPoolExecutor(4)
        first, second = ServedRuntime(path), ServedRuntime(path)
        try:
            a, b = _Observed("a", first, "m"), _Observed("b", second, "m")
            on_a, on_b = Batcher(a, executor), Batcher(b, executor)
            started = time.perf_counter()
            update = second.run_in_thread(executor, second.hps.insert, "m", "t", new_keys, vectors)
            assert (first.threads_busy, second.threads_busy) == (0, 1)
            for _ in range(20):
                result = await on_a.submit(a.prepare(_request("a", keys)))
                np.testing.assert_array_equal(result.outputs[0].array, want)
            a_done = time.perf_counter()
            assert not update.done(), "the insert was too short to show a stall"
            result = await on_b.submit(b.prepare(_request("b", keys)))
            np.testing.assert_array_equal(result.outputs[0].array, want)
            await update
            took = time.perf_counter() - started
            await asyncio.sleep(0.05)  # the count drops on the loop, after the thread is done
            assert second.threads_busy == 0
            await on_b.submit(b.prepare(_request("b", keys)))
            await on_a.close()
            await on_b.close()
            return a.on_loop, b.on_loop, a_done - started, took
        finally:
            first.close()
            second.close()
            executor.shutdown()

    a_loop, b_loop, a_took, took = asyncio.run(run())
    print(f"insert {took * 1e3:.0f} ms; 20 lookups of the other runtime {a_took * 1e3:.0f} ms")
    assert a_loop == [True] * 20
    assert b_loop == [False, True]
