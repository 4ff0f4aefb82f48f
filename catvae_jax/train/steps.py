"""The train and eval steps: pure functions of (state, batch), written once and jitted by callers.

The model lives as (graphdef, params): `nnx.merge` runs only while tracing, so a jitted step pays
no per-call graph traversal. Batches are uint8 NHWC; the steps scale them to [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx, struct

from catvae_jax import images
from catvae_jax.model import backend, discriminator, losses, networks
from catvae_jax.train.state import (
    DiscState,
    TrainState,
    adversarial,
    ema_decay,
    make_disc_optimizer,
    make_optimizer,
)

# λ's clip: VQGAN's 1e4 on a per-pixel mean reconstruction loss, times H·W·C here, where the
# reconstruction term is summed over the pixel values (catvae_jax/model/losses.py).
MAX_ADAPTIVE_WEIGHT_PER_VALUE = 1e4


@struct.dataclass
class Schedule:
    """A run's learning rate, its schedule and length, and its KL warm-up, as arguments of the
    compiled train step rather than constants in it: runs that differ only in these (an lr
    sweep, a longer rerun, a constant instead of a cosine lr) share one compiled program, in
    the process and in JAX's persistent cache."""

    learning_rate: jax.Array  # float32 []
    total_steps: jax.Array  # int32 []: the horizon of a cosine `config.lr_schedule`
    cosine: jax.Array  # bool []: `config.lr_schedule == "cosine"`
    kl_warmup_steps: jax.Array  # int32 []: `config.loss.kl_warmup_steps`


def schedule(config: ml_collections.ConfigDict, total_steps: int) -> Schedule:
    """The Schedule of a run of `total_steps` steps (host numpy scalars; callers place them)."""
    return Schedule(
        learning_rate=np.asarray(config.learning_rate, np.float32),
        total_steps=np.asarray(total_steps, np.int32),
        cosine=np.asarray(config.lr_schedule == "cosine"),
        kl_warmup_steps=np.asarray(config.loss.kl_warmup_steps, np.int32),
    )


def update_ema(ema: Any, params: Any, step: jax.Array, decay: float) -> Any:
    """ema ← d·ema + (1 − d)·params with d = min(decay, (1 + step) / (10 + step))."""
    d = jnp.minimum(decay, (1.0 + step) / (10.0 + step)).astype(jnp.float32)
    return jax.tree.map(lambda e, p: (d * e + (1.0 - d) * p).astype(e.dtype), ema, params)


def lr_multiplier(config: ml_collections.ConfigDict, step: Any, total_steps: Any) -> Any:
    """The learning-rate multiplier at `step` (ints, or int32 arrays in the step): 1 throughout
    (`lr_schedule = "constant"`), or a cosine from 1 to 0 over `total_steps` ("cosine"). The
    plateau scale multiplies it, and AdamW's decay with it, as the lr does in PyTorch."""
    if config.lr_schedule == "constant":
        return 1.0
    return cosine_multiplier(step, total_steps)


def cosine_multiplier(step: Any, total_steps: Any) -> Any:
    """0.5 · (1 + cos(π · min(step, total_steps) / total_steps)): 1 at step 0, 0 from the end."""
    count = jnp.minimum(step, total_steps)
    return 0.5 * (1 + jnp.cos(jnp.pi * count / total_steps))


def loss_and_grads(
    graphdef: nnx.GraphDef,
    config: ml_collections.ConfigDict,
    params: nnx.State,
    batch: jax.Array,
    key: jax.Array,
    beta: jax.Array,
) -> tuple[tuple[jax.Array, dict[str, jax.Array]], nnx.State]:
    """((mean loss, per-image metrics), gradients) of the VAE loss on a uint8 batch.

    The `ssim` metric covers `config.train_ssim_images` images when SSIM is not in the loss.
    """
    metric_images = config.train_ssim_images
    options = loss_options(config)

    def loss_fn(p):
        model = nnx.merge(graphdef, p)
        x = images.to_unit(batch)
        return losses.vae_loss(model, x, key, beta, config.loss, metric_images, **options)

    return jax.value_and_grad(loss_fn, has_aux=True)(params)


def loss_options(config: ml_collections.ConfigDict) -> dict:
    """The loss's `kernels` and `dtype` (config.kernels, config.dtype), resolved."""
    return {
        "kernels": backend.kernels(config.kernels),
        "dtype": backend.compute_dtype(config.dtype),
    }


@struct.dataclass
class AdversarialStep:
    """A two-player step's outcome: the VAE's mean loss (with the weighted adversarial term),
    per-image metrics and gradients, the discriminator's next state, and the metrics of the
    term (its losses and effective weight w·λ)."""

    loss: jax.Array
    per_image: dict
    grads: Any
    disc: DiscState
    metrics: dict


def adversarial_loss_and_grads(
    graphdef: nnx.GraphDef,
    config: ml_collections.ConfigDict,
    state: TrainState,
    batch: jax.Array,
    key: jax.Array,
    beta: jax.Array,
) -> AdversarialStep:
    """One two-player step: the VAE's gradients of recon + β·KL + w·λ·generator_loss (w =
    `loss.adversarial_weight` from step `loss.adversarial_start` on, else 0; λ the adaptive
    weight at the decoder's last layer), and the discriminator updated by its hinge loss on the
    batch and the decoded images (from `adversarial_start` on, when its loss is finite)."""
    x = images.to_unit(batch)
    active = state.step >= config.loss.adversarial_start
    logits = _logits(config)
    x_hat, kl, backward = _forward(graphdef, x, key, state.params)
    options = loss_options(config)

    def recon_fn(xh):
        recon, s = losses.reconstruction(x, xh, config.loss, config.train_ssim_images, **options)
        return jnp.mean(recon), (recon, s)

    (_, (recon, ssim)), d_recon = jax.value_and_grad(recon_fn, has_aux=True)(x_hat)
    adv_fn = lambda xh: losses.generator_loss(logits(state.disc.params, xh))
    g_loss, d_adv = jax.value_and_grad(adv_fn)(x_hat)
    last = lambda d: networks.output_kernel(config, backward((d, jnp.zeros_like(kl)))[0])
    max_weight = MAX_ADAPTIVE_WEIGHT_PER_VALUE * x[0].size
    weight = jnp.where(active, config.loss.adversarial_weight, 0.0)
    weight = weight * losses.adaptive_weight(last(d_recon), last(d_adv), max_weight)
    (grads,) = backward((d_recon + weight * d_adv, jnp.full_like(kl, beta / kl.shape[0])))
    disc, d_loss = _update_disc(config, state.disc, x, x_hat, active & jnp.isfinite(g_loss))
    per_image = {"loss": recon + beta * kl, "recon": recon, "kl": kl, "ssim": ssim}
    metrics = {"train_adv_g": g_loss, "train_disc": d_loss, "adversarial_weight": weight}
    loss = jnp.mean(per_image["loss"]) + weight * g_loss
    return AdversarialStep(loss, per_image, grads, disc, metrics)


def _logits(config: ml_collections.ConfigDict) -> Callable[[Any, jax.Array], jax.Array]:
    """logits(disc_params, images) of the configured discriminator."""
    d_graphdef = discriminator.graphdef(config)
    return lambda p, im: nnx.merge(d_graphdef, p)(im)


def _forward(
    graphdef: nnx.GraphDef, x: jax.Array, key: jax.Array, params: nnx.State
) -> tuple[jax.Array, jax.Array, Callable]:
    """(x̂ [B, S, S, 3], KL [B], backward): `backward((cotangent of x̂, of KL))` is
    (the gradient wrt `params`,). Only the cotangents at x̂ are combined across the loss terms,
    so the VAE's full backward pass runs once; λ needs only the last layer's gradient of each
    term, which XLA computes without the rest."""

    def forward(p):
        x_hat, mu, logvar = losses.posterior_sample(nnx.merge(graphdef, p), x, key)
        return x_hat, losses.kl_divergence(mu, logvar)

    (x_hat, kl), backward = jax.vjp(forward, params)
    return x_hat, kl, backward


def _update_disc(
    config: ml_collections.ConfigDict,
    disc: DiscState,
    x: jax.Array,
    x_hat: jax.Array,
    active: jax.Array,
) -> tuple[DiscState, jax.Array]:
    """(next DiscState, hinge loss) of one Adam step on real `x` and decoded `x_hat` (no
    gradient to the VAE); the state is unchanged unless `active` and everything is finite."""
    logits = _logits(config)
    fake = jax.lax.stop_gradient(x_hat)
    loss_fn = lambda p: losses.discriminator_loss(logits(p, x), logits(p, fake))
    d_loss, d_grads = jax.value_and_grad(loss_fn)(disc.params)
    updates, opt_state = make_disc_optimizer(config).update(d_grads, disc.opt_state, disc.params)
    new = DiscState(optax.apply_updates(disc.params, updates), opt_state)
    take = active & jnp.isfinite(d_loss) & jnp.isfinite(optax.tree.norm(d_grads))
    return jax.tree.map(lambda n, o: jnp.where(take, n, o), new, disc), d_loss


def make_train_step(
    graphdef: nnx.GraphDef, config: ml_collections.ConfigDict, base_key: jax.Array
) -> Callable[[TrainState, jax.Array, Schedule], tuple[TrainState, dict]]:
    """Returns train_step(state, batch_u8, schedule) -> (state, metrics), to be jitted with the
    state donated; `schedule` (a Schedule) holds the learning rate and the run's length.

    The noise of step t is fold_in(base_key, t). A non-finite loss or gradient norm leaves the
    parameters unchanged and reports `finite = False`, so the caller can stop at that step.
    With `config.ema_decay` > 0 the step also updates the EMA of the parameters; with
    `config.loss.adversarial_weight` > 0 it adds the adversarial term and updates the
    discriminator (`adversarial_loss_and_grads`).
    """
    tx = make_optimizer(config)
    decay = ema_decay(config)
    two_player = adversarial(config)

    def train_step(
        state: TrainState, batch: jax.Array, schedule: Schedule
    ) -> tuple[TrainState, dict]:
        key = jax.random.fold_in(base_key, state.step)
        beta = losses.warmed_up_beta(state.step, config.loss.beta, schedule.kl_warmup_steps)
        extra, disc = {}, state.disc
        if two_player:  # decided while tracing
            adv = adversarial_loss_and_grads(graphdef, config, state, batch, key, beta)
            loss, per_image, grads, disc, extra = (
                adv.loss,
                adv.per_image,
                adv.grads,
                adv.disc,
                adv.metrics,
            )
        else:
            (loss, per_image), grads = loss_and_grads(
                graphdef, config, state.params, batch, key, beta
            )
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        cosine = cosine_multiplier(state.step, schedule.total_steps)
        scale = state.plateau.scale * jnp.where(schedule.cosine, cosine, 1.0)
        lr = schedule.learning_rate
        updates = jax.tree.map(lambda u: u * lr * scale, updates)
        params = optax.apply_updates(state.params, updates)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
        params = keep(params, state.params)
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            opt_state=keep(opt_state, state.opt_state),
            disc=disc,
        )
        if decay > 0:  # decided while tracing: no per-step Python
            new_state = new_state.replace(ema=update_ema(state.ema, params, state.step, decay))
        metrics = {
            "train_loss": loss,
            "train_ssim": jnp.mean(per_image["ssim"]),
            "train_kl": jnp.mean(per_image["kl"]),
            "grad_norm": grad_norm,
            "learning_rate": lr * scale,
            "finite": finite,
            **extra,
        }
        return new_state, metrics

    return train_step


def make_eval_step(graphdef: nnx.GraphDef, config: ml_collections.ConfigDict) -> Callable:
    """Returns eval_step(params, batch_u8, mask, key) -> sums over unmasked images.

    The validation loss uses the full β (no warm-up), so it measures the same objective all run.
    """

    options = loss_options(config)

    def eval_step(params, batch: jax.Array, mask: jax.Array, key: jax.Array) -> dict:
        model = nnx.merge(graphdef, params)
        beta = jnp.asarray(config.loss.beta, jnp.float32)
        x = images.to_unit(batch)
        _, per_image = losses.vae_loss(model, x, key, beta, config.loss, **options)
        sums = {k: jnp.sum(v * mask) for k, v in per_image.items()}
        sums["count"] = jnp.sum(mask)
        return sums

    return eval_step


def make_multi_step(train_step: Callable, k: int) -> Callable:
    """Returns multi_step(state, batches [k, B, ...], n, schedule) -> (state, metrics): the first
    n (1 ≤ n ≤ k, an int32 argument) of k train steps in one compiled loop, each exactly
    `train_step`; metrics are stacked [k] (entries from n on are zeros). One program serves
    every n, so a call cut short by a log, validation or checkpoint step compiles nothing."""
    step = jax.jit(train_step)  # traced once: eval_shape below and the loop body share it

    def multi_step(state: TrainState, batches: jax.Array, n: jax.Array, schedule: Schedule):
        shapes = jax.eval_shape(step, state, batches[0], schedule)[1]
        stacked = jax.tree.map(lambda s: jnp.zeros((k, *s.shape), s.dtype), shapes)

        def body(i, carry):
            state, stacked = carry
            state, metrics = step(state, batches[i], schedule)
            stacked = jax.tree.map(lambda a, v: a.at[i].set(v), stacked, metrics)
            return state, stacked

        return jax.lax.fori_loop(0, n, body, (state, stacked))

    return multi_step
