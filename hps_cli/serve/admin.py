"""Admin endpoints: bearer-token check and the table-update request.

Admin calls (model load/unload, table insert/remove) need ``Authorization: Bearer <token>``
(HTTP header, or gRPC metadata ``authorization``). The token comes from ``--admin-token-file``
or ``$HPS_ADMIN_TOKEN``; without one the admin endpoints answer 403 (disabled). Tokens are
compared in constant time.

A table update is a KServe v2 tensor body (JSON or binary, as an infer request):
``KEYS`` INT64 ``[n]`` and, for insert, ``VECTORS`` FP32 ``[n, dim]``.
"""

from __future__ import annotations

import hmac

import numpy as np

from .protocol import ForbiddenError, InferRequest, UnauthorizedError, invalid


def check_token(expected: str | None, authorization: str | None) -> None:
    if expected is None:
        raise ForbiddenError(
            "admin endpoints are disabled",
            location="Authorization",
            hint="start hps serve with --admin-token-file or HPS_ADMIN_TOKEN",
        )
    if not authorization or not authorization.startswith("Bearer "):
        raise UnauthorizedError(
            "an admin call needs the header 'Authorization: Bearer <token>'",
            location="Authorization",
        )
    # Header values may hold any byte (aiohttp keeps undecodable ones as surrogates).
    given = authorization[len("Bearer ") :].strip().encode("utf-8", "surrogatepass")
    if not hmac.compare_digest(given, expected.encode()):
        raise UnauthorizedError("wrong bearer token", location="Authorization")


def update_tensors(request: InferRequest, operation: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(keys, vectors or None) of a table update request."""
    allowed = {"KEYS", "VECTORS"} if operation == "insert" else {"KEYS"}
    for name in request.inputs:
        if name not in allowed:
            raise invalid(
                f"unexpected input '{name}' for {operation} (inputs: {', '.join(sorted(allowed))})",
                "inputs",
            )
    for name in sorted(allowed):
        if name not in request.inputs:
            raise invalid(f"missing input '{name}'", "inputs")
    keys = request.inputs["KEYS"]
    if keys.datatype != "INT64" or keys.array.ndim != 1:
        raise invalid(f"must be INT64 of shape [n], got {keys.datatype} {keys.shape}", "KEYS")
    vectors = None
    if operation == "insert":
        tensor = request.inputs["VECTORS"]
        if tensor.datatype != "FP32" or tensor.array.ndim != 2:
            raise invalid(
                f"must be FP32 of shape [n, dim], got {tensor.datatype} {tensor.shape}", "VECTORS"
            )
        vectors = np.ascontiguousarray(tensor.array, dtype=np.float32)
    return np.ascontiguousarray(keys.array, dtype=np.int64), vectors
