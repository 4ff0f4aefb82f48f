"""Where the images come from: `load_split(config, split)` → uint8 NHWC array.

`synthetic` (the default) draws procedural cat faces in memory (see `synthetic.py`); every process
of a multi-process run can make its own share without touching disk.
"""

from __future__ import annotations

import ml_collections
import numpy as np

from catvae_jax.data import synthetic
from catvae_jax.errors import UserError

SPLITS = ("train", "validation", "test")


def split_size(config: ml_collections.ConfigDict, split: str) -> int:
    """Number of examples configured for `split` of a synthetic source."""
    return {
        "train": config.data.num_train,
        "validation": config.data.num_validation,
        "test": config.data.num_test,
    }[split]


def load_split(config: ml_collections.ConfigDict, split: str) -> np.ndarray:
    """All images of `split` as uint8 [N, S, S, 3] with S = config.image_size."""
    if split not in SPLITS:
        raise UserError(f"unknown split '{split}', expected one of {', '.join(SPLITS)}")
    source = config.data.source
    if source == "synthetic":
        n = split_size(config, split)
        return synthetic.make_split(split, n, config.image_size, config.data.seed)
    raise UserError(f"data.source '{source}' is not available in this version")


def describe(config: ml_collections.ConfigDict) -> dict[str, str]:
    """Name, config and version of the data set, written into the run's config.json."""
    if config.data.source == "synthetic":
        d = config.data
        return {
            "name": "synthetic_cats",
            "version": synthetic.VERSION,
            "config": f"{config.image_size}px_seed{d.seed}_n{d.num_train}",
        }
    return {"name": config.data.source, "version": "", "config": ""}
