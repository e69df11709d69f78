"""The event loop of ``hps serve``: uvloop when it is installed (the ``serve`` extra brings it),
else asyncio's own. ``HPS_SERVE_UVLOOP=0`` forces asyncio's loop (to compare the two)."""

from __future__ import annotations

import asyncio
import os
import sys


def uses_uvloop() -> bool:
    if os.environ.get("HPS_SERVE_UVLOOP", "1") == "0":
        return False
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def run(main):
    """``asyncio.run(main)`` on the chosen loop."""
    if uses_uvloop():
        import uvloop

        if sys.version_info >= (3, 11):
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                return runner.run(main)
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())  # Python 3.10
    return asyncio.run(main)
