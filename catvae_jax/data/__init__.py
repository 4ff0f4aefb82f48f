"""Data: sources of cat images and the batching that feeds training.

`batching` (device-resident batches, the batch plan) is light; `sources` (`describe`,
`load_split`, `train_data`) brings in TFDS and is imported on first use, so that reading a
user's image (`data.decode`) or loading a model for sampling never loads TFDS.
"""

from __future__ import annotations

from typing import Any

from catvae_jax.data.batching import DeviceData, batch_plan, eval_batches, to_global

__all__ = [
    "DeviceData",
    "batch_plan",
    "describe",
    "eval_batches",
    "load_split",
    "to_global",
    "train_data",
]


def __getattr__(name: str) -> Any:
    """`describe`, `load_split` and `train_data` of `sources`, imported on first use."""
    if name in ("describe", "load_split", "train_data"):
        from catvae_jax.data import sources

        return getattr(sources, name)
    raise AttributeError(f"module 'catvae_jax.data' has no attribute '{name}'")
