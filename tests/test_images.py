"""The low-level image helpers every module shares: pad_batch and to_unit."""

import jax
import numpy as np

from catvae_jax import images


def test_pad_batch_appends_zero_images_to_a_short_batch_only():
    x = np.full((3, 2, 2, 3), 7, np.uint8)
    padded = images.pad_batch(x, 5)
    assert padded.shape == (5, 2, 2, 3) and padded.dtype == np.uint8
    np.testing.assert_array_equal(padded[:3], x)
    assert not padded[3:].any()
    assert images.pad_batch(x, 3) is x


def test_to_unit_is_one_conversion_for_numpy_and_jitted_steps():
    x = np.array([[0, 51, 255]], np.uint8)
    host = images.to_unit(x)
    assert host.dtype == np.float32
    np.testing.assert_allclose(host, [[0.0, 0.2, 1.0]], rtol=1e-6)
    jitted = jax.jit(images.to_unit)(x)
    assert jitted.dtype == np.float32
    np.testing.assert_allclose(np.asarray(jitted), host, rtol=1e-6)  # XLA may use 1/255 × x
