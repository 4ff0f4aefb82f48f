"""Loss terms: reductions, warm-up and edge cases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from catvae_jax.config import get_config
from catvae_jax.evaluation import sample_quality
from catvae_jax.model import losses


def test_kl_is_zero_at_the_prior_and_summed_over_latents():
    mu = jnp.zeros((3, 5))
    assert np.allclose(losses.kl_divergence(mu, jnp.zeros((3, 5))), 0.0)
    kl = losses.kl_divergence(jnp.ones((2, 4)), jnp.zeros((2, 4)))
    assert np.allclose(kl, 0.5 * 4)  # 0.5 * mu² per dimension, summed over 4


def test_reconstruction_is_zero_for_identical_images_and_scales_with_pixels():
    cfg = get_config().loss
    x = jax.random.uniform(jax.random.key(0), (2, 16, 16, 3))
    recon, s = losses.reconstruction(x, x, cfg)
    assert np.allclose(recon, 0.0, atol=1e-3) and np.allclose(s, 1.0, atol=1e-5)
    y = jnp.clip(x + 0.2, 0, 1)
    recon, s = losses.reconstruction(x, y, cfg)
    assert np.allclose(recon, (1 - s) * 16 * 16 * 3, rtol=1e-5)


def test_mse_and_l1_weights_add_pixel_sums():
    cfg = get_config().loss
    cfg.ssim_weight, cfg.mse_weight, cfg.l1_weight = 0.0, 1.0, 2.0
    x = jnp.zeros((1, 16, 16, 3))
    y = jnp.full((1, 16, 16, 3), 0.5)
    recon, _ = losses.reconstruction(x, y, cfg)
    assert np.allclose(recon, 16 * 16 * 3 * (0.25 + 2 * 0.5))


def test_kl_warmup_is_linear_and_off_at_zero_steps():
    def beta(step, warmup):
        return float(losses.warmed_up_beta(jnp.int32(step), 2.0, jnp.int32(warmup)))

    assert [beta(s, 100) for s in (0, 50, 500)] == pytest.approx([0.0, 1.0, 2.0])
    assert beta(0, 0) == 2.0


def test_images_smaller_than_the_ssim_window_are_refused():
    cfg = get_config().loss
    x = jnp.zeros((1, 8, 8, 3))
    with pytest.raises(ValueError, match="11"):
        losses.reconstruction(x, x, cfg)


def test_lpips_term_is_zero_for_identical_images_and_adds_its_weighted_distance():
    cfg = get_config().loss
    x = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3))
    y = jnp.clip(x + 0.3 * jax.random.normal(jax.random.key(1), x.shape), 0, 1)
    d = losses.lpips_distance(x, y)
    assert d.shape == (2,) and np.all(np.asarray(d) > 0.01)
    assert np.allclose(losses.lpips_distance(x, x), 0.0, atol=1e-6)
    base, _ = losses.reconstruction(x, y, cfg)
    cfg.lpips_weight = 2.5
    with_lpips, _ = losses.reconstruction(x, y, cfg)
    assert np.allclose(with_lpips - base, 2.5 * d * 32 * 32 * 3, rtol=1e-4)


def test_lpips_at_128_is_the_sample_metrics_distance_and_its_gradient_reaches_only_x_hat():
    x = jax.random.uniform(jax.random.key(2), (2, 32, 32, 3))
    y = jax.random.uniform(jax.random.key(3), (2, 32, 32, 3))
    metric = sample_quality.FeatureNet(batch_size=2).lpips(np.asarray(x), np.asarray(y))
    assert np.allclose(losses.lpips_distance(x, y, 128), metric, rtol=1e-4)
    gx, gy = jax.grad(lambda a, b: losses.lpips_distance(a, b).sum(), argnums=(0, 1))(x, y)
    assert float(jnp.abs(gx).max()) == 0.0 and float(jnp.abs(gy).max()) > 0.0
