"""The recommended setup: resvae on synthetic cats at 64×64 (see catvae_jax/config.py)."""

from catvae_jax.config import get_config as _default


def get_config():
    return _default()
