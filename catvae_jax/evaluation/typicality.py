"""How far an image is from what a model knows: its bits/dim under the model, placed in the range
of the model's held-out validation images (catvae_jax/bpd_range.py).

`fit_range` measures a model's range: the decoder σ fitted on up to 256 training images (the RMS
pixel error of decode(z ~ q(z|x)), as eval.json's likelihood), then the bits/dim of up to 256
validation images, each from the importance-weighted bound with 8 posterior samples
(catvae_jax/evaluation/likelihood.py; a small K: the verdict needs a stable figure, not a tight
bound). `check` measures new images the same way and judges them against the model's range.
Validation images, not training ones: they are what an unseen image of the training
distribution looks like to the model (training images it has fitted score lower).
"""

from __future__ import annotations

import numpy as np
from etils import epath

from catvae_jax import bpd_range, data, images
from catvae_jax.evaluation import likelihood
from catvae_jax.inference import VaeModel

IW_SAMPLES = 8
MAX_IMAGES = 256
SPLIT = "validation"
SEED = 0
BATCH_SIZE = 64


def bits_per_dim(
    model: VaeModel, x: np.ndarray, sigma: float, seed: int = SEED, batch_size: int = BATCH_SIZE
) -> np.ndarray:
    """Bits/dim [N] of images [N, S, S, 3] (uint8, or floats in [0, 1]) with IW_SAMPLES."""
    u8 = images.to_uint8(x)
    per = likelihood.per_image(
        model, u8, sigma=sigma, iw_samples=IW_SAMPLES, seed=seed, batch_size=batch_size
    )
    return per["bits_per_dim"]


def fit_range(
    model: VaeModel, split: str = SPLIT, max_images: int = MAX_IMAGES
) -> bpd_range.BpdRange:
    """The bits/dim range of up to `max_images` images of `split` under `model` (reads the
    training split for σ; UserError or OSError when the data cannot be read)."""
    train = data.load_split(model.config, "train")[:MAX_IMAGES]
    reference = data.load_split(model.config, split)[:max_images]
    batch_size = min(BATCH_SIZE, len(train), len(reference))  # one shape: one compile
    sigma = likelihood.fit_sigma(model, train, SEED, batch_size)
    values = bits_per_dim(model, reference, sigma, SEED, batch_size)
    return bpd_range.BpdRange.of(
        values,
        sigma=sigma,
        iw_samples=IW_SAMPLES,
        seed=SEED,
        split=split,
        step=model.step,
        params_sha256=model.params_sha256,
    )


def fit_and_save(model: VaeModel, workdir: str | epath.Path) -> bpd_range.BpdRange:
    """`fit_range`, written to WORKDIR/bpd_<step>.json (atomically) and attached to `model`."""
    fitted = fit_range(model)
    bpd_range.save(fitted, bpd_range.path(workdir, model.step))
    model.bpd_range = fitted
    return fitted


def check(model: VaeModel, x: np.ndarray) -> list[bpd_range.Verdict] | None:
    """The verdict on each image [N, S, S, 3] (floats in [0, 1] or uint8), None when the model
    has no stored range."""
    if model.bpd_range is None:
        return None
    values = bits_per_dim(model, x, model.bpd_range.sigma, model.bpd_range.seed)
    return [model.bpd_range.judge(float(v)) for v in values]
