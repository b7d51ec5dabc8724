#!/usr/bin/env bash
# Create .venv and install the harness (torch pinned first: unpinned, pip picks a 5.5 GB CUDA build).
# Idempotent: a second run only checks. Usage: bash scripts/setup.sh [--test]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_PIN=${TORCH_PIN:-torch==2.13.0}
extra=""
[ "${1:-}" = "--test" ] && extra="[test]"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
stamp=".venv/.installed${extra}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  pip install -q --disable-pip-version-check --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
  pip install -q --disable-pip-version-check "$TORCH_PIN" 2>&1 | grep -v '^WARNING: Location' || true
  pip install -q --disable-pip-version-check -e ".${extra}" 2>&1 | grep -v '^WARNING: Location' || true
  .venv/bin/python -c "import torch, harness" && touch "$stamp"
fi
