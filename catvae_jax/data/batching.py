"""Which images form each training batch, decided by one pure function of (seed, epoch, step).

`batch_plan` gives the example indices and horizontal flips of a batch; `DeviceData` keeps a whole
split on the devices and draws batches there: the train loop pays no host-to-device copy per step.
A resumed run at global step t sees exactly the batches an uninterrupted run would: epoch =
t // steps_per_epoch, position = t % steps_per_epoch.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from catvae_jax.errors import UserError
from catvae_jax.images import pad_batch


def batch_plan(
    seed: jax.Array, epoch: jax.Array, pos: jax.Array, num_examples: int, batch_size: int
) -> tuple[jax.Array, jax.Array]:
    """(indices [batch_size] int32, flips [batch_size] bool) of batch `pos` in epoch `epoch`.

    Each epoch is a fresh permutation of range(num_examples); the last partial batch is dropped.
    """
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), 0x5EED), epoch)
    perm = jax.random.permutation(jax.random.fold_in(key, 0), num_examples)
    idx = jax.lax.dynamic_slice_in_dim(perm, pos * batch_size, batch_size)
    flips = jax.random.bernoulli(
        jax.random.fold_in(jax.random.fold_in(key, 1), pos), 0.5, (batch_size,)
    )
    return idx.astype(jnp.int32), flips


def to_global(host_array: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A global jax.Array from a host array that every process holds in full.

    Each process materialises only the shards of its own devices, so this works unchanged in
    single- and multi-process runs.
    """
    return jax.make_array_from_callback(host_array.shape, sharding, lambda i: host_array[i])


def apply_flips(images: jax.Array, flips: jax.Array) -> jax.Array:
    """Mirrors images [B, H, W, C] horizontally where flips [B] is true."""
    return jnp.where(flips[:, None, None, None], images[:, :, ::-1, :], images)


def _draw(images, seed, epoch, pos, *, batch_size, flip):
    idx, flips = batch_plan(seed, epoch, pos, images.shape[0], batch_size)
    batch = images[idx]
    return apply_flips(batch, flips) if flip else batch


class DeviceData:
    """A split held on every device (uint8 NHWC, replicated) that yields sharded batches."""

    def __init__(self, images: np.ndarray, mesh: Mesh, batch_size: int, seed: int, flip: bool):
        if len(images) < batch_size:
            raise UserError(
                f"config field 'batch_size' ({batch_size}) exceeds the {len(images)} images"
            )
        self.images = to_global(images, NamedSharding(mesh, P()))
        self.batch_sharding = NamedSharding(mesh, P("data"))
        self.steps_per_epoch = len(images) // batch_size
        self.seed = seed
        draw = functools.partial(_draw, batch_size=batch_size, flip=flip)
        self._draw = jax.jit(draw, out_shardings=self.batch_sharding)
        self._draw_many = jax.jit(
            jax.vmap(draw, in_axes=(None, None, 0, 0)),
            out_shardings=NamedSharding(mesh, P(None, "data")),
        )

    def batch(self, step: int) -> jax.Array:
        """The uint8 batch [B, S, S, 3] of global train step `step`, sharded over `data`."""
        epoch, pos = divmod(step, self.steps_per_epoch)
        return self._draw(self.images, np.int32(self.seed), np.int32(epoch), np.int32(pos))

    def batches(self, step: int, n: int, k: int) -> jax.Array:
        """The batches of steps `step` … `step + k - 1` stacked, uint8 [k, B, S, S, 3], each
        sharded over `data` (k are drawn however many, `n`, the caller uses: one program)."""
        epochs, pos = np.divmod(step + np.arange(k), self.steps_per_epoch)
        draw = self._draw_many
        return draw(self.images, np.int32(self.seed), epochs.astype(np.int32), pos.astype(np.int32))

    def close(self) -> None:
        """Nothing to stop (the streaming pipeline's close stops its threads)."""


def eval_batches(images: np.ndarray, batch_size: int, mesh: Mesh):
    """Yields (uint8 batch [B, S, S, 3], mask [B] float32) covering `images` once, in order.

    The last batch is padded with zeros and masked out; both are sharded over `data`.
    """
    sharding = NamedSharding(mesh, P("data"))
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        mask = np.zeros(batch_size, np.float32)
        mask[: len(chunk)] = 1.0
        yield to_global(pad_batch(chunk, batch_size), sharding), to_global(mask, sharding)
