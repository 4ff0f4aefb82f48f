"""Loss terms of the VAE, as pure functions of NHWC images in [0, 1].

Reductions, per image unless said otherwise:
- `reconstruction`: ssim_weight·(1 − SSIM)·H·W·C + mse_weight·Σ(x − x̂)² + l1_weight·Σ|x − x̂|
  + lpips_weight·LPIPS(x, x̂)·H·W·C, the sums over all H·W·C pixel values. Scaling (1 − SSIM) by
  H·W·C keeps the original's balance between a pixel-summed reconstruction term and a KL summed
  over latent dimensions; LPIPS (AlexNet, catvae_jax/model/perceptual.py) is scaled the same way, on
  the images as they are or on `lpips_size`² resizes (128: what the sample metrics see).
- `kl_divergence`: KL(N(mu, exp(logvar)) ‖ N(0, I)) summed over latent dimensions, in nats.
- `vae_loss`: the batch mean of reconstruction + β_t·KL, with β_t rising linearly from 0 to β over
  `kl_warmup_steps` train steps.
- The adversarial term (`adversarial_weight` > 0; the two-player step is in
  catvae_jax/train/steps.py): the decoder minimises `generator_loss` (−mean logit of its
  images, hinge GAN), scaled by `adaptive_weight`; the discriminator minimises
  `discriminator_loss` (the hinge loss on real and decoded images).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from catvae_jax.model import networks, perceptual
from catvae_jax.model.ssim import ssim


def kl_divergence(mu: jax.Array, logvar: jax.Array) -> jax.Array:
    """[B, z] Gaussian posteriors → [B] KL to the standard normal, summed over z (nats)."""
    return -0.5 * jnp.sum(1.0 + logvar - mu**2 - jnp.exp(logvar), axis=-1)


def reconstruction(
    x: jax.Array,
    x_hat: jax.Array,
    loss_cfg: ml_collections.ConfigDict,
    metric_images: int = 0,
    kernels: str = "cpu",
    dtype: jnp.dtype | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Per-image reconstruction term [B] (see module docstring) and per-image SSIM [B].

    Without an SSIM term in the loss, SSIM is only a metric: it gets no backward pass, and with
    `metric_images` > 0 it is measured on the first `metric_images` images only ([k] SSIMs).
    `kernels` picks the SSIM blur (`ssim`), `dtype` the LPIPS network's activations; the
    reductions are float32.
    """
    per_image = lambda v: jnp.sum(v.reshape(v.shape[0], -1), axis=-1)
    if loss_cfg.ssim_weight:
        s = ssim(x, x_hat, kernels=kernels)
        total = loss_cfg.ssim_weight * (1.0 - s) * x[0].size
    else:
        k = metric_images or x.shape[0]
        s = ssim(x[:k], jax.lax.stop_gradient(x_hat[:k]), kernels=kernels)
        total = jnp.zeros(x.shape[:1], x.dtype)
    if loss_cfg.mse_weight:
        total = total + loss_cfg.mse_weight * per_image((x - x_hat) ** 2)
    if loss_cfg.l1_weight:
        total = total + loss_cfg.l1_weight * per_image(jnp.abs(x - x_hat))
    if loss_cfg.lpips_weight:
        d = lpips_distance(x, x_hat, loss_cfg.lpips_size, dtype)
        total = total + loss_cfg.lpips_weight * d * x[0].size
    return total, s


def lpips_distance(
    x: jax.Array, x_hat: jax.Array, size: int = 0, dtype: jnp.dtype | None = None
) -> jax.Array:
    """LPIPS-AlexNet [B] between images [B, H, W, 3] in [0, 1], on bilinear size² resizes
    (0: as they are); the target's features get no gradient. `dtype`: AlexNet's activations."""
    if size and size != x.shape[1]:
        x, x_hat = perceptual.resize(x, size), perceptual.resize(x_hat, size)
    weights = perceptual.shipped_weights()
    return perceptual.lpips(weights, jax.lax.stop_gradient(x), x_hat, dtype=dtype)


def warmed_up_beta(step: jax.Array, beta: float, warmup_steps: jax.Array) -> jax.Array:
    """β at train step `step`: a linear warm-up from 0 to β over `warmup_steps`, β from the
    start when it is ≤ 0 (int32 [] arrays: the train step takes the warm-up as an argument, so
    runs of different warm-ups share its program)."""
    ramp = jnp.minimum(1.0, step.astype(jnp.float32) / jnp.maximum(warmup_steps, 1))
    return (beta * jnp.where(warmup_steps > 0, ramp, 1.0)).astype(jnp.float32)


def posterior_sample(
    model: nnx.Module, x: jax.Array, key: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(x̂ = decode(z), mu, logvar) with z ~ N(mu, exp(logvar)) drawn with `key`; a model with
    its own `sample_posterior` (hvae: the local group drawn given the global draw) draws so."""
    if hasattr(model, "sample_posterior"):
        return model.sample_posterior(x, key)
    mu, logvar = model.encode(x)
    return model.decode(networks.gaussian_draw(mu, logvar, key)), mu, logvar


def generator_loss(fake_logits: jax.Array) -> jax.Array:
    """The decoder's hinge-GAN loss: −mean of the discriminator's logits on its images."""
    return -jnp.mean(fake_logits)


def discriminator_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
    """The hinge loss mean(relu(1 − D(x))) + mean(relu(1 + D(x̂))) (0 for a perfect margin)."""
    return jnp.mean(jax.nn.relu(1.0 - real_logits)) + jnp.mean(jax.nn.relu(1.0 + fake_logits))


def adaptive_weight(recon_grad: jax.Array, adv_grad: jax.Array, max_weight: float) -> jax.Array:
    """VQGAN's λ = ‖∇_W recon‖ / (‖∇_W adversarial‖ + 1e-4), clipped to [0, max_weight], of the
    two terms' gradients at the decoder's last layer W; no gradient flows through it."""
    ratio = jnp.linalg.norm(recon_grad) / (jnp.linalg.norm(adv_grad) + 1e-4)
    return jax.lax.stop_gradient(jnp.clip(ratio, 0.0, max_weight))


def vae_loss(
    model: nnx.Module,
    x: jax.Array,
    key: jax.Array,
    beta: jax.Array,
    loss_cfg: ml_collections.ConfigDict,
    metric_images: int = 0,
    kernels: str = "cpu",
    dtype: jnp.dtype | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """One ELBO-style loss evaluation of `model` on a batch x [B, H, W, 3] in [0, 1].

    Returns (mean loss, per-image metrics dict with `loss`, `recon`, `kl`, `ssim` each [B]; `ssim`
    is [metric_images] when `metric_images` > 0 and SSIM is not in the loss). `kernels` and
    `dtype`: as for `reconstruction` (the model carries its own).
    """
    x_hat, mu, logvar = posterior_sample(model, x, key)
    recon, s = reconstruction(x, x_hat, loss_cfg, metric_images, kernels, dtype)
    kl = kl_divergence(mu, logvar)
    loss = recon + beta * kl
    return jnp.mean(loss), {"loss": loss, "recon": recon, "kl": kl, "ssim": s}
