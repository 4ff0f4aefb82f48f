"""SSIM with the Gaussian window applied as two banded matmuls (fast on XLA:CPU).

``dm_pix.ssim`` blurs with a vmapped 1-D ``jnp.convolve`` along each axis; XLA:CPU runs that
(and its gradient) slowly. Here the same separable, VALID, 11-tap Gaussian is a pair of banded
``(H - f + 1, H)`` and ``(W - f + 1, W)`` matrices built with numpy from the static shape at trace
time, applied with one einsum. The result equals ``dm_pix.ssim`` up to float rounding.
"""

from __future__ import annotations

import dm_pix as pix
import jax
import jax.numpy as jnp
import numpy as np


def _gaussian_taps(filter_size: int, filter_sigma: float) -> np.ndarray:
    """The 1-D window ``dm_pix.ssim`` uses, ``(filter_size,)`` summing to 1."""
    hw = filter_size // 2
    shift = (2 * hw - filter_size + 1) / 2
    taps = np.exp(-0.5 * ((np.arange(filter_size) - hw + shift) / filter_sigma) ** 2)
    return taps / taps.sum()


def _banded_filter_matrix(n: int, taps: np.ndarray) -> np.ndarray:
    """``(n - f + 1, n)`` float32 matrix whose rows are the VALID sliding windows of ``taps``.

    ``taps`` is symmetric, so correlation and convolution (what pix computes) coincide.
    """
    f = taps.shape[0]
    out = np.zeros((n - f + 1, n), np.float64)
    for i in range(n - f + 1):
        out[i, i : i + f] = taps[::-1]
    return out.astype(np.float32)


def gaussian_filter_fn(
    filter_size: int = 11,
    filter_sigma: float = 1.5,
    precision: jax.lax.PrecisionLike = jax.lax.Precision.HIGHEST,
):
    """A ``filter_fn`` for ``dm_pix.ssim``: separable VALID Gaussian blur via banded matmuls.

    The returned function maps ``(..., H, W, C)`` (HWC or NHWC, all channels at once, as pix calls
    it) to ``(..., H - f + 1, W - f + 1, C)``.
    """
    taps = _gaussian_taps(filter_size, filter_sigma)

    def filter_fn(z: jax.Array) -> jax.Array:
        h, w = z.shape[-3], z.shape[-2]
        f_h = jnp.asarray(_banded_filter_matrix(h, taps), z.dtype)
        f_w = f_h if w == h else jnp.asarray(_banded_filter_matrix(w, taps), z.dtype)
        return jnp.einsum("ih,...hwc,jw->...ijc", f_h, z, f_w, precision=precision)

    return filter_fn


def ssim(
    a: jax.Array,
    b: jax.Array,
    *,
    max_val: float = 1.0,
    filter_size: int = 11,
    filter_sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
    return_map: bool = False,
    precision: jax.lax.PrecisionLike = jax.lax.Precision.HIGHEST,
) -> jax.Array:
    """Structural similarity of image pairs, same definition and defaults as ``dm_pix.ssim``.

    Args:
      a, b: float images in ``[0, max_val]``, NHWC ``(n, h, w, c)`` (or HWC), same shape;
        ``h`` and ``w`` must be at least ``filter_size``.
      max_val: dynamic range of the pixel values.
      filter_size, filter_sigma: Gaussian window size and width, in pixels.
      k1, k2: SSIM stabilising constants.
      return_map: return the per-pixel map ``(n, h - f + 1, w - f + 1, c)`` instead of the mean.
      precision: matmul precision of the blur (HIGHEST keeps fp32 on GPU/TPU too).

    Returns:
      Per-image mean SSIM ``(n,)`` (a scalar for HWC input), or the SSIM map.
    """
    if a.ndim not in (3, 4):
        raise ValueError(f"SSIM expects HWC or NHWC images, got shape {a.shape}")
    h, w = a.shape[-3], a.shape[-2]
    if h < filter_size or w < filter_size:
        raise ValueError(
            f"SSIM needs images of at least {filter_size}×{filter_size} pixels, got {h}×{w}"
        )
    return pix.ssim(
        a,
        b,
        max_val=max_val,
        filter_size=filter_size,
        filter_sigma=filter_sigma,
        k1=k1,
        k2=k2,
        return_map=return_map,
        filter_fn=gaussian_filter_fn(filter_size, filter_sigma, precision),
    )
