"""config.kernels (CPU-tuned or plain kernels: the same functions) and config.dtype (bfloat16
activations, float32 parameters, optimizer and loss reductions)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config
from flax import nnx

from catvae_jax import data
from catvae_jax.config import get_config, original_experiment
from catvae_jax.model import backend, losses, networks, ssim
from catvae_jax.train import malloc, steps
from catvae_jax.train import state as state_lib
from catvae_jax.train.loop import make_mesh


def test_auto_is_cpu_here_and_the_choice_is_overridable():
    assert backend.kernels("auto") == "cpu" == jax.default_backend()
    assert backend.kernels("plain") == "plain"
    config = tiny_config()
    config.kernels = "plain"
    assert networks.init_eager(config).kernels == "plain"
    assert steps.loss_options(config) == {"kernels": "plain", "dtype": None}


def test_the_ssim_filters_agree_in_value_and_gradient():
    rng = np.random.default_rng(0)
    a, b = (jnp.asarray(rng.random((3, 24, 20, 3), np.float32)) for _ in range(2))
    loss = lambda k: lambda y: jnp.sum(ssim.ssim(a, y, kernels=k) ** 2)
    np.testing.assert_allclose(ssim.ssim(a, b, kernels="plain"), ssim.ssim(a, b), atol=1e-6)
    g_cpu, g_plain = jax.grad(loss("cpu"))(b), jax.grad(loss("plain"))(b)
    np.testing.assert_allclose(g_plain, g_cpu, atol=1e-6, rtol=1e-5)


def _both(config) -> tuple:
    """(the model with CPU kernels, the same parameters with the plain ones)."""
    config.kernels = "cpu"
    fast = networks.init_compiled(config)
    config.kernels = "plain"
    graphdef, _ = nnx.split(networks.init_eager(config))
    return fast, nnx.merge(graphdef, nnx.state(fast))


@pytest.mark.parametrize("model", ["resvae", "vae_cats_v1"])
def test_the_cpu_and_plain_kernels_compute_the_same_loss_and_gradients(model):
    """The networks' kernels, under an MSE loss: with SSIM, the blur's own rounding (tested
    above) is amplified ~1000× by an untrained model's near-constant images (SSIM divides by
    their local variances)."""
    config = tiny_config() if model == "resvae" else original_experiment(seed=0, num_epochs=1)
    config.loss.ssim_weight, config.loss.mse_weight = 0.0, 1.0
    fast, plain = _both(config)
    size = config.image_size
    x = jnp.asarray(np.random.default_rng(1).random((2, size, size, 3), np.float32))
    key, beta = jax.random.key(0), jnp.float32(0.5)

    def value_and_grad(model, kernels):
        graphdef, params = nnx.split(model)

        def loss(p):
            m = nnx.merge(graphdef, p)
            return losses.vae_loss(m, x, key, beta, config.loss, kernels=kernels)[0]

        return jax.jit(jax.value_and_grad(loss))(params)

    v_fast, g_fast = value_and_grad(fast, "cpu")
    v_plain, g_plain = value_and_grad(plain, "plain")
    assert float(v_plain) == pytest.approx(float(v_fast), rel=1e-5)
    # Float rounding in other summation orders (im2col / sub-pixel vs XLA's convolutions):
    # measured ~1e-6 of the gradient's norm.
    a, b = (np.concatenate([np.ravel(v) for v in jax.tree.leaves(g)]) for g in (g_fast, g_plain))
    assert np.linalg.norm(a - b) < 1e-5 * np.linalg.norm(a)
    np.testing.assert_allclose(b / np.abs(a).max(), a / np.abs(a).max(), atol=1e-5)


def test_malloc_is_left_alone_for_the_plain_kernels_and_on_accelerators(monkeypatch):
    assert malloc.configure("reuse", kernels="plain") is False
    monkeypatch.setenv("JAX_PLATFORMS", "cuda,cpu")
    assert malloc.accelerator_expected() and malloc.configure("reuse", kernels="auto") is False
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    assert not malloc.accelerator_expected()


def _train(config, n: int) -> tuple[list[float], state_lib.TrainState]:
    """n train steps of `config` from its initial state on the data's first batches."""
    graphdef, state = state_lib.init_state(config, networks.init_compiled(config))
    train = data.train_data(config, make_mesh(config.batch_size))
    step = jax.jit(steps.make_train_step(graphdef, config, jax.random.key(0)))
    schedule, out = steps.schedule(config, n), []
    for i in range(n):
        state, metrics = step(state, train.batch(i), schedule)
        out.append(float(metrics["train_loss"]))
    return out, state


def test_bfloat16_activations_train_like_float32():
    """8 steps on the same batches: the first loss agrees to bf16 rounding; later ones drift
    apart as Adam's normalised updates amplify it (measured ≤ 6 % per step, ≤ 1 % on average)."""
    config = tiny_config()
    f32, _ = _train(config, 8)
    config.dtype = "bfloat16"
    bf16, state = _train(config, 8)
    assert np.all(np.isfinite(bf16))
    assert bf16[0] == pytest.approx(f32[0], rel=2e-3)
    np.testing.assert_allclose(bf16, f32, rtol=0.1)
    assert np.mean(bf16) == pytest.approx(np.mean(f32), rel=0.03)
    assert min(bf16[4:]) < 0.9 * bf16[0]  # it learns
    kinds = {leaf.dtype for leaf in jax.tree.leaves((state.params, state.opt_state))}
    assert kinds <= {jnp.dtype(jnp.float32), jnp.dtype(jnp.int32)}  # float32 parameters, Adam


@pytest.mark.parametrize("model", ["resvae", "vae_cats_v1"])
def test_bfloat16_convolutions_and_float32_outputs(model):
    config = get_config() if model == "resvae" else original_experiment(seed=0, num_epochs=1)
    config.dtype = "bfloat16"
    graphdef, params = nnx.split(nnx.eval_shape(lambda: networks.init_eager(config)))
    x = jax.ShapeDtypeStruct((1, config.image_size, config.image_size, 3), jnp.float32)

    def both(p, x):
        vae = nnx.merge(graphdef, p)
        mu, logvar = vae.encode(x)
        return mu, logvar, vae.decode(mu)

    text = str(jax.make_jaxpr(both)(params, x))
    convs = [line for line in text.splitlines() if "conv_general_dilated" in line]
    assert convs and all("bf16" in line for line in convs)
    outs = jax.eval_shape(both, params, x)
    assert {o.dtype for o in outs} == {jnp.dtype(jnp.float32)}
    assert {v.dtype for v in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}


def test_the_lpips_network_runs_in_bfloat16_close_to_float32():
    rng = np.random.default_rng(2)
    x, y = (jnp.asarray(rng.random((2, 32, 32, 3), np.float32)) for _ in range(2))
    f32 = losses.lpips_distance(x, y)
    bf16 = losses.lpips_distance(x, y, dtype=jnp.bfloat16)
    assert bf16.dtype == jnp.float32
    np.testing.assert_allclose(bf16, f32, rtol=0.05)
