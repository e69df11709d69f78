"""`hps serve`: a KServe v2 (Triton-compatible) HTTP and gRPC server over the HPS runtime.

Modules: ``protocol`` (request/response model, datatypes, validation), ``http_codec`` (JSON and
binary tensor bodies), ``limits`` (what one request may make the server read, inflate, parse
and hold), ``http_body`` (reading HTTP bodies within them), ``http_protocol`` (aiohttp's
connection handler: head timeout, JSON protocol errors), ``grpc_wire`` (the typed values of a
gRPC request bounded from the wire format), ``event_loop`` (uvloop when installed), ``models``
(lookup models with the Triton HPS backend contract), ``inference`` (packages: named inputs ->
lookups -> dense SavedModel), ``batcher`` (dynamic batching), ``http_app`` (aiohttp),
``grpc_server`` (grpc.aio), ``metrics`` (Prometheus), ``admin`` (bearer-token endpoints),
``shared_memory`` (Triton's system shared memory extension), ``core`` (models, readiness, admin
operations), ``lookup_configs`` (where a lookup model's config comes from, checked),
``served_runtime`` (an HPS runtime), ``host_memory`` (resident size, freed heap handed back),
``logs`` (JSON logs), ``server`` (start-up, readiness, SIGTERM drain), ``workers``
(``--workers``: several servers on the same ports under a supervisor), ``worker`` (a worker's
entry point), ``worker_sharing`` (what each tier means with several workers),
``worker_metrics`` (their metrics served together). See docs/serve.md.
"""
