#!/usr/bin/env bash
# Build the harness image where a container runtime works (a site's build node), then run its
# self-test: `harness --help`, and `harness doctor` (whose GPU lines need a GPU node: there, run
# `apptainer exec --nv harness.sif harness doctor --profile <site>`).
#   bash containers/build.sh [apptainer|docker] [OUT]     (default: apptainer, harness.sif)
set -euo pipefail
cd "$(dirname "$0")/.."
runtime=${1:-apptainer}
case "$runtime" in
  apptainer|singularity)
    out=${2:-harness.sif}
    "$runtime" build --force "$out" containers/harness.def
    "$runtime" exec "$out" harness --help >/dev/null
    "$runtime" exec "$out" harness doctor || echo "build.sh: doctor reported problems (expected without a GPU)"
    ;;
  docker)
    tag=${2:-lorid-harness:latest}
    DOCKER_BUILDKIT=1 docker build -f containers/Dockerfile -t "$tag" .
    docker run --rm "$tag" --help >/dev/null
    docker run --rm "$tag" doctor || echo "build.sh: doctor reported problems (expected without a GPU)"
    ;;
  *) echo "build.sh: runtime must be apptainer, singularity or docker, not '$runtime'" >&2; exit 2 ;;
esac
echo "build.sh: built and self-tested with $runtime"
