"""Client-side helpers of the serve tests: raw HTTP requests, the HPS backend's binary lookup
body, tritonclient inputs, and a Prometheus scrape. The server itself runs through
``hps_cli.devtools.serve_process.ServeProcess``.
"""

from __future__ import annotations

import json

import numpy as np


def http_get(url: str, path: str, headers: dict | None = None) -> tuple[int, bytes]:
    import http.client

    host, port = url.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def http_post(
    url: str, path: str, body: bytes, headers: dict | None = None, conn=None
) -> tuple[int, dict, bytes]:
    """POST and return (status, headers, body); reuses ``conn`` when given."""
    import http.client

    own = conn is None
    if own:
        host, port = url.split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("POST", path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        if own:
            conn.close()


def binary_lookup_body(keys: np.ndarray, counts: np.ndarray) -> tuple[bytes, dict]:
    """An HPS-backend request (KEYS binary, NUMKEYS JSON, binary output) as tritonclient
    sends it; returns (body, headers)."""
    keys = np.ascontiguousarray(keys, dtype=np.int64)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "KEYS",
                    "shape": [1, keys.size],
                    "datatype": "INT64",
                    "parameters": {"binary_data_size": keys.nbytes},
                },
                {
                    "name": "NUMKEYS",
                    "shape": [1, len(counts)],
                    "datatype": "INT32",
                    "data": [int(c) for c in counts],
                },
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    return header + keys.tobytes(), {"Inference-Header-Content-Length": str(len(header))}


def binary_output(headers: dict, body: bytes) -> np.ndarray:
    """OUTPUT0 of a binary response."""
    start = int(headers["Inference-Header-Content-Length"])
    return np.frombuffer(body, dtype=np.float32, offset=start)


def lookup_inputs(module, keys: np.ndarray, counts: np.ndarray, *, binary: bool = True):
    """tritonclient InferInputs of the HPS backend contract ([1, total] and [1, n_tables])."""
    a = module.InferInput("KEYS", [1, keys.size], "INT64")
    b = module.InferInput("NUMKEYS", [1, len(counts)], "INT32")
    kwargs = {"binary_data": binary} if module.__name__.endswith("http") else {}
    a.set_data_from_numpy(np.asarray(keys, np.int64).reshape(1, -1), **kwargs)
    b.set_data_from_numpy(np.asarray(counts, np.int32).reshape(1, -1), **kwargs)
    return [a, b]


def scrape(url: str) -> dict[str, float]:
    """Prometheus text -> {'name{labels}': value} (samples only)."""
    import urllib.request

    with urllib.request.urlopen(url, timeout=30) as response:
        text = response.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out
