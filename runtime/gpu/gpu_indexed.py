"""The static and uvm cache types on a GPU: a whole table behind an open-addressing index.

``device_rows`` rows (file order) live in device memory, the rest in pinned host memory that
the kernel reads over PCIe (mapped memory). static: all rows on the device (or all in host
memory with enable_pagelock); uvm: the first gpucacheper of the file on the device.
"""

from __future__ import annotations

import numpy as np

from ..table.fused_reader import FusedTableReader
from ..table.reader import TableReader
from .pending import Launched
from .placement import EMPTY_KEY
from .transfers import HEAD_BYTES, Scratch, free_device_state, start_rows

_BLOCK = 256
# it_query's arguments (see cuda/indexed_table.cu)
INDEXED_QUERY_ARGS = "PqPPQPqPifPPPP"


class GpuIndexedTable:
    """A table's rows behind an open-addressing index on one device; a seams.IndexedBackend."""

    on_gpu = True

    def __init__(
        self,
        device,
        reader: TableReader | FusedTableReader,
        device_rows: int,
        chunk_rows: int = 1 << 20,
    ):
        self.device = device
        self.dim = reader.dim
        self.rows = reader.num_keys
        self.device_rows = int(min(max(device_rows, 0), self.rows))
        self._workspaces: dict[int, Scratch] = {}
        self._closed = False
        self.capacity = 1 << max(4, (2 * max(self.rows, 1) - 1).bit_length())
        drv = device.drv
        host_rows = self.rows - self.device_rows
        with device.scope():
            self.stream = drv.Stream()
            self.d_index_keys = device.alloc(self.capacity * 8)
            self.d_index_rows = device.alloc(self.capacity * 8)
            self.d_values = device.alloc(self.device_rows * self.dim * 4)
            # Mapped pinned memory: the kernel reads these rows over PCIe.
            self.h_values = drv.pagelocked_empty(
                (max(host_rows, 1), self.dim), np.float32, mem_flags=drv.host_alloc_flags.DEVICEMAP
            )
            self.h_values_device_ptr = self.h_values.base.get_device_pointer()
            # it_query's hit counter and arrival ticket (published and reset by each launch).
            self.d_query_counter = device.alloc(HEAD_BYTES)
            drv.memset_d32_async(self.d_query_counter, 0, HEAD_BYTES // 4, self.stream)
            grid = (device.launch_grid(self.capacity, 1, _BLOCK), 1)
            device.launch(
                "fill_i64",
                "Pqq",
                grid,
                (_BLOCK, 1, 1),
                self.stream,
                self.d_index_keys,
                self.capacity,
                EMPTY_KEY,
            )
            staging = Scratch(device)
            for chunk in reader.chunks(chunk_rows):
                n = chunk.keys.size
                d_keys = staging.upload("keys", chunk.keys, self.stream)
                grid = (device.launch_grid(n, 1, _BLOCK), 1)
                device.launch(
                    "it_build",
                    "PqqPPQ",
                    grid,
                    (_BLOCK, 1, 1),
                    self.stream,
                    d_keys,
                    n,
                    chunk.start,
                    self.d_index_keys,
                    self.d_index_rows,
                    self.capacity - 1,
                )
                self._place_rows(chunk.start, chunk.vectors, staging)
                self.stream.synchronize()  # staging is reused by the next chunk
            staging.free()  # now, while the context is current (see close)
        self._query_kernel = device.launcher("it_query", INDEXED_QUERY_ARGS)
        self._index_args = (
            int(self.d_index_keys),
            int(self.d_index_rows),
            self.capacity - 1,
            int(self.d_values),
            self.device_rows,
            int(self.h_values_device_ptr),
            self.dim,
        )
        counter = int(self.d_query_counter)
        self._counter_args = (counter, counter + 4)  # (hit count, ticket)

    def close(self) -> None:
        """Free the device and pinned memory now (idempotent; a later query raises; see
        transfers.free_device_state)."""
        with self.device.scope():
            if self._closed:
                return
            self._closed = True
            free_device_state(
                self.stream,
                (
                    self.d_index_keys,
                    self.d_index_rows,
                    self.d_values,
                    self.d_query_counter,
                    self.h_values.base,
                ),
                self._workspaces.values(),
            )
            self._workspaces.clear()
            self.stream = None

    def _place_rows(self, start: int, vectors: np.ndarray, staging: Scratch) -> None:
        drv = self.device.drv
        n = vectors.shape[0]
        on_device = max(0, min(n, self.device_rows - start))
        if on_device:
            part = np.ascontiguousarray(vectors[:on_device])
            pinned = staging.host("rows", part.size, np.float32)
            np.copyto(pinned, part.reshape(-1))
            drv.memcpy_htod_async(int(self.d_values) + start * self.dim * 4, pinned, self.stream)
        if on_device < n:
            first_host = start + on_device - self.device_rows
            self.h_values[first_host : first_host + n - on_device] = vectors[on_device:]

    def query(
        self, keys: np.ndarray, default_value: float = 0.0, slot: int = 0
    ) -> tuple[np.ndarray, int]:
        """(rows, hits) for host keys; absent keys get ``default_value``."""
        return self.launch_query(keys, default_value, slot).wait()

    def launch_query(self, keys: np.ndarray, default_value: float = 0.0, slot: int = 0) -> Launched:
        """Queue ``query`` and return at once; ``wait()`` gives (rows, hits)."""
        if self._closed:
            raise RuntimeError(f"this GPU table ({self.rows} rows of dim {self.dim}) was closed")
        keys = np.ascontiguousarray(keys, dtype=np.int64)
        n = keys.size
        grid = (self.device.launch_grid(n, 1, _BLOCK), 1)
        counter, ticket = self._counter_args

        def launch(d_keys: int, d_block: int, publish: bool) -> None:
            count = (counter, ticket, d_block) if publish else (d_block, 0, 0)
            self._query_kernel(
                grid,
                (_BLOCK, 1, 1),
                self.stream,
                d_keys,
                n,
                *self._index_args,
                float(default_value),
                d_block + HEAD_BYTES,
                *count,
            )

        with self.device.scope():
            out, rows_done = start_rows(
                self.device, self.stream, self._workspace(slot), keys, self.dim, launch
            )

        def wait() -> tuple[np.ndarray, int]:
            with self.device.scope():
                return out, rows_done()

        return Launched(wait)

    def _workspace(self, slot: int) -> Scratch:
        ws = self._workspaces.get(slot)
        if ws is None:
            ws = self._workspaces[slot] = Scratch(self.device)
        return ws
