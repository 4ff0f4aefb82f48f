"""hvae (two latent scales) through the whole product path on a tiny config: train, checkpoint,
resume exactly, fit the learned prior, load, sample with every sampler, and the likelihood."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import tiny_config

import catvae_jax
from catvae_jax.after_training import train_and_evaluate
from catvae_jax.config import latent_size
from catvae_jax.evaluation import likelihood


class _StopAt12(Exception):
    pass


def _stop_at_12(step, metrics):
    if step == 12:
        raise _StopAt12


def test_hvae_trains_resumes_exactly_and_every_sampler_and_reader_works(tmp_path):
    config = tiny_config()
    config.model.name, config.model.widths, config.model.local_channels = "hvae", (8, 16), 1
    config.lr_schedule = "constant"
    config.num_epochs = 2
    z = latent_size(config)
    assert z == 8 + 8 * 8 * 1

    straight = train_and_evaluate(config, str(tmp_path / "straight"))
    config.flow_prior = False  # the resumed run's parameters are compared, not its prior
    with pytest.raises(_StopAt12):
        train_and_evaluate(config, str(tmp_path / "resumed"), on_validation=_stop_at_12)
    resumed = train_and_evaluate(config, str(tmp_path / "resumed"))
    assert resumed["step"] == straight["step"] == 24
    assert resumed["params_sha256"] == straight["params_sha256"]
    assert straight["val_kl"] > 0 and np.isfinite(straight["val_loss"])

    model = catvae_jax.load(tmp_path / "straight", "latest")
    assert model.z_dim == z and model.flow is not None  # the learned prior, fitted on [z_g, ε]
    mu, _ = model.encode(np.full((2, 16, 16, 3), 0.5, np.float32))
    assert mu.shape == (2, z) and np.abs(mu[:, 8:]).max() > 0  # the local group carries data
    for sampler in ("auto", "flow", "gmm", "prior"):
        out = model.generate(4, seed=1, sampler=sampler)
        assert out.shape == (4, 16, 16, 3) and np.isfinite(out).all()
    assert not np.array_equal(model.generate(2, seed=1), model.generate(2, seed=2))
    x = np.random.default_rng(0).uniform(size=(4, 16, 16, 3)).astype(np.float32)
    assert model.reconstruct(x).shape == x.shape
    per = likelihood.per_image(model, (x * 255).astype(np.uint8), sigma=0.1, iw_samples=4)
    assert per["kl_dims"].shape == (4, z) and (per["bits_per_dim"] > 0).all()
    assert np.all(per["iw_nll"] <= per["neg_elbo"] + 1e-3)  # the importance-weighted bound
