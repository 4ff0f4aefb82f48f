"""The Gaussian mixture prior's pure functions (catvae_jax/priors/gmm.py) on latents drawn from
a known mixture: the fit recovers it, and draws follow it. (Its cache files, gmm_<step>.npz,
are tested with the model.)"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from catvae_jax.errors import UserError
from catvae_jax.priors import gmm

WEIGHTS = np.array([0.5, 0.3, 0.2])
MEANS = np.array([[-6.0, 0.0, 1.0], [6.0, 0.0, -1.0], [0.0, 8.0, 0.0]])
COVS = np.stack(
    [np.diag([1.0, 0.5, 0.2]), [[1.0, 0.8, 0.0], [0.8, 1.0, 0.0], [0.0, 0.0, 0.3]], np.eye(3) * 0.5]
)
sample_latents = jax.jit(gmm.sample_latents, static_argnums=4)


def _mixture_draws(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(latents [n, 3], component of each) from the mixture above."""
    rng = np.random.default_rng(seed)
    comp = rng.choice(3, size=n, p=WEIGHTS)
    z = np.stack([rng.multivariate_normal(MEANS[k], COVS[k]) for k in comp])
    return z.astype(np.float32), comp


def _by_mean(mixture: gmm.GaussianMixture) -> list[int]:
    """The fitted components in the order of MEANS (each matched to the nearest true mean)."""
    return [int(np.argmin(np.linalg.norm(mixture.means - m, axis=1))) for m in MEANS]


@pytest.fixture(scope="module")
def fitted():
    return gmm.fit(_mixture_draws(3000, seed=0)[0], n_components=3, seed=0, max_images=5000)


def test_the_fit_recovers_the_mixture(fitted):
    order = _by_mean(fitted)
    assert sorted(order) == [0, 1, 2]
    np.testing.assert_allclose(fitted.weights[order], WEIGHTS, atol=0.03)
    np.testing.assert_allclose(fitted.means[order], MEANS, atol=0.1)
    np.testing.assert_allclose(fitted.covariances[order], COVS, atol=0.12)
    assert fitted.weights.dtype == fitted.means.dtype == np.float32
    assert (fitted.n_components, fitted.num_images, fitted.max_images) == (3, 3000, 5000)


def test_arrays_are_log_weights_and_cholesky_factors(fitted):
    log_weights, means, chol = fitted.arrays()
    np.testing.assert_allclose(np.exp(log_weights), fitted.weights, rtol=1e-6)
    np.testing.assert_array_equal(means, fitted.means)
    np.testing.assert_allclose(chol @ chol.transpose(0, 2, 1), fitted.covariances, atol=1e-5)
    assert np.all(np.triu(chol, 1) == 0)  # lower triangular


def test_draws_follow_the_mixture_and_the_temperature(fitted):
    arrays = tuple(jnp.asarray(a) for a in fitted.arrays())
    key = jax.random.key(0)
    draws = np.asarray(sample_latents(key, *arrays, 30_000, jnp.float32(1.0)))
    order = _by_mean(fitted)
    nearest = np.argmin(((draws[:, None] - fitted.means[order][None]) ** 2).sum(-1), axis=1)
    np.testing.assert_allclose(np.bincount(nearest, minlength=3) / len(draws), WEIGHTS, atol=0.02)
    for k in range(3):  # each component's draws have its covariance
        np.testing.assert_allclose(np.cov(draws[nearest == k], rowvar=False), COVS[k], atol=0.1)
    cold = np.asarray(sample_latents(key, *arrays, 30_000, jnp.float32(0.5)))
    # The same key: the same components, each draw pulled halfway to its component's mean.
    means = fitted.means[order][nearest]
    np.testing.assert_allclose(cold - means, 0.5 * (draws - means), atol=1e-4)
    again = np.asarray(sample_latents(key, *arrays, 30_000, jnp.float32(1.0)))
    np.testing.assert_array_equal(again, draws)


def test_components_are_capped_at_one_per_20_latents_and_the_fit_is_seeded():
    assert [gmm.components(200, n) for n in (4096, 1000, 59, 5)] == [200, 50, 2, 1]
    assert gmm.components(3, 4096) == 3
    z, _ = _mixture_draws(100, seed=1)
    assert gmm.fit(z, n_components=10).n_components == 5
    assert gmm.fit(z[:2], n_components=10).n_components == 1
    a, b = gmm.fit(z, 3, seed=4), gmm.fit(z, 3, seed=4)
    np.testing.assert_array_equal(a.means, b.means)
    np.testing.assert_array_equal(a.covariances, b.covariances)


@pytest.mark.parametrize(("components", "max_images"), [(0, 0), (-1, 0), (3, -1)])
def test_bad_settings_are_one_line(components, max_images):
    with pytest.raises(UserError) as refused:
        gmm.fit(np.zeros((5, 2)), components, max_images=max_images)
    assert str(refused.value) == (
        f"gmm components must be positive and max_images >= 0, got {components}, {max_images}"
    )


@pytest.mark.parametrize(("dtype", "rtol"), [("float32", 1e-5), ("float16", 2e-3)])
def test_the_packed_factors_read_back_as_the_mixture(fitted, dtype, rtol):
    """A model file stores each covariance as its principal directions above its floor (the
    smallest eigenvalue at least), as float16 in a float16 file; they read back as the same
    covariances."""
    packed = fitted.packed(dtype)
    assert "covariances" not in packed and packed["factors"].shape == (6, 3)
    assert packed["ranks"].tolist() == [2, 2, 2]
    np.testing.assert_allclose(packed["floor"], np.linalg.eigvalsh(fitted.covariances)[:, 0])
    assert packed["factors"].dtype == np.dtype(dtype) and packed["means"].dtype == np.float32
    back = gmm.GaussianMixture.from_arrays(packed, z_dim=3)
    np.testing.assert_allclose(back.covariances, fitted.covariances, rtol=rtol, atol=rtol)
    np.testing.assert_array_equal(back.means, fitted.means)
    assert (back.n_components, back.num_images, back.max_images) == (3, 3000, 5000)


def test_a_mixture_fitted_to_few_latents_per_component_packs_into_fewer_numbers():
    """A covariance fitted to n latents in z > n dimensions has n − 1 directions above the
    fit's regularisation: 60 latents in 3 clusters over 32 dimensions pack into 57 rows of 32,
    not 3 triangles of 528, and read back as the fitted covariances."""
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=20.0, size=(3, 32))
    latents = np.concatenate([c + rng.normal(size=(20, 32)) for c in centres])
    mixture = gmm.fit(latents, n_components=3, seed=0)
    packed = mixture.packed()
    assert packed["ranks"].tolist() == [19, 19, 19] and packed["factors"].shape == (57, 32)
    np.testing.assert_allclose(packed["floor"], 1e-5, rtol=1e-3)  # the fit's reg_covar
    back = gmm.GaussianMixture.from_arrays(packed, z_dim=32)
    np.testing.assert_allclose(back.covariances, mixture.covariances, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("change", "refusal"),
    [
        ({"ranks": np.array([2, 2, 1], np.int32)}, r"'factors' has shape \[6, 3\], expected \[5"),
        ({"ranks": np.array([3, 2, 1], np.int32)}, "its ranks are not between 0 and 2"),
        ({"ranks": np.array([2.0, 2.0, 2.0])}, "'ranks' has dtype float64"),
        ({"floor": np.zeros(3, np.float32)}, "its floors are not positive"),
        ({"factors": np.full((6, 3), np.nan, np.float32)}, "'factors' holds non-finite values"),
    ],
)
def test_a_damaged_packed_mixture_is_refused(fitted, change, refusal):
    with pytest.raises(gmm.stored.Unusable, match=refusal):
        gmm.GaussianMixture.from_arrays({**fitted.packed(), **change})


def test_model_files_of_version_2_hold_packed_cholesky_factors_that_still_read(fitted):
    _, _, chol = fitted.arrays()
    version2 = {
        "weights": fitted.weights,
        "means": fitted.means,
        "cholesky": chol[:, *np.tril_indices(3)].astype(np.float16),
        "num_images": np.asarray(3000),
        "max_images": np.asarray(5000),
    }
    back = gmm.GaussianMixture.from_arrays(version2, z_dim=3)
    np.testing.assert_allclose(back.covariances, fitted.covariances, rtol=2e-3, atol=2e-3)
    with pytest.raises(gmm.stored.Unusable, match=r"'cholesky' has shape \[3, 5\]"):
        gmm.GaussianMixture.from_arrays({**version2, "cholesky": version2["cholesky"][:, :5]})
    singular = {**version2, "cholesky": np.zeros_like(version2["cholesky"])}
    with pytest.raises(gmm.stored.Unusable, match="not positive definite"):
        gmm.GaussianMixture.from_arrays(singular)


def test_a_packed_mixture_too_large_to_unpack_is_refused(fitted, monkeypatch):
    """A model file is untrusted: its factors unpack to float32 covariances [K, z, z], so a
    mixture over the limit is refused before they are allocated."""
    packed = fitted.packed("float16")
    monkeypatch.setattr(gmm, "MAX_COVARIANCE_BYTES", 3 * 3 * 3 * 4 - 1)  # one byte short
    with pytest.raises(gmm.stored.Unusable, match=r"its 3 covariances of 3×3 are over 1 GiB"):
        gmm.GaussianMixture.from_arrays(packed)
    monkeypatch.setattr(gmm, "MAX_COVARIANCE_BYTES", 3 * 3 * 3 * 4)
    assert gmm.GaussianMixture.from_arrays(packed).n_components == 3
