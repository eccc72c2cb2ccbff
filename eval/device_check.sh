#!/usr/bin/env bash
# The device check (GPU path end to end): bash eval/device_check.sh [--cpu-dry-run] [--device cuda:N] [--no-write]
# On a GPU: <= 8 minutes, rewrites the "device" section of BENCHMARKS.md. --cpu-dry-run: tiny sizes on the CPU (CI).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
exec "$PY" eval/device_check.py "$@"
