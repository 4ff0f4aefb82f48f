"""Loading a model (catvae_jax/inference.py) without a trained workdir: the argument bounds of
generate, and one-line errors for workdirs that are not (complete) runs and inputs of the
wrong shape. Loading real checkpoints is tested in tests/e2e/."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import tiny_config
from flax import nnx

import catvae_jax
from catvae_jax import inference
from catvae_jax.errors import UserError
from catvae_jax.model import networks


@pytest.mark.parametrize(
    ("n", "temperature", "sampler", "seed", "message"),
    [
        (0, 1.0, "auto", 0, "n must be between 1 and 4096, got 0"),
        (4097, 1.0, "auto", 0, "n must be between 1 and 4096, got 4097"),
        (1, 0.0, "auto", 0, "temperature must be in (0, 10], got 0.0"),
        (1, 10.5, "auto", 0, "temperature must be in (0, 10], got 10.5"),
        (1, 1.0, "vae", 0, "sampler must be one of auto, prior, gmm, flow, got 'vae'"),
        # an OverflowError where the key was made, before
        (1, 1.0, "auto", 2**32, "seed must be between 0 and 2**32 - 1, got 4294967296"),
        (1, 1.0, "auto", -1, "seed must be between 0 and 2**32 - 1, got -1"),
    ],
)
def test_generate_arguments_out_of_bounds_are_one_line(n, temperature, sampler, seed, message):
    with pytest.raises(UserError) as refused:
        inference.check_generate_args(n, temperature, sampler, seed)
    assert str(refused.value) == message


@pytest.mark.parametrize(("n", "temperature", "seed"), [(1, 1e-6, 0), (4096, 10.0, 2**32 - 1)])
def test_generate_arguments_at_the_bounds_pass(n, temperature, seed):
    for sampler in inference.SAMPLERS:
        inference.check_generate_args(n, temperature, sampler, seed)


def test_read_config_of_a_bad_workdir_is_one_line(tmp_path):
    with pytest.raises(UserError) as refused:
        inference.read_config(tmp_path)
    assert str(refused.value) == f"{tmp_path} is not a catvae_jax workdir (no config.json)"
    (tmp_path / "config.json").write_text('{"image_size": ')
    with pytest.raises(UserError, match=r"config\.json is not a readable config\.json: ") as bad:
        inference.read_config(tmp_path)
    assert "\n" not in str(bad.value)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(UserError, match=r"not a catvae_jax config\.json: expected a JSON object"):
        inference.read_config(tmp_path)


def test_read_config_upgrades_what_a_run_wrote(tmp_path):
    saved = tiny_config().to_dict()
    saved["model"]["widths"] = list(saved["model"]["widths"])
    del saved["ema_decay"]  # as a run from before that field wrote it
    (tmp_path / "config.json").write_text(json.dumps(saved))
    config = inference.read_config(tmp_path)
    assert config.model.widths == (8, 16) and config.image_size == 16
    assert config.ema_decay == 0.0


def test_load_refuses_a_missing_workdir_and_one_without_checkpoints(tmp_path):
    with pytest.raises(UserError, match=r"^workdir .*/nope does not exist$"):
        catvae_jax.load(tmp_path / "nope")
    (tmp_path / "config.json").write_text(json.dumps(tiny_config().to_dict()))
    with pytest.raises(UserError) as refused:
        catvae_jax.load(tmp_path)
    assert str(refused.value) == f"no checkpoint in {tmp_path}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]  # a reader writes nothing


@pytest.fixture(scope="module")
def untrained():
    """A VaeModel of abstract parameters (shapes only): every check here runs before them."""
    config = tiny_config()
    graphdef, params = nnx.split(nnx.eval_shape(lambda: networks.init_eager(config)))
    return inference.VaeModel(graphdef, params, config)


def test_inputs_of_the_wrong_shape_are_one_line(untrained):
    with pytest.raises(UserError, match=r"^images must be \[N, 16, 16, 3\] \(NHWC\), got shape"):
        untrained.encode(np.zeros((2, 3, 16, 16), np.float32))
    with pytest.raises(UserError, match=r"^latents must be \[N, 8\], got shape \[2, 4\]$"):
        untrained.decode(np.zeros((2, 4), np.float32))
    with pytest.raises(UserError, match=r"^x_a and x_b differ in shape"):
        untrained.interpolate(np.zeros((2, 16, 16, 3)), np.zeros((3, 16, 16, 3)))
    with pytest.raises(UserError, match=r"^steps must be between 2 and 256, got 1$"):
        untrained.interpolate(np.zeros((16, 16, 3)), np.zeros((16, 16, 3)), steps=1)
    with pytest.raises(UserError, match=r"^max_images must be positive, got 0$"):
        untrained.training_means(0)


def test_the_flow_sampler_without_a_fitted_prior_is_one_line(untrained):
    assert untrained.flow is None and untrained.resolve_sampler("prior") == "prior"
    with pytest.raises(UserError, match=r"^no learned prior for checkpoint None: run python -m"):
        untrained.generate(2, sampler="flow")
