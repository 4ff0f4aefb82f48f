"""glibc malloc settings that let XLA:CPU reuse freed memory instead of page-faulting it back.

XLA:CPU allocates each step's temporaries with malloc (one block of ~0.5 GB for the vae_cats_v1
train step at batch 64). glibc serves blocks over 32 MB with a fresh mmap() and unmaps them on
free, so every step faults in and zeroes all of it again: ~250k page faults and ~0.5 s of kernel
time per step on the 2-core benchmark machine (benchmarks/README.md). `configure("reuse")` asks
glibc for one arena, no mmap and no trimming, so freed blocks are reused; the process then keeps
its peak heap. CLIs call it first thing; `CATVAE_MALLOC=system` in the environment opts out, and
it applies only to runs with the CPU kernels (`config.kernels`: not on a GPU or TPU).
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import os
import sys

from catvae_jax.errors import UserError

_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8  # <malloc.h>
MODES = ("reuse", "system")


def configure(mode: str | None = None, kernels: str = "cpu") -> bool:
    """Applies `mode` ("reuse" or "system"; default: $CATVAE_MALLOC, else "reuse") when the
    run uses the CPU kernels: `kernels` is a `config.kernels` value, and "auto" counts as CPU
    unless JAX will find an accelerator (`accelerator_expected`); "plain" never configures.

    Call before JAX starts its threads. Returns True when the reuse settings were applied, False
    for "system", other kernels, or where there is no glibc (macOS, musl) to configure.
    """
    mode = mode or os.environ.get("CATVAE_MALLOC") or "reuse"
    if mode not in MODES:
        raise UserError(f"CATVAE_MALLOC must be one of {', '.join(MODES)}, got '{mode}'")
    cpu = kernels == "cpu" or (kernels == "auto" and not accelerator_expected())
    if mode == "system" or not cpu or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018  (glibc only: musl has no mallopt options)
    except (OSError, AttributeError):
        return False
    settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))
    return all(libc.mallopt(option, value) == 1 for option, value in settings)


def accelerator_expected() -> bool:
    """Whether JAX's default backend will be a GPU or TPU, decided without starting JAX (whose
    threads must not start before `configure`): $JAX_PLATFORMS names another platform first, or
    (unset) a JAX accelerator plugin or libtpu is installed."""
    platforms = os.environ.get("JAX_PLATFORMS", "").strip()
    if platforms:
        return platforms.split(",")[0].strip().lower() not in ("cpu", "")
    if any(importlib.util.find_spec(name) is not None for name in ("libtpu", "jax_plugins")):
        return True  # jax_plugins: the namespace of the CUDA and ROCm plugins
    return bool(importlib.metadata.entry_points(group="jax_plugins"))
