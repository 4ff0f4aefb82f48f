"""Likelihood evaluation of a trained VAE on a data split (eval.json): likelihood bounds and the
similarity of its reconstructions. (`catvae_jax.metrics` is this module's old name.)

The training loss is SSIM-based, which is not a normalised likelihood, so the likelihood numbers
need a decoder distribution of their own. They use a **discretized Gaussian** over the 256
levels of each 8-bit pixel value: p(x | z) = Π_pixels [Φ((x + ½Δ − x̂) / σ) − Φ((x − ½Δ − x̂) / σ)],
Δ = 1/255, with the bins of 0 and 255 extended to ∓∞, x̂ = decode(z), and one σ for all pixels
fitted as the RMS pixel error of decode(z ~ q(z|x)) on training images (the σ that maximises
the ELBO of a continuous Gaussian). It is a proper probability mass on 8-bit images, so bits per
dimension are true code lengths (≥ 0).

Per image, in nats (averaged over the split):
- `neg_elbo_nats` = −E_q[log p(x|z)] + KL(q(z|x) ‖ N(0, I)): the expectation is the mean over the
  same K samples the importance-weighted bound uses, the KL is analytic.
- `iw_nll_nats` = −log (1/K) Σ_k p(x, z_k) / q(z_k|x), z_k ~ q(z|x) (Burda et al. 2016); it is
  ≤ the sample version of the negative ELBO and approaches −log p(x) as K grows.
- `bits_per_dim` = iw_nll_nats / (H·W·C · ln 2).
- `kl_per_dim`: the analytic KL of each latent dimension; `active_units`: dimensions whose
  posterior mean varies over the split, Var_x(mu_d) > 0.01 (Burda et al.).
- `ssim`, `psnr` (dB), `ms_ssim`: of the posterior-mean reconstruction decode(mu(x)).
Everything is deterministic for a given seed and batch size.
"""

from __future__ import annotations

import functools
import math

import dm_pix as pix
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.scipy.special import log_ndtr

from catvae_jax import data
from catvae_jax.errors import UserError
from catvae_jax.images import pad_batch, to_unit
from catvae_jax.inference import VaeModel
from catvae_jax.model.ssim import ms_ssim, ms_ssim_scales, ssim

ACTIVE_UNIT_THRESHOLD = 0.01
SIGMA_FIT_IMAGES = 1024
MAX_IW_SAMPLES = 10_000
KEYS = (
    "split",
    "num_examples",
    "checkpoint_step",
    "neg_elbo_nats",
    "bits_per_dim",
    "iw_nll_nats",
    "iw_samples",
    "ssim",
    "psnr",
    "ms_ssim",
    "ms_ssim_scales",
    "kl_per_dim",
    "active_units",
    "likelihood",
)


def _log1mexp(d: jax.Array) -> jax.Array:
    """log(1 − exp(d)) for d ≤ 0, accurate on both sides of −ln 2."""
    d = jnp.minimum(d, -1e-30)
    return jnp.where(d > -math.log(2.0), jnp.log(-jnp.expm1(d)), jnp.log1p(-jnp.exp(d)))


def discretized_gaussian_log_prob(x_u8: jax.Array, mean: jax.Array, sigma: jax.Array) -> jax.Array:
    """log p(x) [B] (nats, summed over pixels) of uint8 images [B, H, W, C] under a Gaussian of
    mean `mean` (in [0, 1], same shape) and scale `sigma`, discretized to the 256 bins."""
    x = to_unit(x_u8)
    half = 0.5 / 255.0
    lo = jnp.where(x_u8 == 0, -jnp.inf, (x - half - mean) / sigma)
    hi = jnp.where(x_u8 == 255, jnp.inf, (x + half - mean) / sigma)
    flip = (lo + hi) > 0  # keep both ends in the lower tail, where log_ndtr is accurate
    a, b = jnp.where(flip, -hi, lo), jnp.where(flip, -lo, hi)
    log_b = log_ndtr(b)
    log_p = log_b + _log1mexp(log_ndtr(a) - log_b)
    return jnp.sum(log_p.reshape(x.shape[0], -1), axis=-1)


def _std_normal_log_pdf(z: jax.Array) -> jax.Array:
    return -0.5 * jnp.sum(z * z + math.log(2.0 * math.pi), axis=-1)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _batch_metrics(graphdef, params, x_u8, key, sigma, num_samples) -> dict:
    """Per-image metrics of a uint8 batch [B, S, S, 3] with `num_samples` posterior samples.

    `num_samples` is traced (a while loop with an online log-sum-exp), so one compiled program
    serves every K and also the σ fit (K = 1, `sq_err` of the sample's reconstruction).
    """
    model = nnx.merge(graphdef, params)
    x = to_unit(x_u8)
    mu, logvar = model.encode(x)
    std = jnp.exp(0.5 * logvar)
    recon = model.decode(mu)

    def one_sample(k, carry):
        sum_log_px, max_log_w, sum_w, sq_err = carry
        eps = jax.random.normal(jax.random.fold_in(key, k), mu.shape, mu.dtype)
        z = mu + std * eps
        x_hat = model.decode(z)
        log_px = discretized_gaussian_log_prob(x_u8, x_hat, sigma)
        log_qz = _std_normal_log_pdf(eps) - jnp.sum(0.5 * logvar, axis=-1)
        log_w = log_px + _std_normal_log_pdf(z) - log_qz
        new_max = jnp.maximum(max_log_w, log_w)
        sum_w = sum_w * jnp.exp(max_log_w - new_max) + jnp.exp(log_w - new_max)
        sq = jnp.sum(((x - x_hat) ** 2).reshape(x.shape[0], -1), axis=-1)
        return sum_log_px + log_px, new_max, sum_w, sq_err + sq

    b = x.shape[0]
    zeros = jnp.zeros((b,), jnp.float32)
    init = (zeros, jnp.full((b,), -jnp.inf, jnp.float32), zeros, zeros)
    sum_log_px, max_log_w, sum_w, sq_err = jax.lax.fori_loop(0, num_samples, one_sample, init)
    k = num_samples.astype(jnp.float32)
    kl_dims = 0.5 * (mu * mu + jnp.exp(logvar) - 1.0 - logvar)
    return {
        "mu": mu,
        "kl_dims": kl_dims,
        "neg_elbo": -sum_log_px / k + jnp.sum(kl_dims, axis=-1),
        "iw_nll": -(max_log_w + jnp.log(sum_w) - jnp.log(k)),
        "sq_err": sq_err / k,
        "ssim": ssim(x, recon),
        "psnr": jnp.minimum(pix.psnr(x, recon), 100.0),  # identical images: 100 dB, not inf
        "ms_ssim": ms_ssim(x, recon),
    }


def _run(model, images: np.ndarray, key, sigma: float, num_samples: int, batch_size: int):
    """Per-image metrics [N, ...] of uint8 `images`, in zero-padded batches of `batch_size`."""
    parts: dict[str, list[np.ndarray]] = {}
    for i, batch, real in _batches(images, batch_size):
        out = _batch_metrics(
            model.graphdef,
            model.params,
            batch,
            jax.random.fold_in(key, i),
            jnp.float32(sigma),
            jnp.int32(num_samples),
        )
        for name, value in jax.device_get(out).items():
            parts.setdefault(name, []).append(np.asarray(value, np.float64)[:real])
    return {name: np.concatenate(values) for name, values in parts.items()}


def _batches(images: np.ndarray, batch_size: int):
    """Yields (index, uint8 batch [batch_size, ...], number of real images), zero-padded."""
    for i, start in enumerate(range(0, len(images), batch_size)):
        chunk = images[start : start + batch_size]
        yield i, pad_batch(chunk, batch_size), len(chunk)


def fit_sigma(model: VaeModel, images: np.ndarray, seed: int = 0, batch_size: int = 64) -> float:
    """The decoder σ: RMS pixel error of decode(z ~ q(z|x)) over uint8 `images`, at least 1e-3."""
    key = jax.random.fold_in(jax.random.key(seed), 0x51)
    per = _run(model, images, key, 1.0, 1, min(batch_size, len(images)))
    return max(1e-3, math.sqrt(float(np.sum(per["sq_err"])) / images.size))


def likelihood_sentence(sigma: float, num_images: int) -> str:
    """The `likelihood` entry of eval.json: which decoder distribution the ELBO uses."""
    return (
        "discretized Gaussian over the 256 levels of each 8-bit pixel value (bins of 0 and 255 "
        f"open-ended), mean = decoder output, one sigma = {sigma:.4g} for all pixels fitted as "
        f"the RMS error of decode(z ~ q(z|x)) on {num_images} training images; the SSIM "
        "training loss itself is not a normalised likelihood"
    )


def check_args(iw_samples: int, batch_size: int, max_examples: int | None = None) -> None:
    """Raises UserError unless 1 ≤ iw_samples ≤ MAX_IW_SAMPLES, batch_size > 0 and
    max_examples is None or positive."""
    if not 1 <= iw_samples <= MAX_IW_SAMPLES:
        raise UserError(f"iw_samples must be between 1 and {MAX_IW_SAMPLES}, got {iw_samples}")
    if batch_size <= 0:
        raise UserError(f"batch_size must be positive, got {batch_size}")
    if max_examples is not None and max_examples <= 0:
        raise UserError(f"max_examples must be positive, got {max_examples}")


def per_image(
    model: VaeModel,
    images: np.ndarray,
    *,
    sigma: float,
    iw_samples: int = 100,
    seed: int = 0,
    batch_size: int = 64,
) -> dict[str, np.ndarray]:
    """The per-image metrics [N, ...] of uint8 images [N, S, S, 3] that `evaluate_images`
    averages (mu, kl_dims, neg_elbo, iw_nll, ssim, psnr, ms_ssim), plus `bits_per_dim` [N]."""
    check_args(iw_samples, batch_size)
    if len(images) == 0:
        raise UserError("no images to evaluate")
    key = jax.random.fold_in(jax.random.key(seed), 0xE7A1)
    per = _run(model, images, key, sigma, iw_samples, min(batch_size, len(images)))
    per["bits_per_dim"] = per["iw_nll"] / (int(np.prod(images.shape[1:])) * math.log(2.0))
    return per


def evaluate_images(
    model: VaeModel,
    images: np.ndarray,
    *,
    sigma: float,
    iw_samples: int = 100,
    seed: int = 0,
    batch_size: int = 64,
) -> dict:
    """Metrics (see the module docstring) of `model` on uint8 images [N, S, S, 3], without the
    `split`, `checkpoint_step` and `likelihood` entries."""
    per = per_image(
        model, images, sigma=sigma, iw_samples=iw_samples, seed=seed, batch_size=batch_size
    )
    return {
        "num_examples": len(images),
        "neg_elbo_nats": float(np.mean(per["neg_elbo"])),
        "bits_per_dim": float(np.mean(per["bits_per_dim"])),
        "iw_nll_nats": float(np.mean(per["iw_nll"])),
        "iw_samples": int(iw_samples),
        "ssim": float(np.mean(per["ssim"])),
        "psnr": float(np.mean(per["psnr"])),
        "ms_ssim": float(np.mean(per["ms_ssim"])),
        "ms_ssim_scales": ms_ssim_scales(min(images.shape[1], images.shape[2])),
        "kl_per_dim": [float(v) for v in np.mean(per["kl_dims"], axis=0)],
        "active_units": int(np.sum(np.var(per["mu"], axis=0) > ACTIVE_UNIT_THRESHOLD)),
    }


def evaluate(
    model: VaeModel,
    split: str = "test",
    *,
    iw_samples: int = 100,
    seed: int = 0,
    batch_size: int = 64,
    max_examples: int | None = None,
) -> dict:
    """All of eval.json for `model` (a VaeModel) on `split` of its configured data: a flat dict
    with exactly the keys in KEYS. σ is fitted on up to 1024 training images first."""
    check_args(iw_samples, batch_size, max_examples)
    images = data.load_split(model.config, split)
    if max_examples is not None:
        images = images[:max_examples]
    train = data.load_split(model.config, "train")[:SIGMA_FIT_IMAGES]
    batch_size = max(1, min(batch_size, len(train), len(images)))  # one shape: one compile
    sigma = fit_sigma(model, train, seed, batch_size)
    result = evaluate_images(
        model, images, sigma=sigma, iw_samples=iw_samples, seed=seed, batch_size=batch_size
    )
    result.update(
        split=split,
        checkpoint_step=None if model.step is None else int(model.step),
        likelihood=likelihood_sentence(sigma, len(train)),
    )
    return {k: result[k] for k in KEYS}


def format_table(result: dict) -> str:
    """A two-column text table of an eval.json dict (the KL per dimension summarised)."""
    kl = result["kl_per_dim"]
    rows = [
        ("split", f"{result['split']} ({result['num_examples']} images)"),
        ("checkpoint step", str(result["checkpoint_step"])),
        ("-ELBO (nats/image)", f"{result['neg_elbo_nats']:.2f}"),
        (f"IW NLL, K={result['iw_samples']} (nats/image)", f"{result['iw_nll_nats']:.2f}"),
        ("bits/dim (from IW NLL)", f"{result['bits_per_dim']:.4f}"),
        ("SSIM", f"{result['ssim']:.4f}"),
        ("PSNR (dB)", f"{result['psnr']:.2f}"),
        (f"MS-SSIM ({result['ms_ssim_scales']} scales)", f"{result['ms_ssim']:.4f}"),
        ("KL (nats/image)", f"{sum(kl):.2f} over {len(kl)} dims, max {max(kl):.2f}"),
        ("active units", f"{result['active_units']} / {len(kl)}"),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    return "\n".join([*lines, f"likelihood: {result['likelihood']}"])
