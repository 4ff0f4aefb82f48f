#!/usr/bin/env bash
# Builds the images for one accelerator and pushes them to Artifact Registry (run once per
# variant; needs gcloud, logged in, and a working docker).
#   PROJECT=my-project REGION=us-central1 JAX_EXTRA=cuda12 deploy/push.sh
# Pushes $REGION-docker.pkg.dev/$PROJECT/catvae/catvae-jax:{train,serve}[-cuda12|-tpu].
set -euo pipefail
cd "$(dirname "$0")/.."
: "${PROJECT:?set PROJECT}" "${REGION:?set REGION}"
JAX_EXTRA=${JAX_EXTRA:-}
registry=$REGION-docker.pkg.dev/$PROJECT/catvae
gcloud artifacts repositories describe catvae --project="$PROJECT" --location="$REGION" \
  >/dev/null 2>&1 ||
  gcloud artifacts repositories create catvae --project="$PROJECT" --location="$REGION" \
    --repository-format=docker
gcloud auth configure-docker "$REGION-docker.pkg.dev" --quiet
make docker JAX_EXTRA="$JAX_EXTRA"
for target in train serve; do
  tag=catvae-jax:$target${JAX_EXTRA:+-$JAX_EXTRA}
  docker tag "$tag" "$registry/$tag"
  docker push "$registry/$tag"
done
