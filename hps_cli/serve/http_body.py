"""Reading an HTTP request body within the limits (limits.py).

aiohttp's own decompression is off (``auto_decompress=False``): a body is read as it arrives,
``gzip`` and ``deflate`` bodies are inflated here 1 MiB at a time, and reading stops with a 413
as soon as the received or inflated bytes pass ``max_request_bytes`` or the JSON part holds more
values than ``max_elements`` allows. The whole body must arrive within ``body_timeout_s`` (408
otherwise). A client that goes away mid-body raises ``ClientGoneError``.
"""

from __future__ import annotations

import asyncio
import sys
import zlib

from aiohttp import ClientPayloadError, web

from ..runtime.errors import InvalidInputError
from .limits import INFLATE_STEP, INLINE_BYTES, Limits, json_element_bound, too_many_elements
from .protocol import RequestTimeoutError, RequestTooLargeError, UnsupportedEncodingError

if sys.version_info >= (3, 11):
    from asyncio import timeout_at
else:  # aiohttp's own dependency on Python 3.10
    from async_timeout import timeout_at

# zlib's wbits of each supported Content-Encoding (deflate is zlib-wrapped, RFC 9110)
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


class ClientGoneError(Exception):
    """The client closed the connection before the request was read or answered."""


class _Body:
    """The bytes read so far, with the running checks of size and JSON values."""

    def __init__(self, limits: Limits, json_length: int | None):
        self.limits = limits
        self.data = bytearray()
        self.json_length = json_length  # the JSON part: the first json_length bytes (None: all)
        self.elements = 0

    def add(self, chunk: bytes) -> None:
        limit = self.limits.max_request_bytes
        if len(self.data) + len(chunk) > limit:
            raise _too_large(limit)
        start = len(self.data)
        self.data += chunk
        end = len(self.data) if self.json_length is None else min(self.json_length, len(self.data))
        if end > start:
            self.elements += json_element_bound(chunk[: end - start]) - 1
            if self.elements + 1 > self.limits.max_elements:
                raise too_many_elements(self.elements + 1, self.limits.max_elements, "body")


def _too_large(limit: int) -> RequestTooLargeError:
    return RequestTooLargeError(
        f"the body is larger than the limit of {limit} bytes",
        location="body",
        hint="raise --max-request-bytes or split the request",
    )


def _check_whole(data: bytes, limits: Limits, json_length: int | None) -> None:
    """``_Body.add``'s checks of a body read in one piece."""
    if len(data) > limits.max_request_bytes:
        raise _too_large(limits.max_request_bytes)
    size = len(data) if json_length is None else min(json_length, len(data))
    if size >= limits.max_elements:  # else the bound (at most size + 1) is within the limit
        bound = json_element_bound(data[:size])
        if bound > limits.max_elements:
            raise too_many_elements(bound, limits.max_elements, "body")


async def read_body(request: web.Request, limits: Limits, json_length: int | None) -> bytes:
    """The request body, decoded from its Content-Encoding, within the limits."""
    declared = request.content_length
    if declared is not None and declared > limits.max_request_bytes:
        raise RequestTooLargeError(
            f"the body is {declared} bytes; the limit is {limits.max_request_bytes}",
            location="Content-Length",
            hint="raise --max-request-bytes or split the request",
        )
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity") and encoding not in _WBITS:
        raise UnsupportedEncodingError(
            f"unsupported Content-Encoding {encoding!r} (gzip, deflate or identity)",
            location="Content-Encoding",
        )
    content = request.content
    if encoding in ("identity", "") and content.is_eof() and (declared or 0) <= INLINE_BYTES:
        data = content.read_nowait(-1)  # a small body that came with its head: no waiting
        _check_whole(data, limits, json_length)
        return data
    inflater = zlib.decompressobj(_WBITS[encoding]) if encoding in _WBITS else None
    body = _Body(limits, json_length)
    deadline = asyncio.get_running_loop().time() + limits.body_timeout_s
    try:
        async with timeout_at(deadline):
            while True:
                chunk = await content.readany()
                if not chunk:
                    break
                if inflater is None:
                    body.add(chunk)
                    continue
                while chunk:
                    try:
                        out = inflater.decompress(chunk, INFLATE_STEP)
                    except zlib.error as exc:
                        raise InvalidInputError(
                            f"the {encoding} body is corrupt: {exc}", location="Content-Encoding"
                        ) from None
                    body.add(out)
                    chunk = inflater.unconsumed_tail
    except asyncio.TimeoutError:
        raise RequestTimeoutError(
            f"the body did not arrive within {limits.body_timeout_s:g} s", location="body"
        ) from None
    except (ConnectionError, ClientPayloadError) as exc:  # the client went away mid-body
        raise ClientGoneError(f"{type(exc).__name__}: {exc}") from None
    if inflater is not None and not inflater.eof:
        raise InvalidInputError(f"the {encoding} body is truncated", location="Content-Encoding")
    return bytes(body.data)
