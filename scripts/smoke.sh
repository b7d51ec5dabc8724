#!/usr/bin/env bash
# Quick start, first command: set up, run the smoke sweep on the bundled digits and models, print its report.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/harness run --grid grids/smoke.yaml --report "$@"
