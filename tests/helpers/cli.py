"""The real `hps` entry point in a subprocess (exit codes exactly as users see them)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run_hps(
    *args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    """Run ``python -m hps_cli ARGS``; ``env`` adds to this process's environment."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "hps_cli", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
