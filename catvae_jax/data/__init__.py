"""Data: sources of cat images and the batching that feeds training."""

from __future__ import annotations

import ml_collections
from jax.sharding import Mesh

from catvae_jax.data import sources
from catvae_jax.data.batching import DeviceData, batch_plan, eval_batches, to_global
from catvae_jax.data.sources import describe, load_split

__all__ = [
    "DeviceData",
    "batch_plan",
    "describe",
    "eval_batches",
    "load_split",
    "to_global",
    "train_data",
]


def train_data(config: ml_collections.ConfigDict, mesh: Mesh):
    """The training batches for `config`: an object with `steps_per_epoch` and `batch(step)`.

    `batch(step)` returns the uint8 batch [B, S, S, 3] of global step `step`, sharded over the
    mesh axis `data`; which images and flips it holds is decided by `batch_plan`. The split is
    held on the devices (`DeviceData`) or streamed with grain (`StreamingData`) as
    `data.pipeline` says ("auto": on the devices when it fits `data.device_memory_mb`).
    """
    if sources.pipeline(config) == "device":
        images = load_split(config, "train")
        return DeviceData(images, mesh, config.batch_size, config.seed, config.data.flip)
    from catvae_jax.data.streaming import StreamingData  # imports grain: only when streaming

    d = config.data
    return StreamingData(
        sources.random_access(config, "train"),
        mesh,
        config.batch_size,
        config.seed,
        d.flip,
        threads=d.grain_threads,
        prefetch=d.prefetch_batches,
    )
