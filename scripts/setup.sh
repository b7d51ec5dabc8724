#!/usr/bin/env bash
# Create .venv and install the harness (torch pinned first: unpinned, pip picks a 5.5 GB CUDA build).
# Idempotent: a second run only checks. Usage: bash scripts/setup.sh [--test]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_PIN=${TORCH_PIN:-torch==2.13.0}
# Original architecture code the tests compare against; --no-deps: what the tests import needs
# only torch (robustbench's files are loaded by path: the package itself imports timm, not
# needed; guided-diffusion-sdk is OpenAI's guided_diffusion, whose unet/script_util need neither
# its declared blobfile nor tqdm).
ORIGINALS="robustbench==1.1.1 guided-diffusion-sdk==1.0.0"
extra=""
[ "${1:-}" = "--test" ] && extra="[test]"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=".venv/.installed${extra}"
log=".venv/setup.log"
pipi() {  # pip install, its chatter kept in the log and shown only on failure
  if ! .venv/bin/python -m pip install --disable-pip-version-check "$@" >>"$log" 2>&1; then
    cat "$log" >&2
    echo "setup: pip install $* failed (log: $log)" >&2
    exit 1
  fi
}
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing into .venv (log: $log)" >&2
  : >"$log"
  pipi --upgrade pip
  pipi "$TORCH_PIN"
  pipi -e ".${extra}"
  .venv/bin/python -c "import torch, harness" && touch "$stamp"
fi
if [ -n "$extra" ]; then  # --test: the originals, each only when its pinned version is absent
  for pin in $ORIGINALS; do
    if ! .venv/bin/python -c "import importlib.metadata as m, sys; sys.exit(m.version('${pin%%==*}') != '${pin#*==}')" 2>/dev/null; then
      pipi --no-deps "$pin"
    fi
  done
fi
