"""catvae_jax.model.layers: fast transposed convolution vs reference vs a numpy scatter loop."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from catvae_jax.model.layers import (
    ConvTranspose,
    conv_transpose,
    conv_transpose_reference,
    upsample2,
    upsample2_conv,
)

CASES = [(5, 2), (6, 2), (2, 2), (4, 2), (3, 1), (4, 3), (2, 3)]
CHANNELS = [(1, 1), (3, 4), (8, 5)]


def scatter_numpy(x: np.ndarray, kernel: np.ndarray, stride: int) -> np.ndarray:
    """The definition: y[n, s*h + i, s*w + j, o] += x[n, h, w, c] * kernel[i, j, c, o]."""
    n, h, w, _ = x.shape
    kh, kw, _, c_out = kernel.shape
    y = np.zeros((n, (h - 1) * stride + kh, (w - 1) * stride + kw, c_out), np.float64)
    for hh in range(h):
        for ww in range(w):
            for i in range(kh):
                for j in range(kw):
                    y[:, stride * hh + i, stride * ww + j, :] += x[:, hh, ww, :] @ kernel[i, j]
    return y


def _inputs(seed: int, k: int, c_in: int, c_out: int, hw=(5, 4)):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, *hw, c_in)).astype(np.float32)
    kernel = rng.standard_normal((k, k, c_in, c_out)).astype(np.float32)
    return x, kernel


@pytest.mark.parametrize(("c_in", "c_out"), CHANNELS)
@pytest.mark.parametrize(("k", "s"), CASES)
def test_forward_matches_scatter(k: int, s: int, c_in: int, c_out: int) -> None:
    x, kernel = _inputs(k * 10 + s, k, c_in, c_out)
    want = scatter_numpy(x.astype(np.float64), kernel.astype(np.float64), s)
    fast = np.asarray(conv_transpose(jnp.asarray(x), jnp.asarray(kernel), s))
    ref = np.asarray(conv_transpose_reference(jnp.asarray(x), jnp.asarray(kernel), s))
    assert fast.shape == want.shape == ref.shape
    np.testing.assert_allclose(fast, want, rtol=0, atol=1e-5)
    np.testing.assert_allclose(ref, want, rtol=0, atol=1e-5)
    np.testing.assert_allclose(fast, ref, rtol=0, atol=1e-5)


def test_rectangular_stride_and_kernel() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 4, 3, 2)).astype(np.float32)
    kernel = rng.standard_normal((5, 3, 2, 3)).astype(np.float32)
    fast = conv_transpose(jnp.asarray(x), jnp.asarray(kernel), (2, 3))
    ref = conv_transpose_reference(jnp.asarray(x), jnp.asarray(kernel), (2, 3))
    assert fast.shape == (1, 11, 9, 3)
    np.testing.assert_allclose(fast, ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize(("c_in", "c_out"), [(3, 4), (8, 5)])
@pytest.mark.parametrize(("k", "s"), CASES)
def test_gradients_match_reference(k: int, s: int, c_in: int, c_out: int) -> None:
    x, kernel = _inputs(k + s, k, c_in, c_out, hw=(6, 5))
    cot = np.random.default_rng(7).standard_normal(conv_transpose_reference(x, kernel, s).shape)
    cot = jnp.asarray(cot, jnp.float32)

    def loss(fn):
        return lambda x, kern: jnp.sum(fn(x, kern, s) * cot)

    g_fast = jax.jit(jax.grad(loss(conv_transpose), argnums=(0, 1)))(x, kernel)
    g_ref = jax.jit(jax.grad(loss(conv_transpose_reference), argnums=(0, 1)))(x, kernel)
    for a, b in zip(g_fast, g_ref, strict=True):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)


@pytest.mark.parametrize(("k", "s"), [(5, 2), (2, 3)])
def test_one_pixel_input_dense_path(k: int, s: int) -> None:
    x, kernel = _inputs(5, k, 6, 3, hw=(1, 1))
    want = scatter_numpy(x.astype(np.float64), kernel.astype(np.float64), s)
    np.testing.assert_allclose(conv_transpose(x, kernel, s), want, rtol=0, atol=1e-5)

    def grads(fn):
        return jax.grad(lambda x, kern: jnp.sum(fn(x, kern, s) ** 3), argnums=(0, 1))(x, kernel)

    for a, b in zip(grads(conv_transpose), grads(conv_transpose_reference), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


def test_second_order_gradient_runs() -> None:
    x, kernel = _inputs(3, 6, 2, 3)

    def gnorm(fn):
        g = jax.grad(lambda kern: jnp.sum(fn(x, kern, 2) ** 2))
        return jax.grad(lambda kern: jnp.sum(g(kern) ** 2))(kernel)

    np.testing.assert_allclose(
        gnorm(conv_transpose), gnorm(conv_transpose_reference), rtol=1e-4, atol=1e-3
    )


def test_module_decoder_chain_shapes() -> None:
    """The original decoder: 1 → 5 → 13 → 30 → 64 → 128 pixels."""
    spec = [(1024, 128, 5, 2), (128, 64, 5, 2), (64, 32, 6, 2), (32, 16, 6, 2), (16, 3, 2, 2)]
    rngs = nnx.Rngs(0)
    layers = [ConvTranspose(i, o, k, s, rngs=rngs) for i, o, k, s in spec]
    h = jax.ShapeDtypeStruct((2, 1, 1, 1024), jnp.float32)
    sizes = []
    for layer in layers:
        h = jax.eval_shape(layer, h)
        sizes.append(h.shape[1:])
    assert sizes == [(5, 5, 128), (13, 13, 64), (30, 30, 32), (64, 64, 16), (128, 128, 3)]


def test_module_init_and_fast_equals_reference() -> None:
    fast = ConvTranspose(6, 4, 5, 2, rngs=nnx.Rngs(3))
    slow = ConvTranspose(6, 4, 5, 2, rngs=nnx.Rngs(3), use_fast=False)
    assert fast.kernel[...].shape == (5, 5, 6, 4)
    assert fast.bias[...].shape == (4,)
    bound = 1.0 / np.sqrt(4 * 5 * 5)  # PyTorch: fan_in = out * k * k for ConvTranspose2d
    kernel = np.asarray(fast.kernel[...])
    assert np.abs(kernel).max() <= bound
    assert np.abs(kernel).max() > 0.9 * bound
    assert np.abs(np.asarray(fast.bias[...])).max() <= bound
    x = jax.random.normal(jax.random.key(0), (3, 7, 6, 6))
    np.testing.assert_allclose(fast(x), slow(x), rtol=0, atol=1e-5)


def test_jit_and_grad_through_module() -> None:
    model = ConvTranspose(3, 2, 6, 2, rngs=nnx.Rngs(0))
    x = jnp.ones((2, 4, 4, 3))

    @nnx.jit
    def step(m, x):
        return nnx.grad(lambda m: jnp.mean(m(x) ** 2))(m)

    grads = step(model, x)
    assert grads.kernel[...].shape == (6, 6, 3, 2)
    assert bool(jnp.all(jnp.isfinite(grads.kernel[...])))


@pytest.mark.parametrize(("k", "s"), [(5, 2), (6, 2), (2, 2), (4, 3)])
def test_matches_torch_conv_transpose2d(k: int, s: int) -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(k * s)
    x_nchw = rng.standard_normal((2, 3, 5, 4)).astype(np.float32)
    weight = rng.standard_normal((3, 4, k, k)).astype(np.float32)  # torch: (c_in, c_out, kh, kw)
    bias = rng.standard_normal((4,)).astype(np.float32)
    want = torch.nn.functional.conv_transpose2d(
        torch.from_numpy(x_nchw), torch.from_numpy(weight), torch.from_numpy(bias), stride=s
    ).numpy()
    x = jnp.asarray(x_nchw.transpose(0, 2, 3, 1))
    kernel = jnp.asarray(weight.transpose(2, 3, 0, 1))
    for fn in (conv_transpose, conv_transpose_reference):
        got = np.asarray(fn(x, kernel, s) + bias).transpose(0, 3, 1, 2)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def _upsample_then_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return jax.lax.conv_general_dilated(
        upsample2(x), kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


@pytest.mark.parametrize(("k", "h", "w"), [(3, 5, 4), (3, 1, 1), (1, 3, 2), (5, 4, 6)])
def test_upsample2_conv_equals_upsample_then_conv(k: int, h: int, w: int) -> None:
    """The small-grid sub-pixel form is the same function as upsampling, then convolving:
    values and both gradients (odd, even and 1-pixel inputs; 1×1, 3×3 and 5×5 kernels)."""
    kx, kk, kg = jax.random.split(jax.random.key(k * 100 + h * 10 + w), 3)
    x = jax.random.normal(kx, (2, h, w, 3))
    kernel = jax.random.normal(kk, (k, k, 3, 4))
    y = upsample2_conv(x, kernel)
    ref = _upsample_then_conv(x, kernel)
    assert y.shape == (2, 2 * h, 2 * w, 4)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
    g = jax.random.normal(kg, y.shape)
    grads = jax.grad(lambda a, b: jnp.sum(upsample2_conv(a, b) * g), argnums=(0, 1))(x, kernel)
    refs = jax.grad(lambda a, b: jnp.sum(_upsample_then_conv(a, b) * g), argnums=(0, 1))(x, kernel)
    for got, want in zip(grads, refs, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_upsample2_conv_refuses_even_kernels() -> None:
    with pytest.raises(ValueError, match="odd square kernel"):
        upsample2_conv(jnp.zeros((1, 2, 2, 1)), jnp.zeros((2, 2, 1, 1)))


def test_upsample2_is_nearest():
    x = jnp.arange(4.0).reshape(1, 2, 2, 1)
    y = upsample2(x)[0, :, :, 0]
    assert np.array_equal(
        np.asarray(y), np.repeat(np.repeat(np.arange(4.0).reshape(2, 2), 2, 0), 2, 1)
    )
