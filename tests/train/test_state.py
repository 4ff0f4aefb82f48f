"""A run's train state (catvae_jax/train/state.py): the state made from a model and the abstract
one a checkpoint reader builds agree, the EMA is started and used, and the optimizer and
plateau follow the config."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config

from catvae_jax.model import networks
from catvae_jax.train import state as state_lib


@pytest.fixture(scope="module")
def made():
    """(config with EMA on, graphdef, TrainState at step 0) of the tiny resvae."""
    config = tiny_config()
    config.ema_decay = 0.99
    graphdef, state = state_lib.init_state(config, networks.init_compiled(config))
    return config, graphdef, state


def _shapes(tree) -> list[tuple]:
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return [(jax.tree_util.keystr(path), leaf.shape, leaf.dtype) for path, leaf in leaves]


def test_init_and_abstract_state_agree(made):
    config, graphdef, state = made
    abstract_graphdef, abstract = state_lib.abstract_state(
        config, lambda: networks.init_eager(config)
    )
    assert abstract_graphdef == graphdef
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(abstract))
    assert _shapes(abstract) == _shapes(state)
    assert int(state.step) == 0 and state.step.dtype == jnp.int32
    kernel = state.params["to_stats"]["kernel"]
    assert kernel.shape == (4 * 4 * 16, 2 * config.model.z_dim)  # 16 px / 2² = 4, 16 channels


def test_a_fresh_state_has_an_ema_equal_to_but_apart_from_its_params(made):
    _, _, state = made
    pairs = zip(jax.tree.leaves(state.ema), jax.tree.leaves(state.params), strict=True)
    for ema, param in pairs:
        np.testing.assert_array_equal(ema, param)
        assert ema is not param  # fresh buffers: a donated step may not alias them


def test_eval_params_picks_the_ema_when_there_is_one(made):
    _, _, state = made
    assert state_lib.eval_params(state) is state.ema
    assert state_lib.eval_params(state.replace(ema=None)) is state.params


def test_start_ema_only_when_on_and_missing(made):
    config, _, state = made
    raw = state.replace(ema=None)
    started = state_lib.start_ema(raw, config)
    assert started.ema is not None and started.params is raw.params
    assert state_lib.start_ema(state, config) is state  # an EMA already there is kept
    config_off = tiny_config()
    config_off.ema_decay = 0.0
    assert state_lib.start_ema(raw, config_off) is raw
    assert state_lib.ema_decay(config_off) == 0.0 and state_lib.ema_decay(config) == 0.99


def test_the_optimizer_clips_only_when_configured():
    params = {"w": jnp.zeros(4)}
    grads = {"w": jnp.full(4, 100.0)}
    config = tiny_config()
    config.weight_decay = 0.0
    config.grad_clip_norm = 1.0
    clipped = state_lib.make_optimizer(config)
    config.grad_clip_norm = 0.0
    plain = state_lib.make_optimizer(config)
    assert len(clipped.init(params)) == 2 and len(plain.init(params)) == 1
    # Adam's first step is ±lr whatever the scale, so compare the clipped first moments.
    moments = [opt.update(grads, opt.init(params), params)[1][-1][0].mu for opt in (clipped, plain)]
    np.testing.assert_allclose(moments[0]["w"], 0.1 * 0.5, rtol=1e-5)  # (1 − β1) · 100 / 200
    np.testing.assert_allclose(moments[1]["w"], 0.1 * 100.0, rtol=1e-5)


def _plateau_scales(factor: float, patience: int, evaluations: int) -> list[float]:
    """The lr scale after each of `evaluations` validations that never beat the first."""
    config = tiny_config()
    config.plateau.factor, config.plateau.patience = factor, patience
    plateau = state_lib.make_plateau(config)
    params = {"w": jnp.zeros(2)}
    state, scales = plateau.init(params), []
    for _ in range(evaluations):
        _, state = plateau.update(params, state, params, value=jnp.float32(1.0))
        scales.append(float(state.scale))
    return scales


def test_the_plateau_scale_drops_by_its_factor_after_its_patience_down_to_a_floor():
    assert _plateau_scales(0.5, 2, 6) == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    assert _plateau_scales(0.1, 1, 6)[-1] == pytest.approx(1e-3)  # min_scale
