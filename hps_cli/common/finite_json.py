"""JSON that is JSON: NaN and Infinity, which Python's ``json`` writes as bare literals no
standard parser accepts, become ``null``.

The JSON documents hps writes with the standard library (``--json`` output, the server's log
lines) go through ``dumps``; the server's response bodies go through ``orjson``, which writes
non-finite floats as ``null`` itself. The common case costs one ``json.dumps`` with
``allow_nan=False``; only a document that holds a non-finite float is walked and rewritten.
"""

from __future__ import annotations

import json
import math


def dumps(document: object, **options) -> str:
    """``json.dumps(document, **options)`` with every non-finite float written as ``null``."""
    try:
        return json.dumps(document, allow_nan=False, **options)
    except ValueError:
        return json.dumps(finite(document), allow_nan=False, **options)


def finite(value: object) -> object:
    """A copy of a JSON-like value with NaN and ±Infinity replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value
