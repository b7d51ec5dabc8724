#!/usr/bin/env bash
# Quick start, second command: set up, start a one-node Slurm cluster (with accounting) and
# MPI on localhost, run the whole test suite, and stop every daemon by PID, pass or fail.
# Needs root and Debian/Ubuntu apt for the cluster packages (as CI has).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
STATE=${HARNESS_CLUSTER_DIR:-/tmp/harness-cluster}
bash .ci/cluster.sh install
bash .ci/browser.sh install
trap 'bash .ci/cluster.sh down "$STATE"' EXIT
bash .ci/cluster.sh up "$STATE"
export HARNESS_CLUSTER_DIR="$STATE" SLURM_CONF="$STATE/etc/slurm.conf"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
.venv/bin/python -m pytest -q "$@"
