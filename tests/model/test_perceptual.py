"""The ImageNet networks and LPIPS (catvae_jax/model/perceptual.py): the restricted reader of
their weights, the distance's basic properties and the feature shapes."""

from __future__ import annotations

import builtins
import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from catvae_jax.model import perceptual

lpips = jax.jit(perceptual.lpips)  # the weights are an argument: not baked into the program
alexnet_layers = jax.jit(perceptual.alexnet_layers)
vgg16_pooled = jax.jit(perceptual.vgg16_pooled)


class _Payload:
    """Pickles as a call of `function(*args)`: what a malicious weights file would hold."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def _attacks(target) -> dict[str, object]:
    """Pickled objects that would create the file `target` if their code ran."""
    return {
        "builtins.exec": _Payload(builtins.exec, f"open({str(target)!r}, 'w').close()"),
        "posix.system": _Payload(os.system, f"touch {target}"),
        "numpy.save": _Payload(np.save, str(target), np.zeros(1)),
    }


@pytest.fixture(scope="module")
def weights():
    """The shipped AlexNet and LPIPS weights, as device arrays."""
    return jax.tree.map(jnp.asarray, perceptual.shipped_weights())


@pytest.mark.parametrize("name", ["builtins.exec", "posix.system", "numpy.save"])
@pytest.mark.parametrize("protocol", [0, 4])  # text and binary
def test_the_reader_refuses_a_pickle_that_runs_code(tmp_path, name, protocol):
    target = tmp_path / "ran"
    attack = _attacks(target)[name]
    hidden = {"AlexNet_0": {"Conv_0": {"bias": attack, "kernel": np.zeros((1, 1), np.float32)}}}
    path = tmp_path / "alexnet.ckpt"
    path.write_bytes(pickle.dumps(hidden, protocol=protocol, fix_imports=False))
    with pytest.raises(pickle.UnpicklingError, match=rf"^refusing to load {name}$"):
        perceptual.read_weights(path)
    assert not target.exists() and not target.with_suffix(".npy").exists()


def test_the_reader_flattens_nested_float32_arrays(tmp_path):
    tree = {"Net": {"Conv_0": {"kernel": np.ones((2, 2, 3, 4), np.float32)}}, "head": np.zeros(4)}
    tree["head"] = tree["head"].astype(np.float32)
    path = tmp_path / "w.ckpt"
    path.write_bytes(pickle.dumps(tree, protocol=4))
    flat = perceptual.read_weights(path)
    assert sorted(flat) == ["Net/Conv_0/kernel", "head"]
    np.testing.assert_array_equal(flat["Net/Conv_0/kernel"], tree["Net"]["Conv_0"]["kernel"])
    path.write_bytes(pickle.dumps({"head": np.zeros(4, np.float64)}, protocol=4))
    with pytest.raises(pickle.UnpicklingError, match=r"^head: not a float32 array$"):
        perceptual.read_weights(path)


def test_lpips_is_zero_for_identical_images_symmetric_and_grows_with_noise(weights):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((3, 32, 32, 3)), jnp.float32)
    noise = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
    near, far = jnp.clip(x + 0.05 * noise, 0, 1), jnp.clip(x + 0.3 * noise, 0, 1)
    np.testing.assert_allclose(lpips(weights, x, x), np.zeros(3), atol=1e-6)
    d_near, d_far = np.asarray(lpips(weights, x, near)), np.asarray(lpips(weights, x, far))
    np.testing.assert_allclose(np.asarray(lpips(weights, near, x)), d_near, rtol=1e-5)
    assert d_near.shape == (3,) and np.all(d_near > 0) and np.all(d_far > d_near)


def test_alexnet_feature_shapes(weights):
    x = jnp.full((2, 64, 64, 3), 0.5, jnp.float32)
    maps = alexnet_layers(weights, x)
    # conv1 (11×11 / 4, pad 2): 64 → 15; pool → 7; conv2 (5×5, pad 2) → 7; pool → 3; conv3-5 → 3.
    assert [m.shape for m in maps] == [
        (2, 15, 15, 64),
        (2, 7, 7, 192),
        (2, 3, 3, 384),
        (2, 3, 3, 256),
        (2, 3, 3, 256),
    ]
    assert all(float(jnp.min(m)) >= 0 for m in maps)  # ReLU maps


def test_vgg16_pooled_features_are_relu4_3_and_relu5_3_averaged():
    vgg = jax.tree.map(jnp.asarray, perceptual.read_weights(perceptual.weights_path("vgg16")))
    assert sum(name.startswith("VGG16_0/Conv_") for name in vgg) == 2 * 13  # kernels, biases
    assert vgg["VGG16_0/Conv_12/kernel"].shape == (3, 3, 512, 512)
    x = jnp.asarray(np.random.default_rng(1).random((2, 32, 32, 3)), jnp.float32)
    features = np.asarray(vgg16_pooled(vgg, x))
    assert features.shape == (2, 1024) and np.all(features >= 0) and features.any()
    swapped = np.asarray(vgg16_pooled(vgg, x[::-1]))  # per image: the batch does not mix
    np.testing.assert_allclose(swapped, features[::-1], rtol=1e-4, atol=1e-5)
    assert not np.allclose(features[0], features[1])
