"""The original VAE_cats experiment exp3: vae_cats_v1, seed 42, batch 64, lr 0.01, 5 epochs.

Loss balance as the original, with SSIM in place of MSE: (1 − SSIM)·H·W·C per image plus the KL
summed over latent dimensions (β = 1, no warm-up). AdamW with PyTorch's default weight decay 0.01,
plateau factor 0.5 / patience 10, early stopping patience 25, no gradient clipping.
"""

from catvae_jax.config import get_config as _default


def get_config():
    c = _default()
    c.seed = 42
    c.batch_size = 64
    c.learning_rate = 0.01
    c.lr_schedule = "constant"
    c.weight_decay = 0.01
    c.grad_clip_norm = 0.0
    c.num_epochs = 5
    c.image_size = 128
    c.model.name = "vae_cats_v1"
    c.model.h_dim = 1024
    c.model.z_dim = 32
    c.loss.ssim_weight = 1.0
    c.loss.mse_weight = 0.0
    c.loss.beta = 1.0
    c.loss.kl_warmup_steps = 0
    c.plateau.factor = 0.5
    c.plateau.patience = 10
    c.early_stop_patience = 25
    c.data.num_train = 1706  # as many images as the original's cat-face set
    c.data.flip = False  # the original did not augment
    return c
