"""Speed paths compute the same function as the plain ones: im2col conv, the vae_cats_v1 encoder,
the metric-only SSIM of an MSE loss, and malloc reuse (which must actually stop the page faults)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import run_python, tiny_config
from flax import nnx

from catvae_jax.errors import UserError
from catvae_jax.model import losses, networks
from catvae_jax.model.layers import conv
from catvae_jax.train import malloc

CASES = [(4, 2, 3, 5), (4, 8, 4, 3), (3, 1, 2, 2), (5, 3, 3, 4), (2, 2, 6, 1)]  # k, s, c_in, c_out


def _xla_conv(x, kernel, stride):
    return jax.lax.conv_general_dilated(
        x, kernel, stride, "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


@pytest.mark.parametrize(("k", "s", "c_in", "c_out"), CASES)
def test_conv_matches_xla_convolution(k: int, s: int, c_in: int, c_out: int) -> None:
    rng = np.random.default_rng(k * 10 + s)
    x = jnp.asarray(rng.standard_normal((2, 15, 13, c_in)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((k, k, c_in, c_out)), jnp.float32)
    want = _xla_conv(x, kernel, (s, s))
    got = conv(x, kernel, s)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    cot = jnp.asarray(rng.standard_normal(want.shape), jnp.float32)

    def grads(fn):
        return jax.grad(lambda x, kern: jnp.sum(fn(x, kern, (s, s)) * cot), argnums=(0, 1))(
            x, kernel
        )

    for a, b in zip(grads(conv), grads(_xla_conv), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)


def test_rectangular_kernel_and_stride() -> None:
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((1, 11, 12, 2)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((3, 4, 2, 3)), jnp.float32)
    np.testing.assert_allclose(conv(x, kernel, (2, 3)), _xla_conv(x, kernel, (2, 3)), atol=1e-4)


def test_vae_cats_v1_encoder_equals_plain_layers() -> None:
    model = networks.VaeCatsV1(z_dim=8, h_dim=1024, rngs=nnx.Rngs(1))
    x = jax.random.uniform(jax.random.key(0), (2, 128, 128, 3))
    h = x
    for layer in model.encode_layers:
        h = jax.nn.relu(layer(h))  # nnx.Conv itself
    h = h.transpose(0, 3, 1, 2).reshape(2, -1)
    mu, logvar = model.encode(x)
    np.testing.assert_allclose(mu, model.FC_mean(h), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logvar, model.FC_var(h), rtol=1e-5, atol=1e-5)


def test_ssim_is_only_a_metric_without_an_ssim_term() -> None:
    cfg = tiny_config().loss
    cfg.ssim_weight, cfg.mse_weight = 0.0, 1.0
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.uniform(size=(2, 16, 16, 3)), jnp.float32)
    x_hat = jnp.asarray(rng.uniform(size=(2, 16, 16, 3)), jnp.float32)
    total, s = losses.reconstruction(x, x_hat, cfg)
    np.testing.assert_allclose(s, losses.ssim(x, x_hat), rtol=1e-6)
    np.testing.assert_allclose(total, jnp.sum((x - x_hat) ** 2, axis=(1, 2, 3)), rtol=1e-5)
    grad = jax.grad(lambda y: jnp.sum(losses.reconstruction(x, y, cfg)[0]))(x_hat)
    np.testing.assert_allclose(grad, 2 * (x_hat - x), rtol=1e-5, atol=1e-6)


def test_ssim_metric_on_the_first_images_only_when_not_in_the_loss() -> None:
    cfg = tiny_config().loss
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.uniform(size=(5, 16, 16, 3)), jnp.float32)
    x_hat = jnp.asarray(rng.uniform(size=(5, 16, 16, 3)), jnp.float32)
    full = losses.ssim(x, x_hat)
    _, s = losses.reconstruction(x, x_hat, cfg, metric_images=2)  # SSIM in the loss: all 5
    np.testing.assert_allclose(s, full, rtol=1e-6)
    cfg.ssim_weight, cfg.mse_weight = 0.0, 1.0
    total, s = losses.reconstruction(x, x_hat, cfg, metric_images=2)
    np.testing.assert_allclose(s, full[:2], rtol=1e-6)
    assert total.shape == (5,)


def test_malloc_modes() -> None:
    assert malloc.configure("system") is False
    with pytest.raises(UserError, match="CATVAE_MALLOC"):
        malloc.configure("jemalloc")


_FAULTS = """
import resource, sys
from catvae_jax.train import malloc
print(malloc.configure(sys.argv[1] if len(sys.argv) > 1 else None))
import jax, jax.numpy as jnp
f = jax.jit(lambda a: jnp.sum(jnp.tanh(a @ a.T) @ a))  # a 64 MB 4096 x 4096 temporary
x = jnp.ones((4096, 8))
f(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    f(x).block_until_ready()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def test_malloc_reuse_stops_page_faults() -> None:
    """4 steps with a 64 MB temporary: ~65k faults with glibc's defaults, ~none with reuse."""
    reuse = run_python(_FAULTS, env={"CATVAE_MALLOC": "reuse"})
    system = run_python(_FAULTS, env={"CATVAE_MALLOC": "system"})
    assert reuse.returncode == 0 and system.returncode == 0, reuse.stderr + system.stderr
    applied, reuse_faults = reuse.stdout.split()[-2:]
    if applied != "True":
        pytest.skip("no glibc to configure on this platform")
    assert system.stdout.split()[-2] == "False"
    assert int(system.stdout.split()[-1]) > 30_000
    assert int(reuse_faults) < 5_000
