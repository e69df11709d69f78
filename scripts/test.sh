#!/usr/bin/env bash
# Set up, install the services the tests use (redis-server), and run the whole test suite except
# the GPU tests (those run on a GPU machine: see docs/gpu.md).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if ! command -v redis-server >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq redis-server >/dev/null
  fi
fi
# Lint and format first: a style finding fails the run as a test would.
.venv/bin/python -m ruff check --quiet .
.venv/bin/python -m ruff format --check --quiet .
# The Redis Cluster the tests need is started (and stopped) by the tests' own fixture.
exec .venv/bin/python -m pytest -m "not gpu" "$@"
