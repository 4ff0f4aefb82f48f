"""Sample-quality metrics: FD, KID, precision/recall and diversity on known cases, the restricted
unpickler of the AlexNet weights, and the sample keys of `evaluate`."""

from __future__ import annotations

import json
import os
import pickle
import shutil

import numpy as np
import pytest
from conftest import run_cli

import catvae_jax
from catvae_jax import sharing
from catvae_jax.evaluation import sample_quality as sq
from catvae_jax.priors import gmm


@pytest.fixture(scope="module")
def net():
    return sq.FeatureNet(batch_size=8)


def _gaussian(n: int, d: int = 16, shift: float = 0.0, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)) + shift


# --- the metrics on known cases ------------------------------------------------------------------


def test_fd_is_zero_for_a_set_with_itself_and_grows_with_noise():
    a = _gaussian(500)
    assert sq.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    noisy = [sq.frechet_distance(a, a + _gaussian(500, seed=1) * s) for s in (0.1, 0.5, 1.0)]
    assert 0 < noisy[0] < noisy[1] < noisy[2]
    # A known case: N(0, I) vs N(m, 4 I) in d dims has FD = |m|² + d (1 + 4 − 2·2) = |m|² + d.
    b = _gaussian(20_000, seed=2) * 2.0 + 0.5
    want = 16 * 0.25 + 16 * 1.0
    assert sq.frechet_distance(_gaussian(20_000, seed=3), b) == pytest.approx(want, rel=0.05)


def test_kid_is_near_zero_for_one_distribution_and_positive_for_shifted():
    a, b = _gaussian(400, seed=0), _gaussian(400, seed=1)
    same, same_std = sq.kernel_inception_distance(a, b)
    shifted, _ = sq.kernel_inception_distance(a, _gaussian(400, shift=1.0, seed=1))
    assert abs(same) < 3 * same_std + 1e-3 and same_std > 0
    assert shifted > 0.1 > 10 * abs(same)
    assert sq.kernel_inception_distance(a, b) == (same, same_std)  # seeded subsets


def test_precision_recall_of_two_gaussians_with_known_overlap():
    """Fake = half on the real Gaussian, half far away: precision ≈ ½, recall ≈ 1; swapped
    roles give the reverse. Disjoint sets give 0 and 0."""
    real = _gaussian(1000, d=2, seed=0)
    half = np.concatenate([_gaussian(500, d=2, seed=1), _gaussian(500, d=2, shift=20.0, seed=2)])
    precision, recall = sq.precision_recall(real, half)
    assert precision == pytest.approx(0.5, abs=0.05) and recall > 0.9
    precision, recall = sq.precision_recall(half, real)
    assert precision > 0.9 and recall == pytest.approx(0.5, abs=0.05)
    assert sq.precision_recall(real, real + 100.0) == (0.0, 0.0)


def test_diversity_is_the_mean_pairwise_lpips_and_zero_when_collapsed(net):
    x = np.random.default_rng(0).random((6, 16, 16, 3)).astype(np.float32)
    i, j = np.triu_indices(6, 1)
    assert net(x).diversity == pytest.approx(net.lpips(x[i], x[j]).mean(), rel=1e-4)
    assert net(np.repeat(x[:1], 5, axis=0)).diversity == pytest.approx(0.0, abs=1e-6)
    assert net.lpips(x, x) == pytest.approx(np.zeros(6), abs=1e-6)
    features = net(x).pooled
    assert features.shape == (6, 512) and np.all(features >= 0)  # ReLU outputs, averaged


# --- the weights' unpickler ----------------------------------------------------------------------


class _RunsCode:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_restricted_unpickler_refuses_code_and_reads_arrays(tmp_path):
    target = tmp_path / "pwned"
    evil = pickle.dumps({"w": _RunsCode(str(target))})
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to load posix\.mkdir"):
        sq.restricted_loads(evil)
    assert not target.exists()
    arrays = {"a": {"k": np.arange(6, dtype=np.float32).reshape(2, 3)}}
    np.testing.assert_array_equal(
        sq.restricted_loads(pickle.dumps(arrays))["a"]["k"], arrays["a"]["k"]
    )
    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps({"a": np.zeros(2, np.float32), "b": "text"}))
    with pytest.raises(pickle.UnpicklingError, match="not a float32 array"):
        sq.read_weights(path)
    weights = sq.read_weights()  # the shipped AlexNet: 5 convs and 5 LPIPS heads
    assert weights["AlexNet_0/Conv_0/kernel"].shape == (11, 11, 3, 64) and len(weights) == 15


# --- evaluate ------------------------------------------------------------------------------------


def test_sample_metrics_of_a_model_are_deterministic(trained_workdir, net):
    model = catvae_jax.load(trained_workdir[0])
    a = sq.evaluate(model, "test", num_samples=16, sampler="prior", seed=3, net=net, vgg=False)
    assert list(a) == list(sq.KEYS)
    again = sq.evaluate(model, "test", num_samples=16, sampler="prior", seed=3, net=net, vgg=False)
    assert a == again
    assert a["sample_metrics_n"] == a["reference_n"] == 16 and a["heldout_n"] == 16
    assert a["sampler"] == "prior" and "128x128" in a["sample_features"]
    assert 0 <= a["precision"] <= 1 and 0 <= a["recall"] <= 1 and a["diversity"] > 0
    assert 0 <= a["fd_floor"] < a["fd"] and a["fd_recon"] > 0
    other = sq.evaluate(model, "test", num_samples=16, sampler="prior", seed=4, net=net, vgg=False)
    assert other["fd"] != a["fd"]


def test_vgg16_features_are_a_second_space(net):
    """VGG16 features (13 convolutions, read by the restricted unpickler) are 1024-d,
    non-negative (after ReLU), deterministic, and another space than AlexNet's. The VGG16 keys
    of a model's evaluation are checked through the CLI (below): one evaluation, not three."""
    vgg = sq.VggFeatureNet(batch_size=8)
    weights = sq.read_weights(sq.weights_path("vgg16"))
    assert sum(k.startswith("VGG16_0/Conv_") for k in weights) == 26
    images = np.random.default_rng(0).integers(0, 256, (12, 16, 16, 3), np.uint8)
    features = vgg(images).pooled
    assert features.shape == (12, 1024) and features.min() >= 0 and features.std() > 0
    assert np.array_equal(vgg(images).pooled, features)
    assert sq.frechet_distance(features, features) == pytest.approx(0.0, abs=1e-3)
    alex = net(images).pooled
    assert alex.shape[1] != features.shape[1]
    assert vgg(images[:6]).diversity is None and net(images[:6]).diversity > 0


def test_evaluate_cli_sample_keys_without_the_likelihood(trained_workdir, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(trained_workdir[0], workdir)
    args = ("--workdir", str(workdir), "--nolikelihood", "--num_samples", "12")
    proc = run_cli("catvae_jax.evaluate", *args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((workdir / "eval.json").read_text())
    assert list(result) == ["split", "checkpoint_step", *sq.KEYS, *sq.VGG_KEYS]
    assert result["sampler"] == "flow"  # auto: the workdir's learned prior, fitted in training
    # the VGG16 keys come from the same image sets as the AlexNet ones
    assert "VGG16" in result["sample_features_vgg"] and result["fd_vgg"] != result["fd"]
    assert 0 <= result["fd_floor_vgg"] < result["fd_vgg"] and result["fd_recon_vgg"] > 0
    assert 0 <= result["precision_vgg"] <= 1 and 0 <= result["recall_vgg"] <= 1
    assert "FD" in proc.stdout and "bits/dim" not in proc.stdout and "VGG16" in proc.stdout
    out = tmp_path / "gmm.json"
    proc = run_cli("catvae_jax.evaluate", *args[:3], "--num_samples", "8", "--novgg",
                   "--sampler", "gmm", "--gmm_components", "3", "--out", str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(out.read_text())["sampler"] == "gmm"
    assert "mixture of up to 3 components" in proc.stdout
    assert gmm.GaussianMixture.read(next(workdir.glob("gmm_*.npz"))).n_components == 3
    catvae_jax.load(workdir).fit_gmm()  # the run's K (200, 4 on 96 latents): the export's
    shipped = tmp_path / "m.catvae"
    sharing.export(workdir, shipped)
    assert catvae_jax.load(shipped).gmm.n_components == 4
    proc = run_cli("catvae_jax.evaluate", "--workdir", str(shipped), *args[2:3], "--novgg",
                   "--num_samples", "8", "--sampler", "gmm", "--gmm_components", "3",
                   "--out", str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "mixture of up to 3 components" in proc.stdout
    proc = run_cli("catvae_jax.evaluate", *args[:2], "--nolikelihood", "--num_samples", "0")
    assert proc.returncode == 2 and proc.stderr.startswith("error: nothing to evaluate")
