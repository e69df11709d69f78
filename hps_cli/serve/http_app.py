"""KServe v2 over HTTP/REST (aiohttp), as Triton and tritonclient.http speak it.

Endpoints (``[/versions/{v}]`` is optional; the only version is ``1``):

- ``GET /v2``, ``/v2/health/live``, ``/v2/health/ready``;
- ``GET /v2/models/{m}[/versions/{v}]`` (metadata), ``.../ready``, ``.../config``,
  ``.../stats``; ``GET /v2/models/stats`` (every model);
- ``POST /v2/models/{m}[/versions/{v}]/infer``: JSON tensors and the binary extension;
- system shared memory (with ``--allow-shared-memory``): ``GET /v2/systemsharedmemory[/region/
  {name}]/status``, ``POST .../region/{name}/register`` ``{key, offset, byte_size}``,
  ``POST /v2/systemsharedmemory[/region/{name}]/unregister``;
- admin (bearer token): ``POST /v2/repository/index``,
  ``POST /v2/repository/models/{m}/load`` (optional ``{"parameters": {"config": "<json>"}}`` or
  ``{"parameters": {"ps_config": "<path>"}}``: core.py, lookup_configs.py), ``.../unload``,
  ``POST /v2/admin/models/{m}/tables/{table}/insert|remove``.

Infer requests on plain paths (no query, no percent-escapes, no ``Expect``) go from the
connection straight to the infer handler (``dispatch``); the rest take aiohttp's router and the
``frame`` middleware. Both ways share ``framed`` (errors, in-flight count, metrics, access log),
so they answer and count alike; the short way saves the router's resolution and the middleware
chain, about a sixth of a small lookup's server time at concurrency 1 (docs/serve.md).

Every error is ``{"error": "<field>: <message>"}`` with Triton's status mapping (protocol.py);
unknown paths are 404 and wrong methods 405, in the same form, and so are aiohttp's own
protocol errors (http_protocol.py). Bodies are read within the limits (http_body.py): 413 above
the size or value limits, 408 when they arrive too slowly, 415 for an unknown Content-Encoding.
A client that goes away before its answer is logged at info level (``client_disconnected``),
counted in ``hps_client_disconnects_total``, and is not an error. Responses name the server
``hps``, without versions.
"""

from __future__ import annotations

import logging
import re
from time import perf_counter

import orjson
from aiohttp import web

from .admin import check_token, update_tensors
from .core import ServerCore
from .http_body import ClientGoneError, read_body
from .http_codec import (
    HEADER_LENGTH,
    encode_infer_response,
    header_length_of,
    parse_infer_request,
    parse_json,
)
from .http_protocol import DISPATCH, SERVER
from .limits import INLINE_BYTES
from .logs import access, access_enabled, event
from .protocol import error_message, http_status, invalid, wants_shared_memory

log = logging.getLogger("hps_cli.serve")

_JSON = "application/json"
WRITE_SLICE = 1 << 20
JOIN_BYTES = 1 << 20  # binary answers up to this are sent as one body, larger ones streamed
# The infer routes as raw paths: a model name and version without "/", "?" or "%"
_INFER_PATH = re.compile(r"/v2/models/([^/?%]+)(?:/versions/([^/?%]+))?/infer")


def _json(doc: object, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(doc), status=status, headers={"Server": SERVER, "Content-Type": _JSON}
    )


def _error(status: int, message: str) -> web.Response:
    response = _json({"error": message}, status)
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="hps admin"'
    return response


def _empty(status: int = 200) -> web.Response:
    return web.Response(status=status, headers={"Server": SERVER})


def build_app(core: ServerCore) -> web.Application:
    limits = core.limits
    limit = limits.max_request_bytes

    metrics = core.metrics
    model_label = core.model_label

    async def framed(request: web.Request, handler, model: str | None = None, version: str = ""):
        """Errors as {"error"}, in-flight tracking, access log and request metrics around
        ``handler(request)``, or around the infer of ``model`` and ``version`` (given: the
        infer route, found by ``dispatch`` without the router)."""
        started = perf_counter()
        begun = getattr(request.protocol, "begun", None)  # GuardedHandler: off the pending count
        if begun is not None:
            begun()
        core.begin()
        status, response = 500, None
        try:
            try:
                if model is None:
                    response = await handler(request)
                else:
                    response = await infer_of(request, model, version)
            except web.HTTPException as exc:  # routing: 404 / 405, or aiohttp's own limits
                message = {
                    404: f"no endpoint {request.method} {request.path}",
                    405: f"method {request.method} is not allowed on {request.path}",
                    413: f"the request body is larger than {limit} bytes",
                }.get(exc.status, exc.reason)
                response = _error(exc.status, message)
            except (ClientGoneError, ConnectionError) as exc:
                status = "client_disconnected"
                metrics.client_disconnects.labels("http").inc()
                event(
                    log,
                    "client_disconnected",
                    protocol="http",
                    path=request.path,
                    peer=request.remote,
                    detail=str(exc),
                )
                raise ConnectionResetError("client disconnected") from None
            except Exception as exc:  # noqa: BLE001 - the server answers every request
                status = http_status(exc)
                if status == 500:
                    log.exception("unexpected error on %s %s", request.method, request.path)
                response = _error(status, error_message(exc))
            status = response.status
            return response
        finally:
            core.end()
            seconds = perf_counter() - started
            if model is None and (handler is infer or request.path.endswith("/infer")):
                model = request.match_info.get("model", "")
            if status != "client_disconnected" and model is not None:
                metrics.observe(model_label(model), "http", status, seconds)
            if access_enabled():
                size_out = (response.content_length or 0) if response is not None else 0
                access(
                    protocol="http",
                    method=request.method,
                    path=request.path,
                    model=request.match_info.get("model", "") if model is None else model,
                    status=status,
                    ms=round(seconds * 1000, 3),
                    bytes_in=request.content_length or 0,
                    bytes_out=size_out,
                    peer=request.remote,
                )

    @web.middleware
    async def frame(request: web.Request, handler):
        return await framed(request, handler, None)

    async def dispatch(request: web.Request):
        """The server's request handler: an infer request (the hot path) goes straight to its
        handler, everything else through the application (router, middleware). Only plain
        paths take the short way (no query, no percent-escapes, no ``Expect``); the router
        answers the rest as it would."""
        if request.method == "POST":
            match = _INFER_PATH.fullmatch(request.raw_path)
            if match is not None and "Expect" not in request.headers:
                return await framed(request, None, match[1], match[2] or "")
        return await app._handle(request)

    async def body_of(request: web.Request, json_length: int | None = None) -> bytes:
        return await read_body(request, limits, json_length)

    def model_of(request: web.Request):
        return core.entry(request.match_info["model"], request.match_info.get("version", ""))

    async def server_metadata(request):
        return _json(core.server_metadata())

    async def live(request):
        return _empty()

    async def ready(request):
        return _empty(200 if core.ready else 503)

    async def model_metadata(request):
        return _json(model_of(request).model.metadata())

    async def model_ready(request):
        entry = model_of(request)
        return _empty(200 if core.ready and entry else 503)

    async def model_config(request):
        return _json(core.model_config(model_of(request)))

    async def model_stats(request):
        return _json(
            core.statistics(
                request.match_info.get("model", ""), request.match_info.get("version", "")
            )
        )

    async def infer(request):
        match_info = request.match_info
        return await infer_of(request, match_info["model"], match_info.get("version", ""))

    async def infer_of(request, model: str, version: str):
        core.check_ready()
        header_length = request.headers.get(HEADER_LENGTH)
        body = await body_of(request, header_length_of(header_length))
        args = (body, header_length, model, version, core.shared_memory)
        if len(body) <= INLINE_BYTES:  # decoded right here (core.decode would, a call later)
            req = parse_infer_request(*args)
        else:
            req = await core.decode(len(body), parse_infer_request, *args)
        result = await core.infer(req)
        if wants_shared_memory(req):
            await core.write_shared(req, result)
        header, blobs = encode_infer_response(req.model, req.version, req, result)
        if not blobs:
            return web.Response(body=header, headers={"Server": SERVER, "Content-Type": _JSON})
        size = len(header) + sum(b.nbytes for b in blobs)
        headers = {
            "Server": SERVER,
            HEADER_LENGTH: str(len(header)),
            "Content-Type": "application/octet-stream",
        }
        if size <= JOIN_BYTES:  # one write: cheaper than a stream for small answers
            return web.Response(body=b"".join([header, *blobs]), headers=headers)
        # Streamed from the output arrays in slices: no copy of the vectors in Python, and
        # the transport never buffers more than one slice.
        headers["Content-Length"] = str(size)
        response = web.StreamResponse(headers=headers)
        await response.prepare(request)
        try:
            await response.write(header)
            for blob in blobs:
                for at in range(0, blob.nbytes, WRITE_SLICE):
                    await response.write(blob[at : at + WRITE_SLICE])
            await response.write_eof()
        except ConnectionError:  # the client went away mid-response: nothing to answer
            core.metrics.client_disconnects.labels("http").inc()
            event(
                log, "client_disconnected", protocol="http", path=request.path, peer=request.remote
            )
        return response

    def admin(request):
        check_token(core.options.admin_token, request.headers.get("Authorization"))

    async def repository_index(request):
        admin(request)
        await body_of(request)
        return _json(core.repository_index())

    async def load(request):
        admin(request)
        body = await body_of(request)
        parameters = {}
        if body.strip():
            doc = parse_json(body)
            if not isinstance(doc, dict):
                raise invalid("the body must be a JSON object", "body")
            parameters = doc.get("parameters") or {}
            if not isinstance(parameters, dict):
                raise invalid("must be a JSON object", "parameters")
        await core.load_model(request.match_info["model"], parameters)
        return _empty()

    async def unload(request):
        admin(request)
        await body_of(request)
        await core.unload_model(request.match_info["model"])
        return _empty()

    async def update(request):
        admin(request)
        operation = request.match_info["operation"]
        header_length = request.headers.get(HEADER_LENGTH)
        body = await body_of(request, header_length_of(header_length))
        req = await core.decode(
            len(body), parse_infer_request, body, header_length, request.match_info["model"]
        )
        keys, vectors = update_tensors(req, operation)
        count = await core.update_table(
            request.match_info["model"], request.match_info["table"], operation, keys, vectors
        )
        durable = core.durable_updates(req.model)
        return _json(
            {
                "model": req.model,
                "table": request.match_info["table"],
                "operation": operation,
                "keys": count,
                "durable": durable,
                "lasts": "across restarts (journaled in persistent_db)"
                if durable
                else "until the server restarts (the config has no writable persistent_db)",
            }
        )

    async def shm_status(request):
        return _json(core.shared_memory.status(request.match_info.get("name")))

    async def shm_register(request):
        doc = parse_json(await body_of(request))
        if not isinstance(doc, dict):
            raise invalid("the body must be a JSON object {key, offset, byte_size}", "body")
        core.shared_memory.register(
            request.match_info["name"], doc.get("key"), doc.get("offset", 0), doc.get("byte_size")
        )
        return _empty()

    async def shm_unregister(request):
        await body_of(request)
        core.shared_memory.unregister(request.match_info.get("name"))
        return _empty()

    app = web.Application(middlewares=[frame], client_max_size=limit)
    # The infer routes first: aiohttp tries the routes under /v2/models in registration order.
    routes = [
        web.post("/v2/models/{model}/infer", infer),
        web.post("/v2/models/{model}/versions/{version}/infer", infer),
        web.get("/v2", server_metadata),
        web.get("/v2/health/live", live),
        web.get("/v2/health/ready", ready),
        web.get("/v2/models/stats", model_stats),
        web.post("/v2/repository/index", repository_index),
        web.post("/v2/repository/models/{model}/load", load),
        web.post("/v2/repository/models/{model}/unload", unload),
        web.post("/v2/admin/models/{model}/tables/{table}/{operation:insert|remove}", update),
        web.get("/v2/systemsharedmemory/status", shm_status),
        web.get("/v2/systemsharedmemory/region/{name}/status", shm_status),
        web.post("/v2/systemsharedmemory/region/{name}/register", shm_register),
        web.post("/v2/systemsharedmemory/unregister", shm_unregister),
        web.post("/v2/systemsharedmemory/region/{name}/unregister", shm_unregister),
    ]
    for base in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        routes += [
            web.get(base, model_metadata),
            web.get(base + "/ready", model_ready),
            web.get(base + "/config", model_config),
            web.get(base + "/stats", model_stats),
        ]
    app.add_routes(routes)
    app[DISPATCH] = dispatch
    return app
