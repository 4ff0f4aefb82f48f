"""How much each latent dimension is used: the KL of its posterior to N(0, 1), per dimension,
averaged over validation images (issue 30 item 4: free bits act only on dimensions whose KL
falls below their threshold, typically 0.1–1 nat).

    python benchmarks/kl_per_dim.py MODEL [MODEL ...] [--images 256]

MODEL: a workdir, a model file or pretrained:NAME. Prints one JSON line per model: z_dim, the
total KL (nats), min / median / max per dimension and how many dimensions carry under 0.05,
0.1, 0.5 and 1 nat.
"""

from __future__ import annotations

import json

import numpy as np
from absl import app, flags

import catvae_jax
from catvae_jax import data
from catvae_jax.model import losses

_IMAGES = flags.DEFINE_integer("images", 256, "Validation images averaged over.")


def kl_per_dimension(model: catvae_jax.VaeModel, images: np.ndarray) -> np.ndarray:
    """[z_dim] mean KL (nats) of the posteriors of uint8 images [N, S, S, 3] to N(0, 1)."""
    mu, logvar = model.encode(images.astype(np.float32) / 255.0)
    per_dim = losses.kl_divergence(mu[..., None], logvar[..., None])  # the loss's KL, per z
    return np.mean(np.asarray(per_dim), axis=0)


def summary(kl: np.ndarray) -> dict:
    """The JSON line of one model's per-dimension KL."""
    below = {f"dims_under_{t:g}": int(np.sum(kl < t)) for t in (0.05, 0.1, 0.5, 1.0)}
    return {"z_dim": kl.size, "kl_total": round(float(kl.sum()), 2),
            "kl_min": round(float(kl.min()), 3), "kl_median": round(float(np.median(kl)), 3),
            "kl_max": round(float(kl.max()), 3), **below}  # fmt: skip


def main(argv: list[str]) -> None:
    for name in argv[1:]:
        model = catvae_jax.load(name)
        images = data.load_split(model.config, "validation")[: _IMAGES.value]
        print(json.dumps({"model": name, **summary(kl_per_dimension(model, images))}), flush=True)


if __name__ == "__main__":
    app.run(main)
