#!/usr/bin/env bash
# Every GPU check in one run (issue 13's, the batch search included, bounded to 5 minutes, then issue 14's purify items/s,
# bounded to 2), appending to benchmarks/RESULTS.md.
# Run from the repository root on a machine with a GPU: bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && PY=.venv/bin/python
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
PYTHONPATH=. timeout 300 "$PY" benchmarks/gpu_check.py "$@"
PYTHONPATH=. timeout 120 "$PY" benchmarks/purify_items.py --device cuda --no-cli --append
