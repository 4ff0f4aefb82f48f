"""Convolution layers with fast CPU paths: sub-pixel upsampling convolutions and an im2col conv.

Transposed convolutions (the original vae_cats_v1 decoder). Semantics are PyTorch's
``ConvTranspose2d(padding=0)``: for an NHWC input ``x`` and a kernel of shape
``(kh, kw, c_in, c_out)`` the output is defined by the scatter

    y[n, s*h + i, s*w + j, o] += x[n, h, w, c] * kernel[i, j, c, o]

and has spatial size ``(in - 1) * s + k``. A PyTorch weight ``W`` of shape
``(c_in, c_out, kh, kw)`` maps to ``kernel = W.transpose(2, 3, 0, 1)`` (no spatial flip).

XLA:CPU lowers a strided transposed convolution to a convolution of the zero-dilated input,
which wastes s² of the work. :func:`conv_transpose` instead runs ONE stride-1 convolution of the
undilated input with ``s² * c_out`` output channels (one kernel phase per sub-pixel offset) and
interleaves the phases by a depth-to-space reshape. Its gradient is hand-written as two matmuls
(im2col / col2im), because XLA:CPU's kernel gradient of that convolution is very slow. A 1×1
input (the decoder's first layer) is a plain einsum.

Nearest ×2 upsampling followed by a convolution (the resvae decoder): :func:`upsample2_conv`
runs the same sub-pixel trick, one convolution at the input's resolution plus depth-to-space.

Strided VALID convolutions (the vae_cats_v1 encoder on CPU): :func:`conv` gathers im2col patches
and runs one matmul, which beats XLA:CPU's native convolution there (benchmarks/README.md).
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _depth_to_space(y: jax.Array, sh: int, sw: int) -> jax.Array:
    """``(n, q, r, sh*sw*c)`` with channels ordered ``(a, b, c)`` → ``(n, q*sh, r*sw, c)``."""
    n, q, r, p = y.shape
    c = p // (sh * sw)
    y = y.reshape(n, q, r, sh, sw, c).transpose(0, 1, 3, 2, 4, 5)
    return y.reshape(n, q * sh, r * sw, c)


def _phase_kernel(kernel: jax.Array, sh: int, sw: int) -> jax.Array:
    """``(kh, kw, c_in, c_out)`` scatter kernel → ``(mh, mw, c_in, sh*sw*c_out)`` phase kernel.

    The kernel is zero-padded (at the end) to ``m = ceil(k / s)`` taps per phase. Output row
    ``s*q + a`` is ``sum_t x[q - t] * kernel[t*s + a]``: a correlation of ``x`` (padded by
    ``m - 1``) with the tap-reversed phase ``kernel[a::s][::-1]``; channels are ordered (a, b, o).
    """
    kh, kw, c_in, c_out = kernel.shape
    mh, mw = -(-kh // sh), -(-kw // sw)
    kernel = jnp.pad(kernel, ((0, mh * sh - kh), (0, mw * sw - kw), (0, 0), (0, 0)))
    kernel = kernel.reshape(mh, sh, mw, sw, c_in, c_out)[::-1, :, ::-1]
    return kernel.transpose(0, 2, 4, 1, 3, 5).reshape(mh, mw, c_in, sh * sw * c_out)


def _full_conv_impl(x: jax.Array, k: jax.Array, precision: jax.lax.PrecisionLike) -> jax.Array:
    mh, mw = k.shape[:2]
    return jax.lax.conv_general_dilated(
        x,
        k,
        window_strides=(1, 1),
        padding=((mh - 1, mh - 1), (mw - 1, mw - 1)),
        dimension_numbers=_DIMENSION_NUMBERS,
        precision=precision,
    )


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _full_conv(x: jax.Array, k: jax.Array, precision: jax.lax.PrecisionLike) -> jax.Array:
    """Stride-1 'full' correlation: NHWC ``(n, h, w, ci)`` ⋆ ``(mh, mw, ci, p)`` → NHWC
    ``(n, h + mh - 1, w + mw - 1, p)``.

    Forward is XLA's convolution. The backward pass is hand-written as matmuls because XLA:CPU's
    kernel gradient of this convolution (a window as large as the image) is >10x slower.
    """
    return _full_conv_impl(x, k, precision)


def _full_conv_fwd(
    x: jax.Array, k: jax.Array, precision: jax.lax.PrecisionLike
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    return _full_conv_impl(x, k, precision), (x, k)


def _full_conv_bwd(
    precision: jax.lax.PrecisionLike, res: tuple[jax.Array, jax.Array], dy: jax.Array
) -> tuple[jax.Array, jax.Array]:
    x, k = res
    mh, mw, c_in, p = k.shape
    n, h, w, _ = x.shape
    qh, qw = dy.shape[1:3]
    taps = [(t, u) for t in range(mh) for u in range(mw)]
    dy_mat = dy.reshape(n * qh * qw, p)
    # dx (col2im): y[q] = sum_t xpad[q + t] k[t]  =>  dx[h] = sum_t dpatch[h + m - 1 - t, t].
    k_mat = k.reshape(mh * mw * c_in, p)
    dpatch = jnp.matmul(dy_mat, k_mat.T, precision=precision).reshape(n, qh, qw, mh, mw, c_in)
    dx = sum(
        dpatch[:, mh - 1 - t : mh - 1 - t + h, mw - 1 - u : mw - 1 - u + w, t, u] for t, u in taps
    )
    # dk (im2col): dk[t, u] = patches(x)^T @ dy, one matmul.
    xp = jnp.pad(x, ((0, 0), (mh - 1, mh - 1), (mw - 1, mw - 1), (0, 0)))
    patches = jnp.concatenate([xp[:, t : t + qh, u : u + qw] for t, u in taps], axis=-1)
    patches = patches.reshape(n * qh * qw, mh * mw * c_in)
    dk = jnp.matmul(patches.T, dy_mat, precision=precision).reshape(k.shape)
    return dx.astype(x.dtype), dk.astype(k.dtype)


_full_conv.defvjp(_full_conv_fwd, _full_conv_bwd)


def conv_transpose(
    x: jax.Array,
    kernel: jax.Array,
    stride: int | tuple[int, int],
    *,
    precision: jax.lax.PrecisionLike = None,
) -> jax.Array:
    """Transposed convolution (VALID, PyTorch semantics) as a fused sub-pixel convolution.

    Reverse-mode differentiable (custom VJP); forward-mode (``jax.jvp``) is not supported, use
    :func:`conv_transpose_reference` for that.

    Args:
      x: input, NHWC ``(n, h, w, c_in)``.
      kernel: ``(kh, kw, c_in, c_out)``, scatter orientation (see module docstring).
      stride: int or ``(sh, sw)``.
      precision: matmul/convolution precision.

    Returns:
      ``(n, (h - 1) * sh + kh, (w - 1) * sw + kw, c_out)``.
    """
    sh, sw = _pair(stride)
    kh, kw = kernel.shape[:2]
    h, w = x.shape[1:3]
    if h == 1 and w == 1:  # e.g. the decoder's first layer: a dense layer, no padding waste
        return jnp.einsum("nc,ijco->nijo", x[:, 0, 0], kernel.astype(x.dtype), precision=precision)
    k = _phase_kernel(kernel, sh, sw).astype(x.dtype)
    y = _depth_to_space(_full_conv(x, k, precision), sh, sw)
    return y[:, : (h - 1) * sh + kh, : (w - 1) * sw + kw, :]


def conv(
    x: jax.Array,
    kernel: jax.Array,
    stride: int | tuple[int, int],
    *,
    precision: jax.lax.PrecisionLike = None,
) -> jax.Array:
    """VALID strided convolution (PyTorch ``Conv2d(padding=0)``) as ONE matmul of im2col patches.

    Same function as ``lax.conv_general_dilated(x, kernel, stride, "VALID")`` (NHWC, HWIO).
    The kh·kw strided slices of ``x`` are concatenated along channels and multiplied by the
    reshaped kernel; autodiff turns the backward pass into two matmuls and strided pads. On
    XLA:CPU this beats the native convolution in the vae_cats_v1 train step (benchmarks/README.md),
    most of all for a stride larger than the kernel (the original's k4 s8 layer).

    Args:
      x: NHWC ``(n, h, w, c_in)``.
      kernel: ``(kh, kw, c_in, c_out)``.
      stride: int or ``(sh, sw)``.

    Returns:
      ``(n, (h - kh) // sh + 1, (w - kw) // sw + 1, c_out)``.
    """
    sh, sw = _pair(stride)
    kh, kw, c_in, c_out = kernel.shape
    n, h, w, _ = x.shape
    oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
    cols = [
        jax.lax.slice(
            x, (0, i, j, 0), (n, i + sh * (oh - 1) + 1, j + sw * (ow - 1) + 1, c_in), (1, sh, sw, 1)
        )
        for i in range(kh)
        for j in range(kw)
    ]
    patches = jnp.concatenate(cols, axis=-1).reshape(n * oh * ow, kh * kw * c_in)
    k = kernel.reshape(kh * kw * c_in, c_out).astype(x.dtype)
    return jnp.matmul(patches, k, precision=precision).reshape(n, oh, ow, c_out)


def upsample2(x: jax.Array) -> jax.Array:
    """Nearest-neighbour ×2 upsampling of NHWC `x`: ``(n, h, w, c)`` → ``(n, 2h, 2w, c)``."""
    n, h, w, c = x.shape
    x = jnp.broadcast_to(x[:, :, None, :, None, :], (n, h, 2, w, 2, c))
    return x.reshape(n, 2 * h, 2 * w, c)


def upsample2_conv(
    x: jax.Array, kernel: jax.Array, *, precision: jax.lax.PrecisionLike = None
) -> jax.Array:
    """``conv(upsample2(x), kernel)``, a stride-1 SAME correlation, computed at x's resolution.

    Output pixel ``2i + a`` of the upsampled-then-convolved image only sees input pixels near
    ``i``, so each of the 4 sub-pixel phases ``(a, b)`` is a small correlation of ``x`` with
    sums of kernel taps (for 3×3: phase 0 uses ``(k0, k1 + k2)`` at offsets ``(-1, 0)``, phase 1
    ``(k0 + k1, k2)`` at ``(0, +1)``). All phases run as ONE convolution with ``4 * c_out``
    outputs followed by a depth-to-space reshape: the same multiply-adds as the plain form, but
    the 4×-larger upsampled input is never built and the convolution (and its gradients) runs on
    the small grid. On XLA:CPU this makes the resvae train step at 128² ~20 % faster
    (benchmarks/README.md).

    Args:
      x: NHWC ``(n, h, w, c_in)``.
      kernel: ``(k, k, c_in, c_out)``, k odd.

    Returns:
      ``(n, 2h, 2w, c_out)``.
    """
    k, kw, c_in, c_out = kernel.shape
    if k != kw or k % 2 == 0:
        raise ValueError(f"upsample2_conv needs an odd square kernel, got {kernel.shape[:2]}")
    pad = k // 2
    # select[a, u, t] = 1 when tap t of phase a reads input offset lo + u.
    offsets = [[(a + t - pad) // 2 for t in range(k)] for a in (0, 1)]
    lo, hi = min(map(min, offsets)), max(map(max, offsets))
    select = np.zeros((2, hi - lo + 1, k), np.float32)
    for a in (0, 1):
        for t in range(k):
            select[a, offsets[a][t] - lo, t] = 1.0
    m = hi - lo + 1
    phases = jnp.einsum(
        "aut,bvs,tsco->uvcabo", select, select, kernel, precision=jax.lax.Precision.HIGHEST
    ).reshape(m, m, c_in, 4 * c_out)
    y = jax.lax.conv_general_dilated(
        x,
        phases.astype(x.dtype),
        window_strides=(1, 1),
        padding=((-lo, hi), (-lo, hi)),
        dimension_numbers=_DIMENSION_NUMBERS,
        precision=precision,
    )
    return _depth_to_space(y, 2, 2)


def conv_transpose_reference(
    x: jax.Array,
    kernel: jax.Array,
    stride: int | tuple[int, int],
    *,
    precision: jax.lax.PrecisionLike = None,
) -> jax.Array:
    """Same as :func:`conv_transpose`, via XLA's input-dilated convolution (slow on CPU).

    Shapes: x NHWC ``(n, h, w, c_in)``, kernel ``(kh, kw, c_in, c_out)`` → NHWC
    ``(n, (h - 1) * sh + kh, (w - 1) * sw + kw, c_out)``.
    """
    sh, sw = _pair(stride)
    kh, kw = kernel.shape[:2]
    # A correlation of the dilated, (k-1)-padded input with the spatially flipped kernel
    # equals the scatter definition.
    return jax.lax.conv_general_dilated(
        x,
        kernel[::-1, ::-1].astype(x.dtype),
        window_strides=(1, 1),
        padding=((kh - 1, kh - 1), (kw - 1, kw - 1)),
        lhs_dilation=(sh, sw),
        dimension_numbers=_DIMENSION_NUMBERS,
        precision=precision,
    )


class ConvTranspose(nnx.Module):
    """``ConvTranspose2d(padding=0)`` for NHWC inputs, initialised like PyTorch.

    Params: ``kernel`` ``(k, k, in_features, out_features)`` (scatter orientation, i.e. a PyTorch
    weight ``W`` transposed by ``(2, 3, 0, 1)``) and ``bias`` ``(out_features,)``. Both are drawn
    from ``U(-b, b)`` with ``b = 1 / sqrt(out_features * k * k)``, the fan-in PyTorch computes
    from the ``(in, out, k, k)`` weight of a transposed convolution.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int,
        stride: int,
        *,
        rngs: nnx.Rngs,
        use_fast: bool = True,
    ) -> None:
        self.in_features = in_features
        self.out_features = out_features
        self.kernel_size = kernel_size
        self.stride = stride
        self.use_fast = use_fast
        bound = 1.0 / math.sqrt(out_features * kernel_size * kernel_size)
        shape = (kernel_size, kernel_size, in_features, out_features)
        self.kernel = nnx.Param(
            jax.random.uniform(rngs.params(), shape, jnp.float32, -bound, bound)
        )
        self.bias = nnx.Param(
            jax.random.uniform(rngs.params(), (out_features,), jnp.float32, -bound, bound)
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        """NHWC ``(n, h, w, in)`` → ``(n, (h - 1) * stride + k, (w - 1) * stride + k, out)``."""
        fn = conv_transpose if self.use_fast else conv_transpose_reference
        y = fn(x, self.kernel[...], self.stride)
        return y + self.bias[...].astype(y.dtype)
