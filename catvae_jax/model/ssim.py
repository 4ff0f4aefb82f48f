"""SSIM with the Gaussian window applied as two banded matmuls (fast on XLA:CPU), or dm-pix's own.

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
    kernels: str = "cpu",
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
      kernels: "cpu": the blur as two banded matmuls (fast on XLA:CPU); "plain": dm-pix's own
        separable convolution (`config.kernels`, resolved by `catvae_jax.model.backend`).

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
        precision=precision,
        filter_fn=gaussian_filter_fn(filter_size, filter_sigma, precision)
        if kernels == "cpu"
        else None,
    )


# Standard MS-SSIM exponents of scales 1..5 (Wang, Simoncelli & Bovik 2003).
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def ms_ssim_scales(size: int, filter_size: int = 11, max_scales: int = 5) -> int:
    """How many MS-SSIM scales an image side of `size` px allows: scale j (from 0) has side
    ⌊size / 2^j⌋, which must still hold the `filter_size` window. At least 1."""
    if size < filter_size:
        raise ValueError(f"MS-SSIM needs images of at least {filter_size} pixels, got {size}")
    scales = 1
    while scales < max_scales and size // 2**scales >= filter_size:
        scales += 1
    return scales


def _downsample2(x: jax.Array) -> jax.Array:
    """2×2 average pooling of NHWC `x` (an odd last row or column is dropped)."""
    n, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2]
    return x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def ms_ssim(
    a: jax.Array,
    b: jax.Array,
    *,
    max_val: float = 1.0,
    filter_size: int = 11,
    filter_sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
    scales: int | None = None,
    eps: float = 1e-6,
    precision: jax.lax.PrecisionLike = jax.lax.Precision.HIGHEST,
) -> jax.Array:
    """Multi-scale SSIM of image pairs, per image ``(n,)`` (a scalar for HWC input).

    At scale j (side halved j times by 2×2 averaging) the contrast-structure term
    cs = (2σ_ab + C2) / (σ_a² + σ_b² + C2) is averaged over the VALID Gaussian window positions
    per channel; the last scale uses the full SSIM (luminance × cs). Each term is clipped to
    ``eps`` before it is raised to its fractional exponent (negative cs of anti-correlated
    images would give NaN, and 0 an infinite gradient), the channels are then averaged.

    ``scales`` defaults to as many of the standard five as the image allows with the window
    (:func:`ms_ssim_scales`); the standard exponents of the scales used are renormalised to
    sum to 1, so one scale equals the per-channel SSIM. Identical images give exactly 1.

    Args:
      a, b: float images in ``[0, max_val]``, NHWC or HWC, same shape, square or not.
      max_val, filter_size, filter_sigma, k1, k2: as in :func:`ssim`.
      scales: number of scales (1–5), default the most the image size allows.
      eps: lower clip of each term before its power.
    """
    if a.shape != b.shape or a.ndim not in (3, 4):
        raise ValueError(
            f"MS-SSIM expects two HWC or NHWC images of one shape: {a.shape}, {b.shape}"
        )
    single = a.ndim == 3
    if single:
        a, b = a[None], b[None]
    allowed = ms_ssim_scales(min(a.shape[1], a.shape[2]), filter_size)
    scales = allowed if scales is None else scales
    if not 1 <= scales <= allowed:
        raise ValueError(f"MS-SSIM at {a.shape[1]}×{a.shape[2]} allows 1–{allowed} scales")
    weights = np.asarray(MS_SSIM_WEIGHTS[:scales], np.float64)
    weights = (weights / weights.sum()).astype(np.float32)
    blur = gaussian_filter_fn(filter_size, filter_sigma, precision)
    c1, c2 = (k1 * max_val) ** 2, (k2 * max_val) ** 2
    a, b = a.astype(jnp.float32), b.astype(jnp.float32)
    result = 1.0
    for j in range(scales):
        if j:
            a, b = _downsample2(a), _downsample2(b)
        # cs = (2σ_ab + C2) / (σ_a² + σ_b² + C2) written as 1 − (σ_a² + σ_b² − 2σ_ab) / (…),
        # with σ_a² + σ_b² − 2σ_ab = blur(d²) − blur(d)², d = a − b (and likewise for the
        # luminance): the same value, but exactly 1 for identical images however XLA fuses it.
        d = a - b
        mu_a, mu_b, mu_d = blur(a), blur(b), blur(d)
        var_a = blur(a * a) - mu_a * mu_a
        var_b = blur(b * b) - mu_b * mu_b
        term = 1.0 - (blur(d * d) - mu_d * mu_d) / (var_a + var_b + c2)
        if j == scales - 1:  # the full SSIM at the coarsest scale
            term = term * (1.0 - mu_d * mu_d / (mu_a * mu_a + mu_b * mu_b + c1))
        per_channel = jnp.mean(term, axis=(1, 2))  # [n, c]
        result = result * jnp.power(jnp.maximum(per_channel, eps), weights[j])
    out = jnp.mean(result, axis=-1)
    return out[0] if single else out
