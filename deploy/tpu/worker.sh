#!/usr/bin/env bash
# One worker of a multi-host Cloud TPU VM run; every worker runs this same command:
#   IMAGE=REGION-docker.pkg.dev/PROJECT/catvae/catvae-jax:train-tpu BUCKET=my-bucket \
#     bash worker.sh --config configs/exp1.py --workdir /runs/exp1
# The arguments go to `python -m catvae_jax.main`. This worker's index, the number of workers
# and the coordinator (worker 0) come from the TPU VM's metadata server and reach the CLI as
# JAX_PROCESS_ID, JAX_NUM_PROCESSES and JAX_COORDINATOR_ADDRESS, with which it calls
# jax.distributed.initialize(). The bucket is mounted at /mnt/runs on every worker (a
# checkpoint is written by all workers into one folder), owned by the image's uid 1000.
set -euo pipefail
: "${IMAGE:?set IMAGE}" "${BUCKET:?set BUCKET}"
md() {
  curl -sf -H Metadata-Flavor:Google \
    "http://metadata.google.internal/computeMetadata/v1/instance/attributes/$1"
}
id=$(md agent-worker-number)
endpoints=$(md worker-network-endpoints) # "name:id:ip,..." or "hostname,..."; worker 0 first
IFS=, read -ra workers <<<"$endpoints"
coordinator=${workers[0]##*:}:8482

if ! mountpoint -q /mnt/runs; then
  if ! command -v gcsfuse >/dev/null; then
    echo "deb https://packages.cloud.google.com/apt gcsfuse-$(lsb_release -cs) main" |
      sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null
    curl -sf https://packages.cloud.google.com/apt/doc/apt-key.gpg |
      sudo tee /etc/apt/trusted.gpg.d/gcsfuse.asc >/dev/null
    sudo apt-get update -qq && sudo apt-get install -y -qq gcsfuse
  fi
  sudo mkdir -p /mnt/runs
  sudo gcsfuse --implicit-dirs --uid 1000 --gid 1000 -o allow_other "$BUCKET" /mnt/runs
fi
sudo gcloud auth configure-docker "${IMAGE%%/*}" --quiet
sudo docker pull -q "$IMAGE"
echo "worker $id of ${#workers[@]}, coordinator $coordinator"
sudo docker run --rm --privileged --net=host --name catvae-train \
  -e JAX_COORDINATOR_ADDRESS="$coordinator" -e JAX_NUM_PROCESSES="${#workers[@]}" \
  -e JAX_PROCESS_ID="$id" -e WANDB_MODE="${WANDB_MODE:-disabled}" \
  -v /mnt/runs:/runs "$IMAGE" "$@"
