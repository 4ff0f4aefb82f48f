"""Model shapes (the original's tests carried over) and the registry."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from catvae_jax.config import get_config
from catvae_jax.model import networks


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
