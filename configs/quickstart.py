"""What `make run` trains into runs/quickstart: resvae at 64×64 in minutes on 2 CPU cores.

Widths 16–128, z 64, batch 32, 6 epochs, constant learning rate: a few minutes of CPU buy ~770
updates, enough for recognisable faces on the synthetic cats. The figures and pictures in
README.md and docs/ come from this config; it pins the fields the default has since changed.
"""

from catvae_jax.config import get_config as _default


def get_config():
    c = _default()
    c.model.widths = (16, 32, 64, 128)
    c.model.z_dim = 64
    c.lr_schedule = "constant"
    c.batch_size = 32
    c.num_epochs = 6
    c.data.num_train = 4096
    c.log_every_steps = 32
    return c
