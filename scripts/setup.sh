#!/usr/bin/env bash
# Set up everything hps needs on a fresh machine: a virtual environment in .venv with hps and all
# its optional parts (TensorFlow, Redis client, server, test tools). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip setuptools wheel
.venv/bin/python -m pip install -q -e ".[all]"
