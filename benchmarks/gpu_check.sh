#!/usr/bin/env bash
# Every GPU check of issue 13 in one run, bounded to 5 minutes; appends to benchmarks/RESULTS.md.
# Run from the repository root on a machine with a GPU: bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && PY=.venv/bin/python
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
PYTHONPATH=. timeout 300 "$PY" benchmarks/gpu_check.py "$@"
