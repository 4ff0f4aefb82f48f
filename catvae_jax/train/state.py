"""A run's train state: what a checkpoint holds (step, parameters, optimizer, plateau, EMA, the
adversarial term's discriminator) and how it is made. Readers of a checkpoint
(`catvae_jax.inference`) need only this module: it imports neither the losses nor the data
pipeline.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx, struct

from catvae_jax.model import discriminator, networks


@struct.dataclass
class TrainState:
    """Everything a train step changes. `plateau` holds the reduce-on-plateau scale of the lr;
    `ema` the moving average of `params` (None when `config.ema_decay` is 0); `disc` the
    discriminator of the adversarial term (None when `config.loss.adversarial_weight` is 0,
    and in every reader's state: only training needs it)."""

    step: jax.Array
    params: Any
    opt_state: Any
    plateau: Any
    ema: Any = None
    disc: DiscState | None = None


@struct.dataclass
class DiscState:
    """The discriminator's parameters and its optimizer's state."""

    params: Any
    opt_state: Any


def adversarial(config: ml_collections.ConfigDict) -> bool:
    """Whether the run trains with the adversarial term (and so a discriminator)."""
    return float(config.loss.adversarial_weight) > 0


def ema_decay(config: ml_collections.ConfigDict) -> float:
    """config.ema_decay as a float (0: no EMA)."""
    return float(config.ema_decay)


def eval_params(state: TrainState) -> Any:
    """The parameters validation, samples and evaluation use: the EMA when there is one."""
    return state.ema if state.ema is not None else state.params


def start_ema(state: TrainState, config: ml_collections.ConfigDict) -> TrainState:
    """`state` with an EMA equal to its parameters (fresh buffers) when EMA is on and it has
    none (a fresh run, or a checkpoint written without EMA); otherwise `state`."""
    if ema_decay(config) <= 0 or state.ema is not None:
        return state
    return state.replace(ema=jax.tree.map(jnp.copy, state.params))


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """AdamW at lr 1 (the step multiplies its update by the Schedule's learning rate, so the
    decay is multiplied by the lr, as PyTorch does), after optional global-norm clipping."""
    parts = [optax.clip_by_global_norm(config.grad_clip_norm)] if config.grad_clip_norm else []
    parts.append(optax.adamw(1.0, weight_decay=config.weight_decay))
    return optax.chain(*parts)


def make_disc_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """The discriminator's Adam (b1 0.5, b2 0.9: VQGAN's) at its constant learning rate."""
    return optax.adam(config.discriminator.learning_rate, b1=0.5, b2=0.9)


def start_disc(state: TrainState, config: ml_collections.ConfigDict) -> TrainState:
    """`state` with a freshly initialised discriminator when the adversarial term is on and it
    has none (a fresh run, or a checkpoint written without one); without the term, `state`
    without one."""
    if not adversarial(config):
        return state.replace(disc=None)
    if state.disc is not None:
        return state
    _, params = nnx.split(discriminator.make(config))
    return state.replace(disc=DiscState(params, make_disc_optimizer(config).init(params)))


def make_plateau(config: ml_collections.ConfigDict) -> optax.GradientTransformationExtraArgs:
    """Reduce-on-plateau, stepped once per validation with the validation loss."""
    return optax.contrib.reduce_on_plateau(
        factor=config.plateau.factor, patience=config.plateau.patience, min_scale=1e-3
    )


def _state_at_step_0(config: ml_collections.ConfigDict, params: nnx.State) -> TrainState:
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=make_optimizer(config).init(params),
        plateau=make_plateau(config).init(params),
    )
    return start_ema(state, config)


def init_state(config: ml_collections.ConfigDict, model: nnx.Module) -> tuple[Any, TrainState]:
    """Splits `model` into (graphdef, TrainState at step 0, with a discriminator when the
    adversarial term is on)."""
    graphdef, params = nnx.split(model)
    return graphdef, start_disc(_state_at_step_0(config, params), config)


def abstract_state(
    config: ml_collections.ConfigDict, model_fn: Callable[[], nnx.Module]
) -> tuple[Any, TrainState]:
    """(graphdef, TrainState of ShapeDtypeStructs) for `model_fn()`, allocating nothing: what a
    checkpoint reader restores (no discriminator, whatever the config)."""
    graphdef, params = nnx.split(nnx.eval_shape(model_fn))
    params = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype), params)
    return graphdef, jax.eval_shape(lambda p: _state_at_step_0(config, p), params)


def params_digest(params: Any) -> str:
    """sha256 of this process's copy of the parameters (device or host arrays): equal digests =
    bit-identical parameters. Sampler files store the digest of the ones they were fitted on."""
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(params):
        local = leaf.addressable_data(0) if isinstance(leaf, jax.Array) else leaf
        digest.update(np.ascontiguousarray(np.asarray(local)).tobytes())
    return digest.hexdigest()


def reading_target(config: ml_collections.ConfigDict, ema: bool = True) -> tuple[Any, TrainState]:
    """(graphdef, abstract TrainState) of the configured network with every array on local
    device 0: what a reader restores a checkpoint into (`ema=False`: without the EMA)."""
    graphdef, abstract = abstract_state(config, lambda: networks.init_eager(config))
    if not ema:
        abstract = abstract.replace(ema=None)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return graphdef, jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device), abstract
    )
