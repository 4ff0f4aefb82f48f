"""The learned prior (catvae_jax/priors/flow.py): fitted at the end of training and by fit_prior,
deterministic, stored beside its checkpoint and loaded with the model; and which sampler
`auto` picks in each state of a workdir."""

from __future__ import annotations

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import run_cli

import catvae_jax
from catvae_jax import after_training, data
from catvae_jax.errors import UserError
from catvae_jax.priors import flow
from catvae_jax.train import loop


@pytest.fixture
def workdir_copy(trained_workdir, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(trained_workdir[0], dst)
    return dst


def test_flow_fits_a_correlated_gaussian_and_inverts_exactly():
    rng = np.random.default_rng(0)
    mix = np.array([[1.0, 0.0, 0.0], [0.9, 0.3, 0.0], [0.0, 0.0, 2.0]])
    z = (rng.normal(size=(2000, 3)) @ mix.T + 5.0).astype(np.float32)
    fitted = flow.fit(z, seed=0, steps=300, hidden=32)
    prior = fitted.split()
    s = np.asarray(flow.sample(prior, jax.random.key(1), 20_000, jnp.float32(1.0)))
    np.testing.assert_allclose(np.cov(s, rowvar=False), mix @ mix.T, atol=0.15)
    np.testing.assert_allclose(s.mean(0), 5.0, atol=0.1)
    # −log p on held-out data is close to the true Gaussian entropy (3.92 + log|det| nats).
    true = 0.5 * 3 * (1 + np.log(2 * np.pi)) + np.log(abs(np.linalg.det(mix)))
    assert fitted.heldout_nll == pytest.approx(true, abs=0.15)
    cold = np.asarray(flow.sample(prior, jax.random.key(1), 20_000, jnp.float32(0.5)))
    assert cold.std(0).mean() < 0.7 * s.std(0).mean()


def test_training_fits_the_prior_and_load_uses_it(trained_workdir):
    workdir, _ = trained_workdir
    model = catvae_jax.load(workdir)
    assert (workdir / f"flow_{model.step}.npz").exists()  # fitted at the end of training
    assert model.flow is not None and model.flow.num_images == 96
    assert model.resolve_sampler("auto") == "flow"
    np.testing.assert_array_equal(model.generate(4, seed=1), model.generate(4, 1, sampler="flow"))
    assert not np.allclose(model.generate(4, seed=1), model.generate(4, 1, sampler="prior"))


def test_fit_prior_cli_is_deterministic_and_atomic(workdir_copy):
    step = catvae_jax.load(workdir_copy).step
    path = workdir_copy / f"flow_{step}.npz"
    before = flow.Flow.read(path)
    path.unlink()
    proc = run_cli("catvae_jax.fit_prior", "--workdir", str(workdir_copy), "--step", str(step))
    assert proc.returncode == 0, proc.stderr[-2000:]
    # a line when the fit starts, one when it ends; then the same for the bits/dim range
    started, done, measuring, measured = proc.stdout.splitlines()[-4:]
    assert measuring.startswith(f"checkpoint {step}: measuring the bits/dim")
    assert measured.endswith(f"wrote {workdir_copy / f'bpd_{step}.json'}")
    assert started.startswith(f"checkpoint {step}: fitting the learned prior")
    assert done.startswith(f"checkpoint {step}: learned prior fitted to 96 latents in ")
    assert done.endswith(f"wrote {path}")
    after = flow.Flow.read(path)
    for name, value in before.tensors().items():
        np.testing.assert_array_equal(after.tensors()[name], value)
    assert not [p.name for p in workdir_copy.iterdir() if p.name.endswith(".tmp")]
    a, b = (catvae_jax.load(workdir_copy).generate(6, seed=2) for _ in range(2))
    np.testing.assert_array_equal(a, b)


def test_auto_picks_flow_then_gmm_then_prior(workdir_copy, capsys):
    step = catvae_jax.load(workdir_copy).step
    (workdir_copy / f"flow_{step}.npz").unlink()
    gmm_only = catvae_jax.load(workdir_copy)
    assert gmm_only.flow is None and gmm_only.resolve_sampler() == "gmm"
    assert (workdir_copy / f"gmm_{step}.npz").exists()  # fitted on demand and cached
    with pytest.raises(UserError, match="no learned prior for checkpoint"):
        gmm_only.generate(2, sampler="flow")
    # No gmm cache and a training split that cannot be read: N(0, I), with a warning.
    (workdir_copy / f"gmm_{step}.npz").unlink()
    config = json.loads((workdir_copy / "config.json").read_text())
    config["data"].update(source="folder", path=str(workdir_copy / "no-such-folder"))
    (workdir_copy / "config.json").write_text(json.dumps(config))
    nothing = catvae_jax.load(workdir_copy)
    assert nothing.resolve_sampler() == "prior"
    assert "auto sampler uses N(0, I)" in capsys.readouterr().err
    np.testing.assert_array_equal(
        nothing.generate(3, seed=0), nothing.generate(3, 0, sampler="prior")
    )
    # A damaged flow file is ignored with a warning, not a crash.
    (workdir_copy / f"flow_{step}.npz").write_bytes(b"not an npz")
    assert catvae_jax.load(workdir_copy).flow is None
    assert "warning: ignoring the learned prior" in capsys.readouterr().err


def test_the_end_of_training_fit_can_be_switched_off(trained_workdir, tmp_path):
    """config.flow_prior = False: the end of training fits no flow (ckpts=None: the range is
    measured for the final parameters alone) and samples.png comes from the gmm, fitted for it
    and cached in the workdir."""
    model = catvae_jax.load(trained_workdir[0])
    config = model.config.copy_and_resolve_references()
    config.flow_prior = False
    originals = data.load_split(config, "validation")[:4]
    params, step = model._params, model.step
    run = loop.Finished(tmp_path, config, model.graphdef, params, step, None, originals)
    grid = after_training.finish(run)
    assert grid.dtype == np.uint8 and grid.ndim == 3
    names = sorted(p.name for p in tmp_path.iterdir())
    # and the bits/dim range of the final parameters (no checkpoints: of those alone)
    assert names == [f"bpd_{step}.json", f"gmm_{step}.npz", "reconstructions.png", "samples.png"]
