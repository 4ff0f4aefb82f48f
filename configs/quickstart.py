"""What `make run` trains into runs/quickstart: resvae at 64×64, a few minutes on 2 CPU cores."""

from catvae_jax.config import get_config as _default


def get_config():
    c = _default()
    c.num_epochs = 8
    c.data.num_train = 4096
    c.wandb.mode = "offline"
    return c
