"""The learned prior's pure functions (catvae_jax/priors/flow.py) on synthetic latents: the
density of a flow, a fit to non-Gaussian latents that beats a Gaussian, sampling that follows
the density, and determinism. (Its files, flow_<step>.npz, are tested with the model.)"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from catvae_jax.errors import UserError
from catvae_jax.priors import flow

FIT = {"steps": 300, "hidden": 32}  # a small, quick fit
# 200 × 200 cells of 0.05 over [-4, 6]²: the banana below has a negligible mass outside.
EDGES = np.linspace(-4.0, 6.0, 201)
CENTRES = np.stack(np.meshgrid(EDGES[:-1] + 0.025, EDGES[:-1] + 0.025, indexing="ij"), -1)
N_DRAWS = 50_000
log_prob = jax.jit(flow.log_prob)  # one compiled program per shape, not op by op
sample = jax.jit(flow.sample, static_argnums=2)


def _banana(n: int, seed: int) -> np.ndarray:
    """Latents [n, 2] on a bent ridge: z2 = z1² / 2 + noise (far from any Gaussian)."""
    rng = np.random.default_rng(seed)
    z1 = rng.normal(size=n)
    return np.stack([z1, 0.5 * z1**2 + 0.3 * rng.normal(size=n)], 1).astype(np.float32)


def _hand_made(loc, scale, spread: float = 0.0, num_layers: int = 3, hidden: int = 4) -> flow.Flow:
    """A flow of random couplings (weights ~ N(0, spread²)); spread 0 is the identity, a
    diagonal Gaussian. Its permutations roll the dimensions (for d ≥ 3, not their own inverse)."""
    d = len(loc)
    d1, d2 = d // 2, d - d // 2
    shapes = [(d1, hidden), (hidden,), (hidden, hidden), (hidden,), (hidden, 2 * d2), (2 * d2,)]
    rng = np.random.default_rng(0)
    weights = {}
    for i in range(num_layers):
        for k in range(3):
            for name, shape in ((f"w{i}_{k}", shapes[2 * k]), (f"b{i}_{k}", shapes[2 * k + 1])):
                weights[name] = (spread * rng.normal(size=shape)).astype(np.float32)
    perms = np.stack([np.roll(np.arange(d), i + 1) for i in range(num_layers)]).astype(np.int32)
    loc, scale = np.asarray(loc, np.float32), np.asarray(scale, np.float32)
    return flow.Flow(loc, scale, weights, perms, 0, 0, math.nan)


@pytest.fixture(scope="module")
def banana():
    """(a flow fitted to 2000 banana latents, 2000 held-out ones, their Gaussian's NLL)."""
    train, test = _banana(2000, seed=0), _banana(2000, seed=1)
    gaussian = stats.multivariate_normal(train.mean(0), np.cov(train, rowvar=False))
    return flow.fit(train, seed=0, **FIT), test, float(-gaussian.logpdf(test).mean())


def test_the_identity_flow_is_the_diagonal_gaussian():
    loc, scale = np.array([1.0, -2.0, 0.5]), np.array([2.0, 0.5, 1.0])
    z = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32) * 3
    got = np.asarray(log_prob(_hand_made(loc, scale).arrays(), jnp.asarray(z)))
    want = stats.norm(loc, scale).logpdf(z).sum(-1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    draws = sample(_hand_made(loc, scale).arrays(), jax.random.key(0), N_DRAWS, 0.5)
    np.testing.assert_allclose(np.mean(draws, 0), loc, atol=0.03)
    np.testing.assert_allclose(np.std(draws, 0), 0.5 * scale, rtol=0.03)  # temperature 0.5


def _cell_mass(fitted: flow.Flow) -> np.ndarray:
    """The flow's probability of each 0.05² cell [200, 200] (its density at the centre × area)."""
    points = jnp.asarray(CENTRES.reshape(-1, 2), jnp.float32)
    return np.exp(np.asarray(log_prob(fitted.arrays(), points))).reshape(200, 200) * 0.05**2


def test_sampling_inverts_the_map_of_the_density():
    """Change of variables, exactly: x = sample(u) with u = the base noise, so
    log p(x) = log N(u) − log |det ∂x/∂u|. The Jacobian comes from the temperature, which
    scales u element by element: ∂x/∂T at T = 1 is ∂x/∂u · diag(u)."""
    loc, scale = np.array([0.5, -1.0, 2.0, 0.0]), np.array([1.0, 2.0, 0.5, 1.5])
    arrays = _hand_made(loc, scale, spread=0.7).arrays()
    key, n = jax.random.key(3), 64
    base = _hand_made(np.zeros(4), np.ones(4)).arrays()  # the identity: its draws are u itself
    u = np.asarray(sample(base, key, n, jnp.float32(1.0)))
    x = sample(arrays, key, n, jnp.ones((n, 4), jnp.float32))
    jac = jax.jit(jax.jacfwd(lambda t: flow.sample(arrays, key, n, t)))(jnp.ones((n, 4)))
    per_row = np.asarray(jac)[np.arange(n), :, np.arange(n), :]  # [n, 4, 4]: rows independent
    log_det = np.linalg.slogdet(per_row)[1] - np.log(np.abs(u)).sum(-1)
    want = stats.norm.logpdf(u).sum(-1) - log_det
    np.testing.assert_allclose(np.asarray(log_prob(arrays, x)), want, rtol=1e-4, atol=1e-3)
    assert np.abs(np.asarray(x) - (loc + scale * u)).max() > 0.1  # the couplings do act


def test_a_fitted_density_integrates_to_one(banana):
    fitted, _, _ = banana
    assert _cell_mass(fitted).sum() == pytest.approx(1.0, abs=0.02)


def test_the_fit_beats_a_gaussian_on_non_gaussian_latents(banana):
    fitted, test, gaussian_nll = banana
    nll = float(-np.mean(log_prob(fitted.arrays(), jnp.asarray(test))))
    assert nll < gaussian_nll - 0.3  # nats per latent, on latents it never saw
    # Its own held-out tenth: also well under the best Gaussian's, near the test figure.
    assert fitted.heldout_nll < gaussian_nll - 0.3 and fitted.heldout_nll == pytest.approx(
        nll, abs=0.2
    )
    assert (fitted.num_images, fitted.num_layers) == (2000, flow.NUM_LAYERS)
    assert len(fitted.weights) == 6 * flow.NUM_LAYERS


def test_samples_follow_the_density_and_the_data(banana):
    fitted, test, _ = banana
    draws = np.asarray(sample(fitted.arrays(), jax.random.key(0), N_DRAWS, jnp.float32(1.0)))
    # The bend is kept: z2 follows z1² (a Gaussian would have no such relation).
    assert np.corrcoef(draws[:, 0] ** 2, draws[:, 1])[0, 1] > 0.8
    np.testing.assert_allclose(draws.mean(0), test.mean(0), atol=0.1)
    # The draws' histogram in 0.5² bins matches the density's mass there (total variation).
    edges = EDGES[::10]
    counts, _, _ = np.histogram2d(draws[:, 0], draws[:, 1], bins=[edges, edges])
    mass = _cell_mass(fitted).reshape(20, 10, 20, 10).sum((1, 3))
    assert 0.5 * np.abs(counts / len(draws) - mass).sum() < 0.05


def test_a_colder_temperature_draws_closer_to_the_mode(banana):
    fitted, _, _ = banana
    arrays = fitted.arrays()
    warm = np.asarray(sample(arrays, jax.random.key(1), N_DRAWS, jnp.float32(1.0)))
    cold = np.asarray(sample(arrays, jax.random.key(1), N_DRAWS, jnp.float32(0.3)))
    assert cold.std(0).max() < 0.6 * warm.std(0).min()
    logp = [float(np.mean(log_prob(arrays, jnp.asarray(x[:2000])))) for x in (cold, warm)]
    assert logp[0] > logp[1]
    again = np.asarray(sample(arrays, jax.random.key(1), N_DRAWS, jnp.float32(1.0)))
    np.testing.assert_array_equal(again, warm)  # deterministic in the key


def test_a_fit_is_deterministic_in_its_seed(banana):
    fitted, _, _ = banana
    again = flow.fit(_banana(2000, seed=0), seed=0, **FIT)
    for name, value in fitted.weights.items():
        np.testing.assert_array_equal(again.weights[name], value)
    np.testing.assert_array_equal(again.perms, fitted.perms)
    assert again.heldout_nll == fitted.heldout_nll


def test_few_latents_have_no_held_out_part_and_one_is_refused():
    small = flow.fit(_banana(10, seed=2), seed=0, num_layers=2, hidden=8, steps=100)
    assert math.isnan(small.heldout_nll) and small.num_images == 10
    assert np.all(np.isfinite(log_prob(small.arrays(), jnp.asarray(_banana(5, 3)))))
    for bad in (np.zeros((1, 2)), np.zeros(6)):
        with pytest.raises(UserError, match=r"^the flow prior needs at least 2 latent vectors"):
            flow.fit(bad)
