"""aiohttp's connection handler, with what hps adds at the protocol level.

- A request head (request line and headers) must arrive within ``header_timeout_s`` of its first
  byte; otherwise the server answers 408 and closes the connection (slow-header clients cannot
  hold connections open). Idle keep-alive connections are aiohttp's ``keepalive_timeout``.
- aiohttp's own protocol errors (a malformed request line or header, a header too long) are
  answered as every other error: ``{"error": "http: <reason>"}``, logged at info level without
  a traceback (they are the client's fault).
- Every answer names the server ``hps`` (no versions).
- Request heads read but not yet handled are counted in ``Arrivals.http_pending`` (the batchers
  wait for those requests instead of running a request at once, arrivals.py); the middleware
  (http_app.py) takes a request off the count when its handling begins.

aiohttp creates one handler per connection through its ``Server``; ``GuardedRunner`` makes its
server create ``GuardedHandler``s.
"""

from __future__ import annotations

import logging
from http import HTTPStatus

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler

from .logs import event

log = logging.getLogger("hps_cli.serve")

SERVER = "hps"
# An application's own request handler, put in front of its router (http_app.py's dispatch)
DISPATCH = web.AppKey("dispatch", object)


def error_response(status: int, message: str) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps({"error": message}),
        headers={"Server": SERVER, "Content-Type": "application/json"},
    )


class GuardedHandler(RequestHandler):
    """One HTTP connection (see the module's docstring)."""

    header_timeout_s = 10.0
    arrivals = None  # the server's Arrivals
    pending = 0  # heads of this connection counted in arrivals.http_pending

    _head_timer = None

    def data_received(self, data: bytes) -> None:
        heads = self._request_count
        super().data_received(data)
        if self._request_count != heads:  # a complete head: its request is being handled
            self._stop_head_timer()
            if self.arrivals is not None:
                self.pending += self._request_count - heads
                self.arrivals.http_pending += self._request_count - heads
        elif data and self._head_timer is None and not self._request_in_progress:
            # Bytes while no request is being handled: a head has begun (on a new connection
            # possibly before aiohttp's reader waits for it). The expiry checks again.
            self._head_timer = self._loop.call_later(self.header_timeout_s, self._head_expired)

    def begun(self) -> None:
        """A request of this connection is being handled (called by the middleware)."""
        if self.pending:
            self.pending -= 1
            self.arrivals.http_pending -= 1

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_head_timer()
        if self.pending:  # heads whose requests will never be handled
            self.arrivals.http_pending -= self.pending
            self.pending = 0
        super().connection_lost(exc)

    def _waiting_for_head(self) -> bool:
        waiter = self._waiter
        return waiter is not None and not waiter.done()

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_expired(self) -> None:
        self._head_timer = None
        if not self._waiting_for_head() or self.transport is None:
            return
        peer = self.transport.get_extra_info("peername")
        event(log, "header_timeout", protocol="http", peer=str(peer), s=self.header_timeout_s)
        body = orjson.dumps(
            {"error": f"http: the request head did not arrive within {self.header_timeout_s:g} s"}
        )
        self.transport.write(
            b"HTTP/1.1 408 Request Timeout\r\nServer: hps\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )
        self.force_close()

    def handle_error(self, request, status: int = 500, exc=None, message=None):
        if isinstance(exc, HttpProcessingError):  # a head the parser refused: no middleware
            self.begun()
        if status >= 500:
            self.log_exception("error handling a request from %s", request.remote, exc_info=exc)
        if request.writer.output_size > 0:
            raise ConnectionError("the response was sent already")
        if isinstance(exc, HttpProcessingError) and exc.message:
            reason = exc.message
        else:
            reason = message or HTTPStatus(status).phrase
        reason = str(reason).replace("\n", " ")[:300]
        if status < 500:
            event(log, "bad_http_request", status=status, peer=str(request.remote), reason=reason)
        response = error_response(status, f"http: {reason}")
        response.force_close()
        return response


class _GuardedServer(web.Server):
    header_timeout_s = 10.0
    arrivals = None

    def __call__(self) -> RequestHandler:
        handler = GuardedHandler(self, loop=self._loop, **self._kwargs)
        handler.header_timeout_s = self.header_timeout_s
        handler.arrivals = self.arrivals
        return handler


class GuardedRunner(web.AppRunner):
    """``web.AppRunner`` whose connections are ``GuardedHandler``s."""

    def __init__(self, app: web.Application, *, header_timeout_s: float, arrivals=None, **kwargs):
        super().__init__(app, **kwargs)
        self.header_timeout_s = header_timeout_s
        self.arrivals = arrivals

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _GuardedServer  # aiohttp builds it; only the handler class differs
        server.header_timeout_s = self.header_timeout_s
        server.arrivals = self.arrivals
        dispatch = self._app.get(DISPATCH)
        if dispatch is not None:  # the app's own handler, in front of its router
            server.request_handler = dispatch
        return server
