"""Data: sources of cat images and the batching that feeds training."""

from __future__ import annotations

import ml_collections
from jax.sharding import Mesh

from catvae_jax.data.batching import DeviceData, batch_plan, eval_batches
from catvae_jax.data.sources import describe, load_split

__all__ = ["DeviceData", "batch_plan", "describe", "eval_batches", "load_split", "train_data"]


def train_data(config: ml_collections.ConfigDict, mesh: Mesh) -> DeviceData:
    """The training batches for `config`: an object with `steps_per_epoch` and `batch(step)`.

    `batch(step)` returns the uint8 batch [B, S, S, 3] of global step `step`, sharded over the
    mesh axis `data`; which images and flips it holds is decided by `batch_plan`.
    """
    images = load_split(config, "train")
    return DeviceData(images, mesh, config.batch_size, config.seed, config.data.flip)
