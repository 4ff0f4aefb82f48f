"""The learned prior (catvae_jax/priors/flow.py) on synthetic latents, without training: the
module's inverse and log-determinant, the density of a flow, a fit to non-Gaussian latents that
beats a Gaussian, sampling that follows the density, determinism, and its files: one written
before the flow was an nnx.Module loads unchanged, a damaged one is absent. (Files in a
workdir: tests/priors/test_sampler_files.py.)"""

from __future__ import annotations

import math
import pathlib
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import stats

from catvae_jax import model_file
from catvae_jax.errors import UserError
from catvae_jax.priors import flow, stored

FIT = {"steps": 300, "hidden": 32}  # a small, quick fit
# 200 × 200 cells of 0.05 over [-4, 6]²: the banana below has a negligible mass outside.
EDGES = np.linspace(-4.0, 6.0, 201)
CENTRES = np.stack(np.meshgrid(EDGES[:-1] + 0.025, EDGES[:-1] + 0.025, indexing="ij"), -1)
N_DRAWS = 50_000
# Written by Flow.save before the flow was an nnx.Module (commit 9d00122, z = 4, 3 layers,
# hidden 8), with that code's log-densities of 16 latents and its 16 samples (key 7, T 0.8).
OLD_FILE = pathlib.Path(__file__).parent / "data" / "flow_old_format.npz"
OLD_OUTPUTS = pathlib.Path(__file__).parent / "data" / "flow_old_format_outputs.npz"
OLD_DIGEST = "ab" * 32
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
    perms = np.stack([np.roll(np.arange(d), i + 1) for i in range(num_layers)])
    module = flow.RealNVP(
        loc, scale, perms, flow.init_layers(jax.random.key(0), d, num_layers, hidden)
    )
    graphdef, params, fixed = nnx.split(module, nnx.Param, ...)
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda w: jnp.asarray(spread * rng.normal(size=w.shape), w.dtype), params)
    return flow.Flow(nnx.merge(graphdef, params, fixed), 0, 0, math.nan)


@pytest.fixture(scope="module")
def banana():
    """(a flow fitted to 2000 banana latents, 2000 held-out ones, their Gaussian's NLL)."""
    train, test = _banana(2000, seed=0), _banana(2000, seed=1)
    gaussian = stats.multivariate_normal(train.mean(0), np.cov(train, rowvar=False))
    return flow.fit(train, seed=0, **FIT), test, float(-gaussian.logpdf(test).mean())


def test_the_identity_flow_is_the_diagonal_gaussian():
    loc, scale = np.array([1.0, -2.0, 0.5]), np.array([2.0, 0.5, 1.0])
    z = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32) * 3
    got = np.asarray(log_prob(_hand_made(loc, scale).split(), jnp.asarray(z)))
    want = stats.norm(loc, scale).logpdf(z).sum(-1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    draws = sample(_hand_made(loc, scale).split(), jax.random.key(0), N_DRAWS, 0.5)
    np.testing.assert_allclose(np.mean(draws, 0), loc, atol=0.03)
    np.testing.assert_allclose(np.std(draws, 0), 0.5 * scale, rtol=0.03)  # temperature 0.5


def _cell_mass(fitted: flow.Flow) -> np.ndarray:
    """The flow's probability of each 0.05² cell [200, 200] (its density at the centre × area)."""
    points = jnp.asarray(CENTRES.reshape(-1, 2), jnp.float32)
    return np.exp(np.asarray(log_prob(fitted.split(), points))).reshape(200, 200) * 0.05**2


def test_sampling_inverts_the_map_of_the_density():
    """Change of variables, exactly: x = sample(u) with u = the base noise, so
    log p(x) = log N(u) − log |det ∂x/∂u|. The Jacobian comes from the temperature, which
    scales u element by element: ∂x/∂T at T = 1 is ∂x/∂u · diag(u)."""
    loc, scale = np.array([0.5, -1.0, 2.0, 0.0]), np.array([1.0, 2.0, 0.5, 1.5])
    prior = _hand_made(loc, scale, spread=0.7).split()
    key, n = jax.random.key(3), 64
    base = _hand_made(np.zeros(4), np.ones(4)).split()  # the identity: its draws are u itself
    u = np.asarray(sample(base, key, n, jnp.float32(1.0)))
    x = sample(prior, key, n, jnp.ones((n, 4), jnp.float32))
    jac = jax.jit(jax.jacfwd(lambda t: flow.sample(prior, key, n, t)))(jnp.ones((n, 4)))
    per_row = np.asarray(jac)[np.arange(n), :, np.arange(n), :]  # [n, 4, 4]: rows independent
    log_det = np.linalg.slogdet(per_row)[1] - np.log(np.abs(u)).sum(-1)
    want = stats.norm.logpdf(u).sum(-1) - log_det
    np.testing.assert_allclose(np.asarray(log_prob(prior, x)), want, rtol=1e-4, atol=1e-3)
    assert np.abs(np.asarray(x) - (loc + scale * u)).max() > 0.1  # the couplings do act


def test_a_fitted_density_integrates_to_one(banana):
    fitted, _, _ = banana
    assert _cell_mass(fitted).sum() == pytest.approx(1.0, abs=0.02)


def test_the_fit_beats_a_gaussian_on_non_gaussian_latents(banana):
    fitted, test, gaussian_nll = banana
    nll = float(-np.mean(log_prob(fitted.split(), jnp.asarray(test))))
    assert nll < gaussian_nll - 0.3  # nats per latent, on latents it never saw
    # Its own held-out tenth: also well under the best Gaussian's, near the test figure.
    assert fitted.heldout_nll < gaussian_nll - 0.3 and fitted.heldout_nll == pytest.approx(
        nll, abs=0.2
    )
    assert (fitted.num_images, fitted.num_layers) == (2000, flow.NUM_LAYERS)
    assert len(jax.tree.leaves(nnx.state(fitted.module, nnx.Param))) == 6 * flow.NUM_LAYERS


def test_samples_follow_the_density_and_the_data(banana):
    fitted, test, _ = banana
    draws = np.asarray(sample(fitted.split(), jax.random.key(0), N_DRAWS, jnp.float32(1.0)))
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
    prior = fitted.split()
    warm = np.asarray(sample(prior, jax.random.key(1), N_DRAWS, jnp.float32(1.0)))
    cold = np.asarray(sample(prior, jax.random.key(1), N_DRAWS, jnp.float32(0.3)))
    assert cold.std(0).max() < 0.6 * warm.std(0).min()
    logp = [float(np.mean(log_prob(prior, jnp.asarray(x[:2000])))) for x in (cold, warm)]
    assert logp[0] > logp[1]
    again = np.asarray(sample(prior, jax.random.key(1), N_DRAWS, jnp.float32(1.0)))
    np.testing.assert_array_equal(again, warm)  # deterministic in the key


def test_a_fit_is_deterministic_in_its_seed(banana):
    fitted, _, _ = banana
    again = flow.fit(_banana(2000, seed=0), seed=0, **FIT)
    for name, value in fitted.tensors().items():
        np.testing.assert_array_equal(again.tensors()[name], value)
    assert again.heldout_nll == fitted.heldout_nll


def test_few_latents_have_no_held_out_part_and_one_is_refused():
    small = flow.fit(_banana(10, seed=2), seed=0, num_layers=2, hidden=8, steps=100)
    assert math.isnan(small.heldout_nll) and small.num_images == 10
    assert np.all(np.isfinite(log_prob(small.split(), jnp.asarray(_banana(5, 3)))))
    for bad in (np.zeros((1, 2)), np.zeros(6)):
        with pytest.raises(UserError, match=r"^the flow prior needs at least 2 latent vectors"):
            flow.fit(bad)


def test_the_couplings_and_the_flow_invert():
    fitted = _hand_made(np.array([1.0, -1.0, 0.5, 2.0, 0.0]), np.arange(1.0, 6.0), spread=0.7)
    z = jnp.asarray(np.random.default_rng(1).normal(size=(32, 5)) * 2, jnp.float32)
    for coupling in fitted.module.couplings:
        y, _ = coupling.forward(z)
        assert np.abs(np.asarray(y - z)).max() > 0.1  # each one acts
        np.testing.assert_allclose(coupling.inverse(y), z, atol=1e-5)
    x, _ = fitted.module.forward(z)
    np.testing.assert_allclose(fitted.module.inverse(x), z, atol=1e-4)
    np.testing.assert_allclose(fitted.module.forward(fitted.module.inverse(z))[0], z, atol=1e-4)


def test_the_log_det_is_the_jacobians():
    """forward's log |det ∂x/∂z| against the Jacobian jax.jacfwd takes, row by row, for an odd
    d (halves of 1 and 2 dimensions)."""
    module = _hand_made(np.array([0.5, -1.0, 2.0]), np.array([2.0, 0.5, 1.5]), spread=0.8).module
    z = jnp.asarray(np.random.default_rng(2).normal(size=(8, 3)), jnp.float32)
    _, log_det = module.forward(z)
    jac = jax.vmap(jax.jacfwd(lambda row: module.forward(row[None])[0][0]))(z)  # [8, 3, 3]
    np.testing.assert_allclose(log_det, np.linalg.slogdet(np.asarray(jac))[1], atol=1e-4)
    assert np.ptp(np.asarray(log_det)) > 0.1  # the couplings' scales depend on z


def test_a_file_written_before_the_module_loads_unchanged(tmp_path):
    old = flow.Flow.read(OLD_FILE, 4, OLD_DIGEST)
    assert (old.num_layers, old.num_images, old.params_sha256) == (3, 400, OLD_DIGEST)
    want = np.load(OLD_OUTPUTS)
    got = log_prob(old.split(), jnp.asarray(want["points"]))
    np.testing.assert_allclose(got, want["log_prob"], rtol=1e-6, atol=1e-6)
    drawn = sample(old.split(), jax.random.key(7), 16, jnp.float32(0.8))
    np.testing.assert_allclose(drawn, want["samples"], rtol=1e-6, atol=1e-6)
    old.save(tmp_path / "again.npz")  # the same layout, array for array and byte for byte
    assert (tmp_path / "again.npz").read_bytes() == OLD_FILE.read_bytes()
    # A model file's prior member holds the same arrays (a .catvae's flow is read the same way).
    stored_bytes = model_file.tensors_bytes(old.tensors())
    member = model_file.read_tensors(stored_bytes, "prior.safetensors")
    assert member.keys() == _old_arrays().keys() - {stored.DIGEST_KEY}
    for name, value in flow.Flow.from_arrays(member, 4).tensors().items():
        np.testing.assert_array_equal(value, member[name])


def _old_arrays() -> dict[str, np.ndarray]:
    with np.load(OLD_FILE) as d:
        return {k: d[k] for k in d.files}


DAMAGE = {
    "truncated": None,
    "a weight left out": lambda d: d.pop("w2_1"),
    "a weight of a fourth coupling": lambda d: d.update(w3_0=d["w2_0"]),
    "a kernel of another shape": lambda d: d.update(w1_1=d["w1_1"][:, :4]),
    "hidden sizes that differ": lambda d: d.update(b1_0=np.zeros(9, np.float32)),
    "a non-finite bias": lambda d: d.update(b0_2=np.full(4, np.inf, np.float32)),
    "not permutations": lambda d: d.update(perms=np.zeros((3, 4), np.int32)),
    "another digest": lambda d: d.update(params_sha256=np.array("cd" * 32)),
}


@pytest.mark.parametrize("kind", DAMAGE)
def test_a_damaged_file_is_treated_as_absent(kind, tmp_path, capsys):
    path = tmp_path / "flow_7.npz"
    if DAMAGE[kind] is None:
        path.write_bytes(OLD_FILE.read_bytes()[: OLD_FILE.stat().st_size // 2])
    else:
        arrays = _old_arrays()
        DAMAGE[kind](arrays)
        np.savez(path, **arrays)
        assert zipfile.is_zipfile(path)
    read = stored.read_or_none(
        path, "the learned prior", lambda p: flow.Flow.read(p, 4, OLD_DIGEST), "using the gmm"
    )
    err = capsys.readouterr().err
    assert read is None and "Traceback" not in err
    assert err.startswith(f"warning: ignoring the learned prior {path}: ")
    assert len(err.strip().splitlines()) == 1, err


def test_a_flow_of_one_latent_dimension():
    """z = 1: the first half is empty, the couplings' MLPs have no inputs (a shift and scale
    of their own)."""
    z = np.random.default_rng(4).gamma(2.0, size=(200, 1)).astype(np.float32)
    fitted = flow.fit(z, seed=0, num_layers=2, hidden=4, steps=100)
    assert np.all(np.isfinite(log_prob(fitted.split(), jnp.asarray(z))))
    assert sample(fitted.split(), jax.random.key(0), 5, jnp.float32(1.0)).shape == (5, 1)
