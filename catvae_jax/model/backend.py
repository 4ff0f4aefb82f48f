"""Which kernels and compute dtype a model runs with: `config.kernels` and `config.dtype`.

The CPU-tuned kernels (banded-matmul SSIM blur, sub-pixel transposed and upsampling convolutions
with their hand-written backward, im2col convolutions) were measured faster on XLA:CPU
(benchmarks/README.md); on GPUs and TPUs XLA's own convolutions and dm-pix's SSIM filter are the
plain choice. Both compute the same functions (tests/test_backend.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def kernels(choice: str = "auto") -> str:
    """The kernels of a `config.kernels` value, "cpu" or "plain" ("auto": cpu on a CPU)."""
    if choice == "auto":
        return "cpu" if jax.default_backend() == "cpu" else "plain"
    if choice not in ("cpu", "plain"):
        raise ValueError(f"kernels must be auto, cpu or plain, got {choice!r}")
    return choice


def compute_dtype(name: str = "float32") -> jnp.dtype | None:
    """The activation dtype of a `config.dtype` value: None for "float32" (layers compute in
    their parameters' float32, as they always did), bfloat16 for "bfloat16"."""
    if name == "float32":
        return None
    if name == "bfloat16":
        return jnp.bfloat16
    raise ValueError(f"dtype must be float32 or bfloat16, got {name!r}")


def cast(x: jax.Array, dtype: jnp.dtype | None) -> jax.Array:
    """`x` in `dtype` (unchanged for None)."""
    return x if dtype is None else x.astype(dtype)
