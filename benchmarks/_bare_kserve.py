"""The floor of bench_serve_floor.py: a minimal aiohttp server and a minimal grpc.aio server,
on the same event loop hps serve runs (uvloop when it is installed; pinned with gRPC's poller
thread to one CPU, as hps serve pins them by default), answering every KServe v2
infer request with one canned response of the size hps answers (OUTPUT0 FP32 [1, keys * dim],
binary). They read the whole request and parse nothing.

    python benchmarks/_bare_kserve.py --floats 2048 [--spin-us 50]

prints one JSON line ``{"http_port": ..., "grpc_port": ...}`` once both listen, and serves until
SIGTERM. ``--spin-us``: each answer first spins that long on the event loop
(study_handler_cost.py: what a handler's own work costs a client at concurrency 1).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time


def canned_http(floats: int) -> tuple[bytes, bytes]:
    """(JSON header, body) of a binary KServe response of ``floats`` FP32 values."""
    header = json.dumps(
        {
            "model_name": "emb",
            "model_version": "1",
            "parameters": {"NumSample": floats, "DeviceID": 0},
            "outputs": [
                {
                    "name": "OUTPUT0",
                    "datatype": "FP32",
                    "shape": [1, floats],
                    "parameters": {"binary_data_size": 4 * floats},
                }
            ],
        },
        separators=(",", ":"),
    ).encode()
    return header, header + bytes(4 * floats)


def canned_grpc(floats: int) -> bytes:
    from tritonclient.grpc import service_pb2

    response = service_pb2.ModelInferResponse(model_name="emb", model_version="1")
    response.parameters["NumSample"].int64_param = floats
    response.parameters["DeviceID"].int64_param = 0
    response.outputs.add(name="OUTPUT0", datatype="FP32", shape=[1, floats])
    response.raw_output_contents.append(bytes(4 * floats))
    return response.SerializeToString()


def spin(seconds: float) -> None:
    """Busy the calling thread for ``seconds`` (holding the interpreter lock, as Python work
    does)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


async def main(floats: int, spin_s: float = 0.0, pin: bool = True) -> None:
    import grpc
    from aiohttp import web

    from hps_cli.serve.event_loop import pin_event_loop

    header, body = canned_http(floats)
    headers = {
        "Inference-Header-Content-Length": str(len(header)),
        "Content-Type": "application/octet-stream",
    }

    async def infer(request: web.Request) -> web.Response:
        await request.read()
        if spin_s:
            spin(spin_s)
        return web.Response(body=body, headers=headers)

    app = web.Application()
    app.router.add_post("/v2/models/{model}/infer", infer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    http_port = runner.addresses[0][1]

    answer = canned_grpc(floats)

    async def model_infer(request: bytes, context) -> bytes:
        if spin_s:
            spin(spin_s)
        return answer

    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(model_infer)  # bytes in, bytes out
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "inference.GRPCInferenceService", {"ModelInfer": handler}
            ),
        )
    )
    grpc_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    if pin:  # as hps serve does by default (event_loop.pin_event_loop): the same stack
        pin_event_loop()
    print(json.dumps({"http_port": http_port, "grpc_port": grpc_port}), flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0)
    await runner.cleanup()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--floats", type=int, required=True, help="FP32 values of OUTPUT0")
    ap.add_argument("--spin-us", type=float, default=0.0, help="work before each answer")
    ap.add_argument(
        "--no-pin", action="store_true", help="as hps serve --no-pin-event-loop (default: pin)"
    )
    args = ap.parse_args()
    from hps_cli.serve.event_loop import run

    run(main(args.floats, args.spin_us / 1e6, not args.no_pin))
