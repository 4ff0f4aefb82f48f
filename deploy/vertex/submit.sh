#!/usr/bin/env bash
# Submits deploy/vertex/job.yaml: catvae-jax:train-cuda12 on one GPU, the run into gs://BUCKET/RUN.
#   PROJECT=my-project REGION=us-central1 BUCKET=my-bucket RUN=runs/exp1 deploy/vertex/submit.sh
# Push the image first: PROJECT=... REGION=... JAX_EXTRA=cuda12 deploy/push.sh
set -euo pipefail
cd "$(dirname "$0")"
: "${PROJECT:?set PROJECT}" "${REGION:?set REGION}" "${BUCKET:?set BUCKET}" "${RUN:?set RUN}"
spec=$(mktemp --suffix=.yaml)
trap 'rm -f "$spec"' EXIT
sed -e "s|REGION-docker.pkg.dev/PROJECT/|$REGION-docker.pkg.dev/$PROJECT/|" \
  -e "s|/gcs/BUCKET/RUN|/gcs/$BUCKET/$RUN|" job.yaml >"$spec"
gcloud ai custom-jobs create --project="$PROJECT" --region="$REGION" \
  --display-name="catvae-${RUN//\//-}" --config="$spec"
echo "follow it: gcloud ai custom-jobs list --project=$PROJECT --region=$REGION"
