"""JAX's persistent compilation cache, on by default: a second run of the same config (or a
command that loads the same model) reads its compiled programs from disk instead of compiling
them again.

The cache lives in `$JAX_COMPILATION_CACHE_DIR` when set (JAX's own variable), else in
`$XDG_CACHE_HOME/catvae_jax/jax` (`~/.cache/catvae_jax/jax`); JAX does not bound its size. Every
program is cached, however fast it compiled (`$JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS`
overrides that): a tiny run compiles some 40 small programs of ~0.06 s each on CPU.
`CATVAE_COMPILATION_CACHE=0` in the environment, or `config.compilation_cache = False`, leaves it
off (a JAX_COMPILATION_CACHE_DIR still wins). JAX decides once per process, at its first
compilation, whether it uses the cache: `enable` must run before.
"""

from __future__ import annotations

import os
import pathlib

import jax

ENV_OFF = "CATVAE_COMPILATION_CACHE"


def default_dir() -> pathlib.Path:
    """$XDG_CACHE_HOME/catvae_jax/jax, or ~/.cache/catvae_jax/jax."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(root) / "catvae_jax" / "jax"


def enable(wanted: bool = True) -> str | None:
    """Points JAX's persistent cache at its directory, unless a directory is already set
    (JAX_COMPILATION_CACHE_DIR, a caller's `jax.config.update`: that one is used) or the cache
    is off here (`wanted` False or $CATVAE_COMPILATION_CACHE=0: nothing is set). Returns the
    directory in use, None when none. Never raises: a directory that cannot be made leaves the
    cache off."""
    current = jax.config.jax_compilation_cache_dir
    if current:
        return current
    if not wanted or os.environ.get(ENV_OFF, "1").strip().lower() in ("0", "false", "off", "no"):
        return None
    path = default_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return str(path)
