"""Data: sources of cat images and the batching that feeds training."""

from catvae_jax.data.batching import DeviceData, batch_plan, eval_batches
from catvae_jax.data.sources import describe, load_split

__all__ = ["DeviceData", "batch_plan", "describe", "eval_batches", "load_split"]
