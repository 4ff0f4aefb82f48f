"""The adversarial term (config.loss.adversarial_weight): its gradients, the discriminator's
warm-up, checkpoints with a discriminator (exact resume, readers that ignore it)."""

from __future__ import annotations

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config

import catvae_jax
from catvae_jax import images, model_file
from catvae_jax.after_training import train_and_evaluate
from catvae_jax.errors import UserError
from catvae_jax.model import discriminator, losses, networks
from catvae_jax.train import init_from, loop, steps
from catvae_jax.train import state as state_lib


def _adversarial_config(start: int = 2):
    config = tiny_config()
    config.loss.adversarial_weight = 0.5
    config.loss.adversarial_start = start
    config.flow_prior = False
    config.choose_sampler = False
    return config


def _batch(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)


def test_the_discriminator_sees_patches():
    config = _adversarial_config()
    logits = discriminator.make(config)(jnp.zeros((2, 32, 32, 3)))
    assert logits.shape == (2, 4, 4)


def test_the_combined_gradient_is_that_of_the_weighted_loss():
    """The step's one backward pass with combined cotangents equals autodiff of recon + β·KL +
    w·λ·generator loss, and λ is the ratio of the two terms' gradient norms at the last layer."""
    config = _adversarial_config(start=0)
    graphdef, state = state_lib.init_state(config, networks.init_compiled(config))
    batch, key, beta = _batch(), jax.random.key(3), jnp.float32(0.5)
    out = jax.jit(
        lambda s: steps.adversarial_loss_and_grads(graphdef, config, s, batch, key, beta)
    )(state)
    d_graphdef = discriminator.graphdef(config)
    x = images.to_unit(batch)

    def terms(p):
        model = nnx_merge(graphdef, p)
        x_hat, mu, logvar = losses.posterior_sample(model, x, key)
        recon, _ = losses.reconstruction(x, x_hat, config.loss, config.train_ssim_images)
        fake = nnx_merge(d_graphdef, state.disc.params)(x_hat)
        kl = losses.kl_divergence(mu, logvar)
        return jnp.mean(recon + beta * kl), jnp.mean(recon), losses.generator_loss(fake)

    @jax.jit  # eager autodiff of the whole model runs op by op: ~10× slower on CPU
    def reference(p, weight):
        grad = lambda i: jax.grad(lambda q: terms(q)[i])(p)
        combined = jax.grad(lambda q: terms(q)[0] + weight * terms(q)[2])(p)
        return grad(1), grad(2), combined, terms(p)

    last = lambda g: np.asarray(networks.output_kernel(config, g))
    weight = float(out.metrics["adversarial_weight"])
    g_recon, g_adv, want, (total, _, generator) = reference(state.params, weight)
    ratio = np.linalg.norm(last(g_recon)) / (np.linalg.norm(last(g_adv)) + 1e-4)
    assert weight == pytest.approx(0.5 * ratio, rel=1e-4) and weight > 0
    got, want = jax.tree.leaves(out.grads), jax.tree.leaves(want)
    scale = max(float(np.max(np.abs(b))) for b in want)  # float32 rounding of two orders
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4 * scale)
    assert float(out.loss) == pytest.approx(float(total) + weight * float(generator), rel=1e-5)


def nnx_merge(graphdef, params):
    from flax import nnx

    return nnx.merge(graphdef, params)


def test_the_discriminator_trains_after_the_warmup_and_not_before():
    config = _adversarial_config(start=2)
    graphdef, state = state_lib.init_state(config, networks.init_compiled(config))
    step = jax.jit(steps.make_train_step(graphdef, config, jax.random.key(0)))
    schedule = steps.schedule(config, 10)
    changed, weights = [], []
    for i in range(4):
        before = [np.asarray(v).copy() for v in jax.tree.leaves(state.disc)]
        state, metrics = step(state, _batch(i), schedule)
        after = [np.asarray(v) for v in jax.tree.leaves(state.disc)]
        changed.append(any(not np.array_equal(a, b) for a, b in zip(before, after, strict=True)))
        weights.append(float(metrics["adversarial_weight"]))
        assert bool(metrics["finite"]) and np.isfinite(float(metrics["train_disc"]))
    assert changed == [False, False, True, True]
    assert weights[:2] == [0.0, 0.0] and min(weights[2:]) > 0


def _run(config, workdir) -> dict:
    return train_and_evaluate(config, str(workdir))


class _StopAt12(Exception):
    pass


def _stop_at_12(step, metrics):
    if step == 12:
        raise _StopAt12


def test_a_run_with_a_discriminator_checkpoints_it_resumes_exactly_and_loads_without_it(
    tmp_path, monkeypatch
):
    """In calls of up to 4 steps (the scanned multi-step program, the state donated), with
    EMA; the training loop alone (the end-of-training job is tested elsewhere): stopped at its
    first validation and resumed, bit-identical to one run."""
    config = _adversarial_config(start=6)
    config.lr_schedule = "constant"  # the same lr at every step, however long the first run
    config.num_epochs, config.steps_per_call, config.log_every_steps = 2, 4, 5
    config.ema_decay = 0.9
    straight = loop.train_and_evaluate(config, str(tmp_path / "straight"))
    for item in ("disc", "ema"):
        assert (tmp_path / "straight" / "checkpoints" / "24" / item).is_dir()
    lines = [
        json.loads(s) for s in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()
    ]
    train = [m for m in lines if "train_disc" in m]
    assert [m["step"] for m in train] == [5, 10, 12, 15, 20, 24]  # calls of 4, 1, 4, 1, 2, ...
    assert train[0]["adversarial_weight"] == 0 and min(m["adversarial_weight"] for m in train[2:])
    assert all(m["train_disc"] > 0 for m in train)

    with pytest.raises(_StopAt12):
        loop.train_and_evaluate(config, str(tmp_path / "resumed"), on_validation=_stop_at_12)
    assert (tmp_path / "resumed" / "checkpoints" / "12" / "disc").is_dir()
    resumed = loop.train_and_evaluate(config, str(tmp_path / "resumed"))
    assert resumed["step"] == straight["step"] == 24
    assert resumed["params_sha256"] == straight["params_sha256"]  # params and discriminator

    def no_discriminator(*args, **kwargs):
        raise AssertionError("a reader built the discriminator")

    monkeypatch.setattr(discriminator, "make", no_discriminator)
    model = catvae_jax.load(tmp_path / "straight", "latest")
    assert model.step == 24
    out = model.generate(3, seed=0, sampler="prior")
    assert out.shape == (3, 16, 16, 3) and np.isfinite(out).all()
    # Fine-tuning's start (init_from) reads the parameters alone too; export reads load()'s.
    params, _ = init_from.read(f"{tmp_path / 'straight'}:latest")
    assert sorted(params) == sorted(model_file.flatten_params(model.params))


def test_the_term_switched_on_in_a_resumed_run_starts_a_fresh_discriminator(
    trained_workdir, tmp_path, capsys
):
    workdir = tmp_path / "run"
    shutil.copytree(trained_workdir[0], workdir)
    config = _adversarial_config(start=0)
    config.num_epochs = 4
    assert _run(config, workdir)["step"] == 48
    assert "checkpoint 36 has no discriminator: a fresh one starts" in capsys.readouterr().out
    assert (workdir / "checkpoints" / "48" / "disc").is_dir()
    assert not list((workdir / "checkpoints").glob("unreadable-*"))

    config.discriminator.width = 16  # another discriminator: refused, nothing moved aside
    config.num_epochs = 5
    with pytest.raises(UserError, match=r"does not fit this model: disc/"):
        _run(config, workdir)
    assert not list((workdir / "checkpoints").glob("unreadable-*"))
