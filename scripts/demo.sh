#!/usr/bin/env bash
# Set up, then run the main job end to end on the embedded default (no GPU, no external server).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python examples/quickstart/run.py "$@"
