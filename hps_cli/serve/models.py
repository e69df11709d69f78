"""Served models behind one interface, and the lookup models (Triton HPS backend contract).

A served model validates a request (``prepare`` -> a ``Work`` with its size in samples, or an
``InvalidInputError`` naming the field), runs a batch of works in one go (``execute``, called in
a worker thread, never on the event loop), and describes itself (``metadata``, ``config``).
A model over HPS tables runs on the devices of its ``deployed_device_list`` (``devices``): the
batcher picks one for each batch and passes it to ``execute(works, device=...)``.

Lookup model (one per model of ps.json), exactly the Triton HPS backend's contract:

- ``KEYS`` INT64 ``[1, total]`` (or ``[total]``): the keys of table 0, then table 1, ...;
- ``NUMKEYS`` INT32 ``[1, n_tables]`` (or ``[n_tables]``): how many keys belong to each table;
- ``OUTPUT0`` FP32 ``[1, sum_t NUMKEYS[t] * dim_t]``: the vectors, table-major, in key order;
  response parameters ``NumSample`` and ``DeviceID`` (the device that served the batch).

A request is ``ceil(total / sum(maxnum_catfeature_query_per_table_per_sample))`` samples (the
backend's NumSample); more than ``max_batch_size`` samples is an error. Concurrent requests are
coalesced (batcher.py) into one ``lookup_tables`` call per batch.
"""

from __future__ import annotations

import itertools
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

from ..runtime.errors import NotFoundError
from ..runtime.key_arrays import is_int64_vector
from .protocol import CONFIG_TYPES, InferRequest, InferResult, Tensor, invalid

VERSION = "1"
UINT32_MAX = 2**32 - 1
INLINE_KEYS = 4096  # lookup batches of up to this many keys run on the event loop


@dataclass(frozen=True)
class TensorSpec:
    """An input or output as metadata shows it; ``shape`` includes the batch dimension (-1)
    when the model batches, ``dims`` (the config's) excludes it."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    batched: bool = True

    @property
    def dims(self) -> list[int]:
        return list(self.shape[1:] if self.batched else self.shape)

    def metadata(self) -> dict:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    def config(self) -> dict:
        return {"name": self.name, "data_type": CONFIG_TYPES[self.datatype], "dims": self.dims}


@dataclass
class Work:
    """A validated request: ``size`` samples (what max_batch_size bounds) and ``cost`` (what
    ``ServedModel.inline_cost`` bounds: keys, for lookup models)."""

    size: int
    request: InferRequest
    data: dict = field(default_factory=dict)
    cost: int = 0


class ServedModel(ABC):
    """Base of the served models.

    Attributes:
        name, kind ("lookup" or "inference"), platform, backend
        max_batch_size: the most samples one execution takes (requests above: 400).
        config_max_batch_size: what the model config reports (0 when the inputs have no
            common batch dimension, as Triton requires).
        runtime: the ``ServedRuntime`` whose tables it reads; hps_model: the ps.json model.
        inline_cost: batches whose works cost at most this run on the event loop (batcher.py);
            0: always in a worker thread.
        devices: where executions run: the model's ``deployed_device_list`` (``execute`` takes
            ``device=``), or ``(None,)`` for a model without devices (``execute(works)``).
    """

    kind = "model"
    platform = ""
    backend = ""
    version = VERSION
    inline_cost = 0
    devices: tuple = (None,)

    def __init__(self, name: str, runtime, hps_model: str, max_batch_size: int):
        self.name = name
        self.runtime = runtime
        self.hps_model = hps_model
        self.max_batch_size = int(max_batch_size)
        self.config_max_batch_size = self.max_batch_size
        self.inputs: list[TensorSpec] = []
        self.outputs: list[TensorSpec] = []

    # -- description

    def metadata(self) -> dict:
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": self.platform,
            "inputs": [t.metadata() for t in self.inputs],
            "outputs": [t.metadata() for t in self.outputs],
        }

    def config(self, *, max_queue_delay_us: int, instances: int) -> dict:
        """The Triton model configuration (config.pbtxt as JSON)."""
        doc = {
            "name": self.name,
            "platform": self.platform,
            "backend": self.backend,
            "max_batch_size": self.config_max_batch_size,
            "input": [t.config() for t in self.inputs],
            "output": [t.config() for t in self.outputs],
            "instance_group": [self._instance_group(instances)],
            "parameters": {k: {"string_value": str(v)} for k, v in self.parameters().items()},
        }
        if self.config_max_batch_size > 0:
            doc["dynamic_batching"] = {"max_queue_delay_microseconds": max_queue_delay_us}
        return doc

    def _instance_group(self, instances: int) -> dict:
        """Triton's instance group: ``count`` executions on each device (``gpus``: the device
        ids, whether their caches are on GPUs or on the NumPy reference)."""
        group = {"name": f"{self.name}_0", "kind": "KIND_CPU", "count": instances}
        if self.devices != (None,):
            group.update(kind="KIND_GPU", gpus=list(self.devices))
        return group

    def parameters(self) -> dict:
        return {"hps_model": self.hps_model, "max_batch_size": self.max_batch_size}

    # -- serving

    def check_request(self, request: InferRequest) -> None:
        """Input names (all present, nothing unknown) and requested output names."""
        expected = {t.name for t in self.inputs}
        for name in request.inputs:
            if name not in expected:
                raise invalid(
                    f"model '{self.name}' has no input '{name}' (inputs: "
                    f"{', '.join(sorted(expected))})",
                    "inputs",
                )
        missing = [t.name for t in self.inputs if t.name not in request.inputs]
        if missing:
            raise invalid(f"missing input(s) {', '.join(missing)} of model '{self.name}'", "inputs")
        if request.outputs is not None:
            names = {t.name for t in self.outputs}
            for out in request.outputs:
                if out.name not in names:
                    raise invalid(
                        f"model '{self.name}' has no output '{out.name}' (outputs: "
                        f"{', '.join(sorted(names))})",
                        "outputs",
                    )

    def check_datatype(self, request: InferRequest, spec: TensorSpec) -> Tensor:
        tensor = request.inputs[spec.name]
        if tensor.datatype != spec.datatype:
            raise invalid(f"expected datatype {spec.datatype}, got {tensor.datatype}", spec.name)
        return tensor

    @abstractmethod
    def prepare(self, request: InferRequest) -> Work: ...

    @abstractmethod
    def execute(self, works: list[Work]) -> list[InferResult]: ...

    def warm_up(self) -> None:  # noqa: B027 - optional hook
        """Run one small request through the whole path before the model is ready."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release what the model holds (not the shared runtime)."""


class LookupModel(ServedModel):
    """One HPS model of ps.json, served with the Triton HPS backend's tensors."""

    kind = "lookup"
    backend = "hps"

    def __init__(self, name: str, runtime, hps_model: str | None = None):
        hps_model = hps_model or name
        try:
            cfg = runtime.config.model(hps_model)
        except KeyError:
            raise NotFoundError(
                f"no model '{hps_model}' in {runtime.path}", location="model"
            ) from None
        super().__init__(name, runtime, hps_model, cfg.max_batch_size)
        self.model_config = cfg
        self.num_tables = cfg.num_tables
        self.dims = list(cfg.embedding_vecsize_per_table)
        self.keys_per_sample = max(1, sum(cfg.maxnum_catfeature_query_per_table_per_sample))
        self.devices = tuple(cfg.deployed_device_list)
        self.uint32_keys = not runtime.config.supportlonglong
        self._numkeys_shapes = f"[1, {self.num_tables}] or [{self.num_tables}]"  # for errors
        self.inputs = [
            TensorSpec("KEYS", "INT64", (-1, -1)),
            TensorSpec("NUMKEYS", "INT32", (-1, -1)),
        ]
        self.outputs = [TensorSpec("OUTPUT0", "FP32", (-1, -1))]
        # In-process tiers answer a few thousand keys in well under a millisecond: cheaper on
        # the event loop than a thread hop. A Redis tier waits on the network: never inline.
        if runtime.config.volatile_db.type != "redis_cluster":
            self.inline_cost = INLINE_KEYS

    def parameters(self) -> dict:
        cfg = self.model_config
        return {
            **super().parameters(),
            "embedding_table_names": ",".join(cfg.embedding_table_names),
            "embedding_vecsize_per_table": ",".join(map(str, self.dims)),
            "maxnum_catfeature_query_per_table_per_sample": ",".join(
                map(str, cfg.maxnum_catfeature_query_per_table_per_sample)
            ),
        }

    def prepare(self, request: InferRequest) -> Work:
        inputs, outputs = request.inputs, request.outputs
        if (
            len(inputs) != 2
            or "KEYS" not in inputs
            or "NUMKEYS" not in inputs
            or (outputs is not None and any(o.name != "OUTPUT0" for o in outputs))
        ):
            self.check_request(request)  # names what is wrong (the common form passes it)
        keys = self.check_datatype(request, self.inputs[0])
        counts = self.check_datatype(request, self.inputs[1])
        batched = _check_row(keys, "KEYS", "[1, total] or [total]")
        _check_row(counts, "NUMKEYS", self._numkeys_shapes)
        num = counts.array.reshape(-1).tolist()  # a few Python ints: cheaper than NumPy calls
        if len(num) != self.num_tables:
            raise invalid(
                f"holds {len(num)} counts but model '{self.name}' has {self.num_tables} table(s)",
                "NUMKEYS",
            )
        if num and min(num) < 0:
            raise invalid(f"counts must be non-negative, got {num}", "NUMKEYS")
        flat = keys.array.reshape(-1)
        if sum(num) != flat.size:
            raise invalid(f"counts sum to {sum(num)} but KEYS holds {flat.size} keys", "NUMKEYS")
        if self.uint32_keys and flat.size and (flat.min() < 0 or flat.max() > UINT32_MAX):
            raise invalid("keys must fit uint32 (supportlonglong is false in the config)", "KEYS")
        samples = math.ceil(flat.size / self.keys_per_sample)
        if samples > self.max_batch_size:
            raise invalid(
                f"{flat.size} keys are {samples} samples (at most {self.keys_per_sample} keys "
                f"per sample: the sum of maxnum_catfeature_query_per_table_per_sample), above "
                f"max_batch_size {self.max_batch_size} of model '{self.name}'",
                "KEYS",
            )
        if not (is_int64_vector(flat) and flat.flags.aligned):
            # contiguous and aligned: binary request data sits wherever the JSON header ends
            flat = np.require(flat, np.int64, ["C", "A"])
        if self.num_tables == 1:
            parts = [flat]
        else:
            bounds = [0, *itertools.accumulate(num)]
            parts = [flat[bounds[t] : bounds[t + 1]] for t in range(self.num_tables)]
        return Work(
            max(1, samples),
            request,
            {"keys": parts, "batched": batched, "samples": samples},
            cost=flat.size,
        )

    def execute(self, works: list[Work], device: int | None = None) -> list[InferResult]:
        """One ``lookup_tables`` for the batch on ``device`` (default: the last deployed one,
        as HPS's)."""
        hps = self.runtime.hps
        if device is None:
            device = self.devices[-1]
        if len(works) == 1:
            per_table = [hps.lookup_tables(works[0].data["keys"], self.hps_model, device)]
        else:
            merged = [
                np.concatenate([w.data["keys"][t] for w in works]) for t in range(self.num_tables)
            ]
            vectors = hps.lookup_tables(merged, self.hps_model, device)
            per_table = [[] for _ in works]
            for t, table in enumerate(vectors):
                at = 0
                for i, work in enumerate(works):
                    n = work.data["keys"][t].size
                    per_table[i].append(table[at : at + n])
                    at += n
        results = []
        for work, parts in zip(works, per_table):
            flat = (
                parts[0].reshape(-1)
                if len(parts) == 1
                else np.concatenate([p.reshape(-1) for p in parts])
            )
            flat = np.ascontiguousarray(flat, dtype=np.float32)
            out = flat.reshape(1, -1) if work.data["batched"] else flat
            results.append(
                InferResult(
                    [Tensor("OUTPUT0", "FP32", out)],
                    {"NumSample": work.data["samples"], "DeviceID": device},
                )
            )
        return results

    def warm_up(self) -> None:
        keys = [np.zeros(1, np.int64) for _ in range(self.num_tables)]
        for device in self.devices:
            self.runtime.hps.lookup_tables(keys, self.hps_model, device)


def _check_row(tensor: Tensor, name: str, expected: str) -> bool:
    """A 1-D tensor, or a 2-D one with a batch dimension of 1; True for the latter."""
    shape = tensor.array.shape
    if len(shape) == 1:
        return False
    if len(shape) == 2 and shape[0] == 1:
        return True
    raise invalid(f"shape must be {expected}, got {list(shape)}", name)
