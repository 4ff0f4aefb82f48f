"""Tests for catvae_jax.model.ssim: banded-matmul SSIM equals dm_pix.ssim."""

from __future__ import annotations

from functools import partial

import dm_pix as pix
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from catvae_jax.model.ssim import gaussian_filter_fn, ssim

SHAPES = [(3, 16, 16, 3), (2, 32, 32, 1), (2, 128, 128, 3), (2, 24, 40, 3), (2, 45, 17, 2)]


def _random_pair(shape, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.random(shape).astype(np.float32)
    b = np.clip(a + 0.15 * rng.standard_normal(shape), 0.0, 1.0).astype(np.float32)
    return jnp.asarray(a), jnp.asarray(b)


def _structured_pair(shape):
    """Smooth gradient + disc + checkerboard vs a shifted, darkened copy."""
    n, h, w, c = shape
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    disc = ((yy - 0.5) ** 2 + (xx - 0.5) ** 2 < 0.1).astype(np.float64)
    checker = ((np.arange(h)[:, None] // 2 + np.arange(w)[None, :] // 2) % 2).astype(np.float64)
    base = np.stack([0.4 * yy + 0.3 * disc + 0.3 * checker * (i + 1) / c for i in range(c)], -1)
    a = np.broadcast_to(base, shape) * np.linspace(0.5, 1.0, n)[:, None, None, None]
    b = 0.8 * np.roll(a, 1, axis=2)
    return jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", ["random", "structured"])
def test_equals_pix(shape, kind) -> None:
    a, b = _random_pair(shape) if kind == "random" else _structured_pair(shape)
    got = ssim(a, b)
    want = pix.ssim(a, b)
    assert got.shape == want.shape == (shape[0],)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    got_map = ssim(a, b, return_map=True)
    want_map = pix.ssim(a, b, return_map=True)
    assert got_map.shape == (shape[0], shape[1] - 10, shape[2] - 10, shape[3])
    np.testing.assert_allclose(got_map, want_map, rtol=0, atol=1e-4)


@pytest.mark.parametrize(("filter_size", "filter_sigma"), [(7, 1.0), (10, 2.0), (11, 1.5)])
def test_other_windows_and_unbatched(filter_size: int, filter_sigma: float) -> None:
    a, b = _random_pair((2, 21, 19, 3), seed=2)
    kw = {"filter_size": filter_size, "filter_sigma": filter_sigma, "max_val": 2.0}
    ours, theirs = jax.jit(partial(ssim, **kw)), jax.jit(partial(pix.ssim, **kw))
    np.testing.assert_allclose(ours(a, b), theirs(a, b), rtol=0, atol=1e-5)
    np.testing.assert_allclose(ours(a[0], b[0]), theirs(a[0], b[0]), rtol=0, atol=1e-5)


def test_filter_fn_matches_separable_convolution() -> None:
    z = jax.random.uniform(jax.random.key(0), (2, 20, 14, 3))
    taps = np.exp(-0.5 * ((np.arange(11) - 5) / 1.5) ** 2)
    taps /= taps.sum()
    kernel = np.outer(taps, taps)
    zn = np.asarray(z, np.float64)
    want = np.zeros((2, 10, 4, 3))
    for i in range(10):
        for j in range(4):
            want[:, i, j] = np.einsum("nhwc,hw->nc", zn[:, i : i + 11, j : j + 11], kernel)
    np.testing.assert_allclose(gaussian_filter_fn()(z), want, rtol=0, atol=1e-6)


def test_identical_images_give_one() -> None:
    a, _ = _random_pair((4, 32, 48, 3), seed=3)
    np.testing.assert_allclose(ssim(a, a), np.ones(4), rtol=0, atol=1e-5)
    flat = jnp.full((2, 16, 16, 3), 0.3)
    np.testing.assert_allclose(ssim(flat, flat), np.ones(2), rtol=0, atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 16, 16, 3), (2, 40, 24, 3)])
def test_gradients_finite_and_close_to_pix(shape) -> None:
    a, b = _random_pair(shape, seed=4)
    loss = jax.jit(jax.grad(lambda x: jnp.sum(1.0 - ssim(x, b))))
    loss_pix = jax.jit(jax.grad(lambda x: jnp.sum(1.0 - pix.ssim(x, b))))
    g, g_pix = loss(a), loss_pix(a)
    assert bool(jnp.all(jnp.isfinite(g)))
    np.testing.assert_allclose(g, g_pix, rtol=0, atol=1e-5 * float(jnp.abs(g_pix).max()) + 1e-7)
    g_same = jax.jit(jax.grad(lambda x: jnp.sum(ssim(x, a))))(a)  # at the optimum: finite, ~0
    assert bool(jnp.all(jnp.isfinite(g_same)))
    assert float(jnp.abs(g_same).max()) < 1e-3


@pytest.mark.parametrize("hw", [(8, 8), (10, 64), (64, 5)])
def test_too_small_images_raise(hw) -> None:
    a = jnp.zeros((1, *hw, 3))
    with pytest.raises(ValueError, match=rf"at least 11×11 pixels, got {hw[0]}×{hw[1]}"):
        ssim(a, a)


def test_wrong_rank_raises() -> None:
    with pytest.raises(ValueError, match="NHWC"):
        ssim(jnp.zeros((16, 16)), jnp.zeros((16, 16)))
