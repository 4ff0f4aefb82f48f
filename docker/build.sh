#!/usr/bin/env bash
# make docker: builds catvae-jax:train and catvae-jax:serve (JAX_EXTRA=cuda12|tpu adds a -cuda12
# or -tpu suffix) with docker or podman, whichever works here (docker/engine.sh).
#   BASE=image       the base image (default python:3.11-slim)
#   JAX_EXTRA=extra  empty (CPU), cuda12 or tpu
#   TAG_PREFIX=name  image name (default catvae-jax)
set -euo pipefail
cd "$(dirname "$0")/.."
source docker/engine.sh
engine_detect

BASE=${BASE:-python:3.11-slim}
JAX_EXTRA=${JAX_EXTRA:-}
case $JAX_EXTRA in
  "" | cuda12 | tpu) ;;
  *) echo "error: JAX_EXTRA must be empty, cuda12 or tpu, got '$JAX_EXTRA'" >&2; exit 2 ;;
esac
suffix=${JAX_EXTRA:+-$JAX_EXTRA}
for target in train serve; do
  tag=${TAG_PREFIX:-catvae-jax}:$target$suffix
  start=$(date +%s)
  "${ENGINE[@]}" build "${BUILD_OPTS[@]}" -f docker/Dockerfile --target "$target" \
    --build-arg BASE="$BASE" --build-arg JAX_EXTRA="$JAX_EXTRA" -t "$tag" .
  echo "built $tag in $(($(date +%s) - start)) s with ${ENGINE[0]} (base $BASE)"
done
