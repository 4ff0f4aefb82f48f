"""The train and eval steps (catvae_jax/train/steps.py) on the tiny resvae: one train step moves
the parameters, deterministically in its key; a non-finite step changes nothing; the eval step
sums over unmasked images only; the learning-rate schedule's values."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config

from catvae_jax.model import networks
from catvae_jax.train import state as state_lib
from catvae_jax.train import steps


def _small_config():
    """The tiny config at two stages of 4 and 8 channels and 4 latents: a train step that
    compiles in a few seconds."""
    config = tiny_config()
    config.model.widths, config.model.z_dim = (4, 8), 4
    config.ema_decay = 0.9
    return config


@pytest.fixture(scope="module")
def tiny():
    """(config, graphdef, state at step 0, a uint8 batch [4, 16, 16, 3])."""
    config = _small_config()
    graphdef, state = state_lib.init_state(config, networks.init_compiled(config))
    batch = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    return config, graphdef, state, batch


@pytest.fixture(scope="module")
def train_step(tiny):
    """train_step(base_key, state, batch, schedule), jitted once for any base key (no
    donation: the tests reuse their states)."""
    config, graphdef, _, _ = tiny

    def step(base_key, state, batch, schedule):
        return steps.make_train_step(graphdef, config, base_key)(state, batch, schedule)

    return jax.jit(step)


def _leaves(tree) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _same(a, b) -> bool:
    return all(np.array_equal(x, y, equal_nan=True) for x, y in zip(a, b, strict=True))


def test_one_step_moves_the_params_and_is_deterministic_in_its_key(tiny, train_step):
    config, _, state, batch = tiny
    schedule = steps.schedule(config, total_steps=36)
    key, other_key = jax.random.key(0), jax.random.key(1)
    first, metrics = train_step(key, state, batch, schedule)
    again, _ = train_step(key, state, batch, schedule)
    other, _ = train_step(other_key, state, batch, schedule)
    assert int(first.step) == 1 and bool(metrics["finite"])
    assert float(metrics["learning_rate"]) == pytest.approx(config.learning_rate)  # cos(0) = 1
    assert np.isfinite(float(metrics["train_loss"])) and float(metrics["grad_norm"]) > 0
    assert not _same(_leaves(first.params), _leaves(state.params))
    assert _same(_leaves(first.params), _leaves(again.params))  # same key, same step
    assert not _same(_leaves(first.params), _leaves(other.params))  # another key's noise
    # The EMA moved from the old towards the new parameters: d = min(0.9, 1/10) at step 0.
    for e, old, new in zip(*map(_leaves, (first.ema, state.ema, first.params)), strict=True):
        np.testing.assert_allclose(e, 0.1 * old + 0.9 * new, rtol=1e-5, atol=1e-7)


def test_a_non_finite_step_keeps_the_params_and_says_so(tiny, train_step):
    config, _, state, batch = tiny

    def poison(path, x):  # one NaN weight in the encoder's last layer
        return (
            x.at[0, 0].set(jnp.nan)
            if "to_stats" in jax.tree_util.keystr(path) and x.ndim == 2
            else x
        )

    broken = state.replace(params=jax.tree_util.tree_map_with_path(poison, state.params))
    after, metrics = train_step(jax.random.key(0), broken, batch, steps.schedule(config, 36))
    assert not bool(metrics["finite"]) and int(after.step) == 1
    assert _same(_leaves(after.params), _leaves(broken.params))
    assert _same(_leaves(after.opt_state), _leaves(broken.opt_state))


def test_the_eval_step_sums_over_the_unmasked_images_only(tiny):
    config, graphdef, state, batch = tiny
    eval_step = jax.jit(steps.make_eval_step(graphdef, config))
    key = jax.random.key(3)
    mask = jnp.array([1.0, 1.0, 0.0, 0.0])
    sums = eval_step(state.params, batch, mask, key)
    # Other images where the mask is 0 change nothing.
    swapped = batch.copy()
    swapped[2:] = 255 - batch[2:]
    np.testing.assert_allclose(
        _leaves(eval_step(state.params, swapped, mask, key)), _leaves(sums), rtol=1e-6
    )
    # They are the sums of the values of each unmasked image alone.
    alone = [eval_step(state.params, batch, jnp.eye(4)[i], key) for i in (0, 1)]
    assert float(sums["count"]) == 2.0 and {float(a["count"]) for a in alone} == {1.0}
    assert set(sums) == {"loss", "recon", "kl", "ssim", "count"}
    for name in sums:
        want = float(alone[0][name]) + float(alone[1][name])
        assert float(sums[name]) == pytest.approx(want, rel=1e-5), name
    full = eval_step(state.params, batch, jnp.ones(4), key)
    assert float(full["count"]) == 4.0 and float(full["loss"]) > float(sums["loss"])


def test_the_learning_rate_multiplier_and_the_schedule():
    config = _small_config()
    config.lr_schedule = "constant"
    assert steps.lr_multiplier(config, 9, 10) == 1.0
    config.lr_schedule = "cosine"
    values = [float(steps.lr_multiplier(config, s, 8)) for s in (0, 2, 4, 6, 8, 20)]
    np.testing.assert_allclose(values, [1.0, 0.853553, 0.5, 0.146447, 0.0, 0.0], atol=1e-6)
    schedule = steps.schedule(config, 50)
    assert int(schedule.total_steps) == 50 and bool(schedule.cosine)
    assert float(schedule.learning_rate) == pytest.approx(config.learning_rate)
    assert int(schedule.kl_warmup_steps) == config.loss.kl_warmup_steps
