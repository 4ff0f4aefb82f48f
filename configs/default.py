"""The recommended setup: hvae at 64×64 on synthetic cats, SSIM + LPIPS loss, 12 epochs
(~15 minutes of training on 2 CPU cores; see catvae_jax/config.py, recommended_config)."""

from catvae_jax.config import recommended_config


def get_config():
    return recommended_config()
