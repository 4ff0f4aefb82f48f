"""The evaluation command and its metrics: eval.json keys and types, the decoder likelihood,
determinism, active units and KL per dimension, and MS-SSIM."""

from __future__ import annotations

import functools
import json
import math
import shutil

import dm_pix as pix
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import run_cli

import catvae_jax
from catvae_jax import data
from catvae_jax.errors import UserError
from catvae_jax.evaluation import likelihood, sample_quality
from catvae_jax.model.ssim import gaussian_filter_fn, ms_ssim, ms_ssim_scales, ssim


@pytest.fixture(scope="module")
def model(trained_workdir):
    return catvae_jax.load(trained_workdir[0])


# --- the command -------------------------------------------------------------------------------


def test_evaluate_cli_writes_eval_json(trained_workdir, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(trained_workdir[0], workdir)
    args = ("--workdir", str(workdir), "--iw_samples", "4", "--num_samples", "16", "--novgg")
    proc = run_cli("catvae_jax.evaluate", *args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "bits/dim" in proc.stdout and "MS-SSIM (1 scales)" in proc.stdout
    # each long part says what it does when it starts, and its time when it ends
    said = [line for line in proc.stdout.splitlines() if line.endswith((" ...", " s"))]
    assert said[0].startswith("likelihood: the test split, 4 importance samples per image")
    assert said[1].startswith("likelihood: done in ")
    assert said[2].startswith("sample quality: AlexNet features of up to 16 training images")
    assert said[3].startswith("sample quality: done in ") and len(said) == 4
    result = json.loads((workdir / "eval.json").read_text())
    assert list(result) == [*likelihood.KEYS, *sample_quality.KEYS]  # the 14 keys stay first
    result = {k: result[k] for k in likelihood.KEYS}
    types = {
        "split": str, "num_examples": int, "checkpoint_step": int, "neg_elbo_nats": float,
        "bits_per_dim": float, "iw_nll_nats": float, "iw_samples": int, "ssim": float,
        "psnr": float, "ms_ssim": float, "ms_ssim_scales": int, "kl_per_dim": list,
        "active_units": int, "likelihood": str,
    }  # fmt: skip
    assert set(types) == set(result)
    for key, kind in types.items():
        assert type(result[key]) is kind, (key, result[key])
    assert result["split"] == "test" and result["num_examples"] == 16
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    best = min((r for r in rows if "val_loss" in r), key=lambda r: r["val_loss"])
    assert result["checkpoint_step"] == best["step"]  # evaluate reads the "best" checkpoint
    assert result["iw_samples"] == 4 and result["ms_ssim_scales"] == 1
    assert len(result["kl_per_dim"]) == 8 and all(v >= 0 for v in result["kl_per_dim"])
    assert 0 <= result["active_units"] <= 8
    assert 0 < result["ssim"] < 1 and 0 < result["ms_ssim"] < 1 and 5 < result["psnr"] < 60
    assert "discretized Gaussian" in result["likelihood"] and "sigma = " in result["likelihood"]
    dims = 16 * 16 * 3
    assert result["bits_per_dim"] == pytest.approx(result["iw_nll_nats"] / (dims * math.log(2)))
    assert 0 < result["bits_per_dim"] < 8.5  # a proper pmf on 8-bit values: ≈ 8 is "uniform"
    assert result["iw_nll_nats"] < result["neg_elbo_nats"]


def test_evaluate_cli_errors(trained_workdir):
    proc = run_cli("catvae_jax.evaluate", "--workdir", str(trained_workdir[0]), "--iw_samples", "0")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: iw_samples must be between 1 and 10000, got 0"
    )


# --- the metrics -------------------------------------------------------------------------------


def test_evaluate_is_deterministic_and_follows_the_seed(model):
    a = likelihood.evaluate(model, "validation", iw_samples=3, seed=0)
    assert a == likelihood.evaluate(model, "validation", iw_samples=3, seed=0)
    b = likelihood.evaluate(model, "validation", iw_samples=3, seed=1)
    assert a["iw_nll_nats"] != b["iw_nll_nats"]
    assert a["ssim"] == b["ssim"]  # reconstructions at the posterior mean: no noise
    with pytest.raises(UserError, match="unknown split"):
        likelihood.evaluate(model, "dev")
    with pytest.raises(UserError, match="iw_samples"):
        likelihood.evaluate(model, "validation", iw_samples=0)


def test_kl_per_dim_and_active_units_from_the_encoder(model):
    result = likelihood.evaluate(model, "validation", iw_samples=1, seed=0, max_examples=12)
    x = data.load_split(model.config, "validation")[:12].astype(np.float32) / 255.0
    mu, logvar = model.encode(x)
    kl = 0.5 * (mu**2 + np.exp(logvar) - 1.0 - logvar)
    np.testing.assert_allclose(result["kl_per_dim"], kl.mean(0), rtol=1e-4, atol=1e-6)
    assert result["active_units"] == int(np.sum(mu.var(0) > 0.01))
    assert result["num_examples"] == 12


@pytest.mark.parametrize("mean", [0.0, 0.37, 1.0])
@pytest.mark.parametrize("sigma", [1e-3, 0.05, 2.0])
def test_discretized_gaussian_is_a_pmf_over_256_levels(mean, sigma):
    levels = jnp.arange(256, dtype=jnp.uint8).reshape(256, 1, 1, 1)
    log_p = likelihood.discretized_gaussian_log_prob(levels, jnp.full(levels.shape, mean), sigma)
    assert np.all(np.isfinite(log_p)) or sigma == 1e-3  # far bins of a sharp one may underflow
    total = float(jax.scipy.special.logsumexp(log_p))
    assert total == pytest.approx(0.0, abs=1e-4)


def test_discretized_gaussian_matches_the_density_for_wide_sigma():
    x = jnp.array([100, 130], jnp.uint8).reshape(2, 1, 1, 1)
    mean, sigma = jnp.full(x.shape, 0.45), 0.1
    got = np.asarray(likelihood.discretized_gaussian_log_prob(x, mean, sigma))
    v = np.array([100, 130]) / 255.0
    density = -0.5 * ((v - 0.45) / sigma) ** 2 - math.log(sigma * math.sqrt(2 * math.pi))
    np.testing.assert_allclose(got, density - math.log(255.0), atol=1e-3)


# --- MS-SSIM -----------------------------------------------------------------------------------


def test_ms_ssim_scales_follow_the_image_size():
    assert [ms_ssim_scales(s) for s in (11, 16, 22, 32, 64, 128, 175, 176, 512)] == [
        1, 1, 2, 2, 3, 4, 4, 5, 5,
    ]  # fmt: skip
    with pytest.raises(ValueError, match="at least 11"):
        ms_ssim_scales(10)


def _noise(shape, seed):
    return jax.random.uniform(jax.random.key(seed), shape)


_ms_ssim = jax.jit(ms_ssim)  # one compile per shape (op-by-op dispatch is slow on CPU)


@pytest.mark.parametrize("size", [16, 64, 176])
def test_ms_ssim_of_identical_images_is_one(size):
    a = _noise((2, size, size, 3), 0).at[1].set(0.4)  # noise, and a flat image
    np.testing.assert_array_equal(_ms_ssim(a, a), np.ones(2, np.float32))


_ms_ssim_and_grad = jax.jit(jax.value_and_grad(lambda a, b: jnp.sum(ms_ssim(a, b)), argnums=1))


@pytest.mark.parametrize("pair", ["flat_flat", "flat_noise", "anti_correlated"])
def test_ms_ssim_gradients_are_finite(pair):
    noise = _noise((2, 64, 64, 3), 1)
    a, b = {
        "flat_flat": (jnp.full_like(noise, 0.5), jnp.full_like(noise, 0.2)),
        "flat_noise": (jnp.full_like(noise, 0.5), noise),
        "anti_correlated": (noise, 1.0 - noise),
    }[pair]
    value, grad = _ms_ssim_and_grad(a, b)
    assert np.isfinite(float(value)) and np.all(np.isfinite(grad))
    assert 0.0 <= float(value) <= 2.0
    if pair == "anti_correlated":  # negative contrast terms are clipped, not raised to a power
        assert float(value) < 0.1


def test_ms_ssim_with_one_scale_is_ssim():
    a = _noise((3, 16, 16, 3), 2)
    b = jnp.clip(a + 0.1 * jax.random.normal(jax.random.key(3), a.shape), 0, 1)
    np.testing.assert_allclose(_ms_ssim(a, b), jax.jit(ssim)(a, b), atol=1e-5)


_pix_ssim = jax.jit(  # pix's SSIM formula, with the (separately tested) fast filter to compile fast
    functools.partial(pix.ssim, filter_fn=gaussian_filter_fn()), static_argnames="k1"
)


def test_ms_ssim_matches_a_reference_built_from_pix_ssim():
    """On grey images (channels equal), cs of a scale is pix.ssim with the luminance constant so
    large that its term is 1; the product of the scales' powers is MS-SSIM."""
    rng = np.random.default_rng(4)
    grey = np.kron(rng.random((2, 16, 16, 1)), np.ones((1, 4, 4, 1)))  # blocky, 64×64
    noisy = np.clip(grey + 0.08 * rng.standard_normal(grey.shape), 0, 1)
    a = jnp.asarray(np.repeat(grey, 3, axis=-1), jnp.float32)
    b = jnp.asarray(np.repeat(noisy, 3, axis=-1), jnp.float32)
    weights = np.array([0.0448, 0.2856, 0.3001])
    weights /= weights.sum()
    half = lambda z: z.reshape(2, z.shape[1] // 2, 2, z.shape[2] // 2, 2, 3).mean(axis=(2, 4))
    want, x, y = 1.0, a, b
    for j in range(3):
        if j:
            x, y = half(x), half(y)
        term = _pix_ssim(x, y, k1=0.01 if j == 2 else 1e4)  # k1 = 1e4: luminance term ≡ 1
        want = want * np.asarray(term) ** weights[j]
    np.testing.assert_allclose(_ms_ssim(a, b), want, rtol=2e-3)
    assert ms_ssim(a, b).shape == (2,) and ms_ssim(a[0], b[0]).shape == ()


def test_ms_ssim_falls_with_noise():
    rng = np.random.default_rng(5)
    a = np.kron(rng.random((1, 16, 16, 3)), np.ones((1, 4, 4, 1)))
    noise = rng.standard_normal(a.shape)
    values = [
        float(
            _ms_ssim(
                jnp.asarray(a, jnp.float32), jnp.asarray(np.clip(a + s * noise, 0, 1), jnp.float32)
            )[0]
        )
        for s in (0.0, 0.05, 0.15, 0.4)
    ]
    assert values[0] == 1.0 and values == sorted(values, reverse=True) and values[-1] < 0.9
