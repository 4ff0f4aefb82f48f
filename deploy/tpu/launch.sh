#!/usr/bin/env bash
# Creates a multi-host Cloud TPU VM slice and starts the same training command on every worker
# (deploy/tpu/worker.sh). Push the image first: JAX_EXTRA=tpu deploy/push.sh.
#   PROJECT=my-project ZONE=us-west4-a BUCKET=my-bucket RUN=runs/exp1 deploy/tpu/launch.sh
# ACCELERATOR (default v5litepod-16: 4 hosts) and TPU_VERSION pick the slice; TPU its name.
set -euo pipefail
cd "$(dirname "$0")"
: "${PROJECT:?set PROJECT}" "${ZONE:?set ZONE}" "${BUCKET:?set BUCKET}" "${RUN:?set RUN}"
REGION=${ZONE%-*} TPU=${TPU:-catvae-tpu}
where=(--project="$PROJECT" --zone="$ZONE")
gcloud compute tpus tpu-vm describe "$TPU" "${where[@]}" >/dev/null 2>&1 ||
  gcloud compute tpus tpu-vm create "$TPU" "${where[@]}" \
    --accelerator-type="${ACCELERATOR:-v5litepod-16}" --version="${TPU_VERSION:-v2-alpha-tpuv5-lite}"
gcloud compute tpus tpu-vm scp worker.sh "$TPU": "${where[@]}" --worker=all
gcloud compute tpus tpu-vm ssh "$TPU" "${where[@]}" --worker=all --command="\
IMAGE=$REGION-docker.pkg.dev/$PROJECT/catvae/catvae-jax:train-tpu BUCKET=$BUCKET \
bash worker.sh --config configs/exp1.py --workdir /runs/$RUN --config.progress_bar=False"
echo "delete the slice when done: gcloud compute tpus tpu-vm delete $TPU ${where[*]}"
