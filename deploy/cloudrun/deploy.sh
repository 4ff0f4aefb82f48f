#!/usr/bin/env bash
# Deploys catvae-jax:serve to Cloud Run on a run read from a bucket (deploy/cloudrun/service.yaml).
#   PROJECT=my-project REGION=us-central1 BUCKET=my-bucket RUN=runs/quickstart \
#     deploy/cloudrun/deploy.sh
# Upload the run first: gcloud storage cp -r runs/quickstart gs://$BUCKET/runs/
set -euo pipefail
cd "$(dirname "$0")"
: "${PROJECT:?set PROJECT}" "${REGION:?set REGION}" "${BUCKET:?set BUCKET}" "${RUN:?set RUN}"
spec=$(mktemp)
trap 'rm -f "$spec"' EXIT
sed -e "s|REGION-docker.pkg.dev/PROJECT/|$REGION-docker.pkg.dev/$PROJECT/|" \
  -e "s|/model/RUN|/model/$RUN|" -e "s|bucketName: BUCKET|bucketName: $BUCKET|" \
  service.yaml >"$spec"
gcloud run services replace "$spec" --project="$PROJECT" --region="$REGION"
gcloud run services add-iam-policy-binding catvae-serve --project="$PROJECT" \
  --region="$REGION" --member=allUsers --role=roles/run.invoker
