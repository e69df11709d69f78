"""Kept forms of serialized ModelInfer requests: a client's requests decoded without protobuf.

A client sends one request form over and over (tritonclient: the same model, input names,
datatypes and shapes, raw tensor bytes). Protobuf writes a message's fields in field-number
order, and ``raw_input_contents`` (field 7) is the last field of ``ModelInferRequest``, so the
bytes before the raw contents (the head) are the same in every request of a form. Decoding one
in full builds some 30 Python objects from protobuf fields (12 µs of a 128-key request, back to
back); a request whose bytes are a kept head followed by exactly the raw contents its form
expects, and nothing else, decodes to the same request without reading the head at all.

Why that is exact: a protobuf parse of ``head + tail`` is the parse of the head's fields and
then of the tail's. A form is kept only after a full decode of the common form
(``grpc_server._raw_request``: raw contents only, no parameters, no shared memory) and only when
its head is a run of whole top-level fields holding no raw contents; a request then matches
only if its tail is, for each input in order, field 7's tag, the byte count the input's
datatype and shape take, and those bytes, ending exactly at the end of the message. Its parse
is therefore the kept one with these inputs' bytes. Requests with an ``id`` are not kept (ids
are usually unique per request), nor heads above ``MAX_HEAD_BYTES`` (a client must not make the
server hold big heads); at most ``limit`` forms are kept, all dropped when full.
"""

from __future__ import annotations

import numpy as np

from .grpc_wire import _fields, varint_bytes
from .protocol import InferRequest, Tensor

MAX_HEAD_BYTES = 4096  # a form's head is a few hundred bytes; longer ones are not kept
_RAW_FIELD = 7  # ModelInferRequest.raw_input_contents
_RAW_TAG = bytes([_RAW_FIELD << 3 | 2])  # field 7, length-delimited


class _Form:
    """One kept request form: its head bytes and what its requests hold besides raw bytes."""

    __slots__ = ("head", "model", "version", "inputs", "outputs")

    def __init__(self, head: bytes, request: InferRequest):
        self.head = head
        self.model = request.model
        self.version = request.version
        # (name, datatype, dtype, shape, byte count, the bytes that precede them)
        self.inputs = tuple(
            (
                name,
                tensor.datatype,
                tensor.array.dtype,
                tensor.array.shape,
                tensor.array.nbytes,
                _RAW_TAG + varint_bytes(tensor.array.nbytes),
            )
            for name, tensor in request.inputs.items()
        )
        self.outputs = request.outputs

    def tail_bytes(self) -> int:
        return sum(len(prefix) + nbytes for *_, nbytes, prefix in self.inputs)

    def request(self, data: bytes) -> InferRequest | None:
        """The request of ``data`` (which starts with the head), or None when its tail is not
        exactly this form's raw contents."""
        at = len(self.head)
        tensors: dict[str, Tensor] = {}
        for name, datatype, dtype, shape, nbytes, prefix in self.inputs:
            if not data.startswith(prefix, at):
                return None
            at += len(prefix)
            tensors[name] = Tensor(name, datatype, np.ndarray(shape, dtype, data, at))
            at += nbytes
        if at != len(data):
            return None
        return InferRequest(
            model=self.model, version=self.version, inputs=tensors, outputs=self.outputs
        )


class RequestForms:
    """The kept forms of one server, by message size (a form's requests all have one size)."""

    def __init__(self, limit: int = 256):
        self.limit = limit
        self._by_size: dict[int, list[_Form]] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def decode(self, data: bytes) -> InferRequest | None:
        """The request of ``data`` if it has a kept form, else None (decode it in full)."""
        forms = self._by_size.get(len(data))
        if forms:
            for form in forms:
                if data.startswith(form.head):
                    request = form.request(data)
                    if request is not None:
                        return request
        return None

    def keep(self, data: bytes, request: InferRequest) -> None:
        """Keep the form of ``data``, just decoded in full to ``request`` by the common-form
        decoder, when its head can be told apart from its raw contents (see the module doc)."""
        if request.id or not request.inputs:
            return
        form = _Form(b"", request)
        head_size = len(data) - form.tail_bytes()
        if not 0 < head_size <= MAX_HEAD_BYTES:  # kept forms hold at most limit × this
            return
        head = data[:head_size]
        try:  # whole top-level fields, none of them raw contents
            if any(number == _RAW_FIELD for number, *_ in _fields(memoryview(head), 0, head_size)):
                return
        except Exception:  # noqa: BLE001 - a head that is not whole fields: not kept
            return
        form.head = head
        kept = form.request(data)
        if kept is None or any(
            kept.inputs[name].array.tobytes() != tensor.array.tobytes()
            for name, tensor in request.inputs.items()
        ):
            return
        if self._count >= self.limit:
            self._by_size.clear()
            self._count = 0
        self._by_size.setdefault(len(data), []).append(form)
        self._count += 1
