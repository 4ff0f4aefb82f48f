"""Model shapes (the original's tests carried over) and the registry."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from catvae_jax.config import get_config, latent_size
from catvae_jax.model import losses, networks


def _config(name, size, z_dim):
    c = get_config()
    c.model.name, c.image_size, c.model.z_dim = name, size, z_dim
    return c


def test_vae_cats_v1_shapes_like_the_original():
    """A batch of 64 random 128² inputs → (64, 32) mean and log-variance; decoding noise → 128²."""
    graphdef, params = nnx.split(networks.init_compiled(_config("vae_cats_v1", 128, 32)))
    encode = jax.jit(lambda p, x: nnx.merge(graphdef, p).encode(x))
    decode = jax.jit(lambda p, z: nnx.merge(graphdef, p).decode(z))
    mu, logvar = encode(params, jax.random.uniform(jax.random.key(0), (64, 128, 128, 3)))
    assert mu.shape == (64, 32) and logvar.shape == (64, 32)
    out = decode(params, jax.random.normal(jax.random.key(1), (64, 32)))
    assert out.shape == (64, 128, 128, 3)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_vae_cats_v1_parameter_layout_matches_the_original():
    model = networks.init_compiled(_config("vae_cats_v1", 128, 32))
    assert model.encode_layers[3].kernel[...].shape == (4, 4, 128, 256)
    assert model.FC_mean.kernel[...].shape == (1024, 32)
    assert model.fc.kernel[...].shape == (32, 1024)
    assert model.decode_layers[0].kernel[...].shape == (5, 5, 1024, 128)
    assert model.decode_layers[4].kernel[...].shape == (2, 2, 16, 3)


@pytest.mark.parametrize("size", [16, 48])
def test_resvae_any_multiple_of_16(size):
    c = _config("resvae", size, 8)
    c.model.widths = (8, 8, 16, 16)
    model = networks.init_compiled(c)
    x = jnp.full((2, size, size, 3), 0.5)
    mu, logvar = model.encode(x)
    assert mu.shape == (2, 8) and logvar.shape == (2, 8)
    y = model.decode(mu)
    assert y.shape == (2, size, size, 3)
    assert np.all((np.asarray(y) >= 0) & (np.asarray(y) <= 1))


def test_build_is_seeded():
    c = _config("resvae", 16, 4)
    c.model.widths = (4, 4, 4, 4)
    a = networks.init_compiled(c, seed=1).to_stats.kernel[...]
    b = networks.init_compiled(c, seed=1).to_stats.kernel[...]
    d = networks.init_compiled(c, seed=2).to_stats.kernel[...]
    assert np.array_equal(a, b) and not np.array_equal(a, d)


@pytest.mark.parametrize("name", ["resvae", "vae_cats_v1"])
def test_build_in_one_program_equals_op_by_op_init(name):
    """`build` runs every initialiser in one compiled program; same values as eager `make`."""
    c = _config(name, 128 if name == "vae_cats_v1" else 32, 8)
    c.model.widths = (4, 8, 8, 8)
    built, eager = (
        nnx.state(networks.init_compiled(c, seed=3)),
        nnx.state(networks.init_eager(c, seed=3)),
    )
    assert jax.tree.structure(built) == jax.tree.structure(eager)
    for a, b in zip(jax.tree.leaves(built), jax.tree.leaves(eager), strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_hvae_latents_are_a_global_and_a_local_group_drawn_top_down():
    """hvae's latent vector is [z_g (z_dim), ε (local_channels at 2× the bottom grid)]: its
    heads start at the standard normal (the posterior of ε is N(0, I), so its KL is 0), ε moves
    the decoded image, and once the prior head is trained z_g sets where ε's group lands."""
    c = _config("hvae", 32, 8)
    c.model.widths, c.model.local_channels = (8, 8, 16), 3
    assert latent_size(c) == latent_size(c.to_dict()) == 8 + 8 * 8 * 3
    graphdef, params = nnx.split(networks.init_compiled(c))
    encode = jax.jit(lambda p, x: nnx.merge(graphdef, p).encode(x))
    decode = jax.jit(lambda p, z: nnx.merge(graphdef, p).decode(z))
    mu, logvar = encode(params, jax.random.uniform(jax.random.key(0), (2, 32, 32, 3)))
    assert mu.shape == logvar.shape == (2, 8 + 192)
    assert np.array_equal(mu[:, 8:], np.zeros((2, 192))) and not np.any(logvar[:, 8:])
    y = decode(params, mu)
    assert y.shape == (2, 32, 32, 3) and float(y.min()) >= 0 and float(y.max()) <= 1
    assert float(jnp.abs(decode(params, mu.at[:, 8:].set(1.0)) - y).max()) > 1e-3

    # A prior head that is not zero: the local group's mean and spread then depend on z_g.
    kernel = params["prior"]["kernel"]
    kernel[...] = jax.random.normal(jax.random.key(1), kernel[...].shape) * 0.1
    z = jnp.zeros((2, 200)).at[1, :8].set(3.0)
    prior_of = jax.jit(lambda p, z_g: _local_prior(nnx.merge(graphdef, p), z_g))
    stats = prior_of(params, z[:, :8])
    assert stats.shape == (2, 8, 8, 6) and float(jnp.abs(stats[0] - stats[1]).max()) > 1e-3


def test_hvae_draws_its_local_posterior_given_the_global_draw():
    """Training's draw (`losses.posterior_sample` → `HVae.sample_posterior`): the local group's
    posterior depends on which z_g was drawn (NVAE's order), while `encode` gives the one at
    z_g = mu; with no spread in z_g both agree."""
    c = _config("hvae", 16, 4)
    c.model.widths, c.model.local_channels = (8, 8), 2
    graphdef, params = nnx.split(networks.init_compiled(c))
    head = params["posterior"]["kernel"]  # a posterior head that reads its inputs
    head[...] = jax.random.normal(jax.random.key(2), head[...].shape) * 0.1
    draw = jax.jit(lambda p, x, k: losses.posterior_sample(nnx.merge(graphdef, p), x, k))
    encode = jax.jit(lambda p, x: nnx.merge(graphdef, p).encode(x))
    x = jax.random.uniform(jax.random.key(0), (2, 16, 16, 3))
    x_hat, mu_a, logvar = draw(params, x, jax.random.key(1))
    _, mu_b, _ = draw(params, x, jax.random.key(2))
    assert x_hat.shape == x.shape and mu_a.shape == logvar.shape == (2, 4 + 8 * 8 * 2)
    assert np.array_equal(mu_a[:, :4], mu_b[:, :4])  # q(z_g | x): the same Gaussian
    assert float(jnp.abs(mu_a[:, 4:] - mu_b[:, 4:]).max()) > 1e-4  # q(ε | x, z_g): not
    stats = params["to_stats"]["bias"]  # logvar of z_g → −30: the draw is mu itself
    stats[...] = stats[...].at[4:].set(-30.0)
    _, mu_c, _ = draw(params, x, jax.random.key(1))
    np.testing.assert_allclose(mu_c, encode(params, x)[0], atol=1e-5)


def _local_prior(model, z_g):
    """hvae's prior head on the top-down features of z_g: [B, s, s, 2·local_channels]."""
    return model.prior(jax.nn.silu(model.prior_norm(model._top(z_g))))


def test_hvae_decodes_through_resvae_stages():
    """hvae is resvae's networks plus its heads: the same parameters under the same names, so a
    resvae's stage code serves both (resvae's decode is checked against the shipped models by
    tests/e2e/test_pretrained.py)."""
    c = _config("resvae", 32, 8)
    c.model.widths = (8, 8, 16)
    resvae = nnx.state(networks.init_compiled(c, seed=4), nnx.Param)
    c.model.name = "hvae"
    hvae = nnx.state(networks.init_compiled(c, seed=4), nnx.Param)
    extra = {"prior", "prior_norm", "posterior", "posterior_norm", "merge"}
    assert set(hvae) - set(resvae) == extra and set(resvae) <= set(hvae)
