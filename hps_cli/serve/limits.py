"""Limits on what one request may make the server read, inflate, parse and hold.

Every size is bounded before or while it is read, never after: the declared Content-Length,
the bytes actually received, the bytes a compressed body inflates to (counted while inflating,
1 MiB at a time), and the number of values a JSON body or gRPC typed contents may carry
(counted in the raw bytes before anything is parsed). Decoding a request that passes runs on
the event loop only while it is small (``INLINE_BYTES``); larger ones are decoded in a worker
thread, at most ``decoders`` at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

from .protocol import RequestTooLargeError

INLINE_BYTES = 64 << 10  # bodies up to this are decoded on the event loop (a few µs)
INFLATE_STEP = 1 << 20  # bytes inflated per step of a compressed body


@dataclass(frozen=True)
class Limits:
    max_request_bytes: int = 16 << 20
    max_elements: int = 1 << 20  # JSON values / gRPC typed contents per request
    header_timeout_s: float = 10.0  # first byte of a request head to its end
    body_timeout_s: float = 30.0  # end of the head to the end of the body
    decoders: int = 2  # concurrent decodes of bodies above INLINE_BYTES


def too_many_elements(count: int, limit: int, where: str) -> RequestTooLargeError:
    return RequestTooLargeError(
        f"the request carries up to {count} values; the limit is {limit}",
        location=where,
        hint="send tensors as binary data (tritonclient's default), split the request, or "
        "raise --max-elements",
    )


def json_element_bound(data: bytes | bytearray | memoryview) -> int:
    """An upper bound of the values in a JSON text: every value but the first of an array or
    object is preceded by a comma, and every array or object opens with a bracket."""
    data = bytes(data) if isinstance(data, memoryview) else data
    return data.count(b",") + data.count(b"[") + data.count(b"{") + 1
