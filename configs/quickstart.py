"""What `make run` trains into runs/quickstart: the recommended recipe in under 10 minutes on 2 CPU
cores.

configs/default.py (hvae 16–128, z 64 and an 8×8 local group, batch 32, SSIM + LPIPS loss) for 6
epochs at a constant learning rate: 768 updates, enough for cats with pupils and whiskers (the
default's cosine decay drew worse cats at this budget, at two seeds). The figures and pictures
in README.md and docs/ come from this config.
"""

from catvae_jax.config import recommended_config


def get_config():
    c = recommended_config()
    c.lr_schedule = "constant"
    c.num_epochs = 6
    c.log_every_steps = 32
    return c
