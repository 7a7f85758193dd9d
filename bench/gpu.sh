#!/usr/bin/env bash
# The GPU suite in one command (bench/gpu.py): 7B-shaped prefill, JAX vs the PyTorch peer,
# unreduced and DUET-192/128/64 at batch 1/8/32; JSON under bench/results/gpu/.
# Installs nothing. Extra arguments go to bench/gpu.py (e.g. --small, --batches 1 8).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
# XLA must not grab 75 % of the GPU up front: torch shares the device.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
exec "$PY" bench/gpu.py "$@"
