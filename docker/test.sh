#!/usr/bin/env bash
# make docker-test: proves both CPU images here with nothing of the host but a container engine
# (podman, installed with apt-get when missing; no host Python, no .venv):
#   1. a local Debian base image (no image registry is reachable here), made once with
#      debootstrap and kept in the engine's image store for later runs;
#   2. catvae-jax:train and catvae-jax:serve built on it (docker/build.sh);
#   3. the images hold no torch, no test extras, no compiler, no W&B key, and run as non-root;
#   4. a tiny run in `train`, into a host folder mounted at /runs;
#   5. `serve` on that run's folder: /healthz, then /grid.png is a PNG of the expected size.
# Volume ownership: the images run as uid 1000 (user catvae). As root (CI) the host folder is
# chowned to 1000 and training runs as the image's user; as another user (rootful docker) it
# runs with --user $(id -u):$(id -g). Either way the files on the host must belong to that uid.
# `serve` runs as an arbitrary uid with the folder read-only: it only reads a workdir.
# Containers and scratch files are removed on every exit, failures included.
# DOCKER_TEST_BASE=python:3.11-slim skips the local base (where a registry is reachable).
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)
LOCAL_BASE=localhost/catvae-base:bookworm
BASE=${DOCKER_TEST_BASE:-$LOCAL_BASE}
SIZE=16 N=16 # a 16-image grid of 16x16 samples: 4 columns of 16 + 2 px padding, + 2 = 74 px
GRID_PX=$(((SIZE + 2) * 4 + 2))
PORT=${DOCKER_TEST_PORT:-18080}
while (echo >"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; do PORT=$((PORT + 1)); done # a free port
TRAIN=train-test-$$ SERVE=serve-test-$$

step() { echo "== [$(($(date +%s) - t0)) s] $*"; }
die() { echo "docker-test: FAILED: $*" >&2; exit 1; }

install_podman() {
  command -v podman >/dev/null && command -v runc >/dev/null && command -v debootstrap >/dev/null &&
    return 0
  [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null ||
    die "podman, runc and debootstrap are missing and cannot be installed (needs root and apt-get)"
  step "installing podman, runc and debootstrap with apt-get"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman buildah runc debootstrap uidmap \
    fuse-overlayfs >/dev/null
}

local_base() {
  if "${ENGINE[@]}" image inspect "$LOCAL_BASE" >/dev/null 2>&1; then
    step "local base $LOCAL_BASE: cached"
    return 0
  fi
  step "local base $LOCAL_BASE: debootstrap bookworm (python3, python3-venv)"
  local rootfs="$scratch/rootfs"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm \
    "$rootfs" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >"$scratch/debootstrap.log" ||
    { tail -20 "$scratch/debootstrap.log"; die "debootstrap"; }
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | "${ENGINE[@]}" import - "$LOCAL_BASE" >"$scratch/import.log" 2>&1 ||
    { cat "$scratch/import.log"; die "importing the base image"; }
  rm -rf "$rootfs"
}

cleanup() {
  local rc=$?
  if ((rc != 0)) && "${ENGINE[@]}" container exists "$SERVE" 2>/dev/null; then
    echo "--- serve container log (last 30 lines):" >&2
    "${ENGINE[@]}" logs --tail 30 "$SERVE" >&2 || true
  fi
  "${ENGINE[@]}" rm -f "$TRAIN" "$SERVE" >/dev/null 2>&1 || true
  rm -rf "$scratch"
  exit "$rc"
}

png_size() { # "WIDTHxHEIGHT" of a PNG file, or nothing when it is not a PNG
  local sig w h
  sig=$(od -An -tx1 -N8 "$1" | tr -d ' \n')
  [[ $sig == 89504e470d0a1a0a ]] || return 0
  w=$(od -An -tx1 -j16 -N4 "$1" | tr -d ' \n') h=$(od -An -tx1 -j20 -N4 "$1" | tr -d ' \n')
  echo "$((16#$w))x$((16#$h))"
}

install_podman
source docker/engine.sh
engine_detect
scratch=$(mktemp -d)
trap cleanup EXIT
local_base

step "building the CPU images on $BASE"
BASE=$BASE docker/build.sh
for tag in catvae-jax:train catvae-jax:serve; do
  bytes=$("${ENGINE[@]}" image inspect --format '{{.Size}}' "$tag")
  echo "$tag: $((bytes / 1000000)) MB"
done

step "image contents: no torch, test extras, compiler or W&B key; a non-root user"
"${ENGINE[@]}" run --rm -i "${RUN_OPTS[@]}" --entrypoint python catvae-jax:train - <<'PY'
import importlib.util, os, shutil, sys
import catvae_jax
bad = [m for m in ("torch", "kornia", "pytest", "pytest_cov", "ruff", "selenium", "nbclient")
       if importlib.util.find_spec(m)]
bad += [c for c in ("gcc", "cc", "c++", "clang") if shutil.which(c)]
bad += [k for k in os.environ if k.startswith("WANDB_API")]
if os.getuid() == 0:
    bad.append("runs as root")
if not catvae_jax.__file__.startswith("/opt/venv/"):
    bad.append(f"catvae_jax is not installed in /opt/venv: {catvae_jax.__file__}")
sys.exit(f"unexpected in the image: {bad}" if bad else 0)
PY
# The image's HEALTHCHECK command, one word a line after "CMD"; run below with exec (podman has
# no systemd here to time the checks, so the container runs with --no-healthcheck).
mapfile -t check < <("${ENGINE[@]}" image inspect catvae-jax:serve \
  --format '{{range .Config.Healthcheck.Test}}{{println .}}{{end}}')
[[ ${check[0]:-} == CMD && ${check[*]} == */healthz* ]] ||
  die "catvae-jax:serve has no HEALTHCHECK on /healthz (podman needs --format docker)"

step "training a tiny model in catvae-jax:train into a mounted folder"
mkdir "$scratch/runs"
if [[ $(id -u) == 0 ]]; then
  owner=1000 user=()
  chown "$owner:$owner" "$scratch/runs"
else
  owner=$(id -u) user=(--user "$(id -u):$(id -g)")
fi
# No --config: the image's default config (configs/default.py) must resolve. WANDB_MODE from the
# environment must beat the config's default (offline): no wandb/ folder may appear.
"${ENGINE[@]}" run --rm --name "$TRAIN" "${RUN_OPTS[@]}" "${user[@]}" -e WANDB_MODE=disabled \
  -v "$scratch/runs:/runs" catvae-jax:train --workdir /runs/tiny \
  --config.image_size=$SIZE --config.batch_size=8 --config.num_epochs=1 --config.model.z_dim=8 \
  --config.model.widths='(8,16,16,16)' --config.data.num_train=96 \
  --config.data.num_validation=16 --config.data.num_test=16 --config.num_eval_images=4 \
  --config.log_every_steps=4 --config.progress_bar=False
run=$scratch/runs/tiny
for f in config.json metrics.jsonl samples.png reconstructions.png checkpoints; do
  [[ -e $run/$f ]] || die "the run left no $f in the mounted folder"
done
[[ ! -e $run/wandb ]] || die "WANDB_MODE=disabled did not win over the config: $run/wandb exists"
[[ $(stat -c %u "$run/metrics.jsonl") == "$owner" ]] ||
  die "metrics.jsonl belongs to uid $(stat -c %u "$run/metrics.jsonl"), not $owner"
echo "the run is in the mounted folder, its files owned by uid $owner: $(ls "$run" | tr '\n' ' ')"

step "serving the run with catvae-jax:serve (read-only, as uid 4242) on port $PORT"
"${ENGINE[@]}" run -d --name "$SERVE" "${RUN_OPTS[@]}" --no-healthcheck --user 4242:4242 \
  -p "127.0.0.1:$PORT:8080" -v "$run:/model:ro" catvae-jax:serve >/dev/null
for _ in $(seq 300); do
  curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break
  [[ $("${ENGINE[@]}" inspect --format '{{.State.Running}}' "$SERVE") == true ]] ||
    die "the serve container exited"
  sleep 1
done
curl -sf "http://127.0.0.1:$PORT/healthz" || die "/healthz is not ready after 300 s"
echo
"${ENGINE[@]}" exec "$SERVE" "${check[@]:1}" || die "the image's HEALTHCHECK command fails"
curl -sf -o "$scratch/grid.png" "http://127.0.0.1:$PORT/grid.png?n=$N&seed=0" ||
  die "GET /grid.png failed"
got=$(png_size "$scratch/grid.png")
[[ $got == "${GRID_PX}x$GRID_PX" ]] || die "/grid.png is '${got:-not a PNG}', not ${GRID_PX}x$GRID_PX"
echo "/grid.png: a ${got} PNG"
"${ENGINE[@]}" stop -t 10 "$SERVE" >/dev/null
"${ENGINE[@]}" rm "$SERVE" >/dev/null
step "docker-test passed"
