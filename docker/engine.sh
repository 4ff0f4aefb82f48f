# Sourced by docker/build.sh and docker/test.sh: picks a container engine that works here.
#
#   ENGINE      the command, e.g. (docker) or (podman --runtime runc)
#   BUILD_OPTS  options every `build` needs on this machine
#   RUN_OPTS    options every `run` needs on this machine
#
# docker is used when `docker info` succeeds (a client without a daemon does not count), else
# podman with the settings measured in shared/reference/containers.md: runc (crun refuses
# hybrid cgroups), host networking for builds (no other route out), the host's CA bundle
# mounted into build steps (a TLS-intercepting proxy), explicit rlimits no higher than ours
# (a container may not raise them here), and --format docker (OCI images drop HEALTHCHECK).
# CONTAINER_ENGINE=docker|podman forces one.

CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}

engine_detect() {
  local want=${CONTAINER_ENGINE:-}
  ENGINE=() BUILD_OPTS=() RUN_OPTS=()
  if [[ $want != podman ]] && command -v docker >/dev/null && docker info >/dev/null 2>&1; then
    ENGINE=(docker)
  elif [[ $want != docker ]] && command -v podman >/dev/null; then
    ENGINE=(podman)
    if command -v runc >/dev/null; then ENGINE+=(--runtime runc); fi
    local nofile nproc
    nofile=$(ulimit -n) nproc=$(ulimit -u)
    [[ $nproc == unlimited || $nproc -gt 32768 ]] && nproc=32768
    [[ $nofile == unlimited ]] && nofile=1048576
    local limits=(--ulimit "nofile=$nofile:$nofile" --ulimit "nproc=$nproc:$nproc")
    BUILD_OPTS=(--format docker --network=host "${limits[@]}")
    if [[ -r $CA_BUNDLE ]]; then BUILD_OPTS+=(-v "$CA_BUNDLE:/etc/ssl/certs/ca-certificates.crt:ro"); fi
    RUN_OPTS=("${limits[@]}")
  else
    echo "error: no working container engine (docker info fails and podman is not installed);" \
      "make docker-test installs podman" >&2
    return 2
  fi
}
