"""The original VAE_cats experiment exp3: vae_cats_v1, seed 42, batch 64, lr 0.01, 5 epochs.

The setup the original's configs share is `catvae_jax.config.original_experiment` (loss balance
as the original with SSIM in place of MSE, AdamW, plateau and early stopping as in Lightning).
"""

from catvae_jax.config import original_experiment


def get_config():
    return original_experiment(seed=42, num_epochs=5)
