"""Training batches streamed with grain, for splits that do not fit on the devices.

`StreamingData` has the interface of `DeviceData` (`steps_per_epoch`, `batch(step)`) and yields
the same batches: which examples and flips form batch `step` is decided by `batch_plan`,
evaluated once per epoch for all its positions. Examples are read from a random-access source
(a TFDS data source) through a `grain.MapDataset` by `threads` threads, `prefetch` batches
ahead of the train step. Each process reads only the rows of each global batch that its own
devices hold and assembles the global array with `jax.make_array_from_process_local_data`.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence

import grain
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from catvae_jax.data.batching import batch_plan
from catvae_jax.errors import UserError

_HORIZON = 2**40  # examples a stream may run for: far beyond any training run


@functools.partial(jax.jit, static_argnames=("num_examples", "batch_size", "steps"))
def epoch_plan(
    seed: jax.Array, epoch: jax.Array, *, num_examples: int, batch_size: int, steps: int
) -> tuple[jax.Array, jax.Array]:
    """`batch_plan` of every position of an epoch: (indices, flips), each [steps, batch_size]."""
    positions = jnp.arange(steps, dtype=jnp.int32)
    return jax.vmap(lambda p: batch_plan(seed, epoch, p, num_examples, batch_size))(positions)


def process_rows(sharding: NamedSharding, global_shape: tuple[int, ...]) -> tuple[int, int]:
    """The rows [start, stop) of a global batch that this process's devices hold."""
    spans = sorted(
        {
            (index[0].start or 0, global_shape[0] if index[0].stop is None else index[0].stop)
            for index in sharding.addressable_devices_indices_map(global_shape).values()
        }
    )
    start, stop = spans[0][0], spans[-1][1]
    if sum(b - a for a, b in spans) != stop - start:
        raise ValueError(f"the batch rows of process {jax.process_index()} are not contiguous")
    return start, stop


class StreamingData:
    """Global uint8 batches [B, S, S, 3], sharded over `data`, read from `source` with grain.

    `source[i]` is image i, uint8 [S, S, 3]; `len(source)` the number of examples.
    """

    def __init__(
        self,
        source: Sequence[np.ndarray],
        mesh: Mesh,
        batch_size: int,
        seed: int,
        flip: bool,
        threads: int = 8,
        prefetch: int = 4,
    ):
        n = len(source)
        if n < batch_size:
            raise UserError(
                f"config field 'batch_size' ({batch_size}) exceeds the {n} training images"
            )
        self.images = grain.MapDataset.source(source)
        self.num_examples, self.batch_size, self.seed, self.flip = n, batch_size, seed, flip
        self.steps_per_epoch = n // batch_size
        self.batch_sharding = NamedSharding(mesh, P("data"))
        self.global_shape = (batch_size, *np.shape(self.images[0]))
        self.rows = process_rows(self.batch_sharding, self.global_shape)
        self.read_options = grain.ReadOptions(
            num_threads=threads, prefetch_buffer_size=max(1, prefetch) * self.local_batch_size
        )
        self._plans: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._lock = threading.Lock()
        self._iterator = None
        self._next_step = -1

    @property
    def local_batch_size(self) -> int:
        return self.rows[1] - self.rows[0]

    def plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(indices, flips) [steps_per_epoch, B] of `epoch`; the last two epochs are cached."""
        with self._lock:
            if epoch not in self._plans:
                plan = epoch_plan(
                    np.int32(self.seed),
                    np.int32(epoch),
                    num_examples=self.num_examples,
                    batch_size=self.batch_size,
                    steps=self.steps_per_epoch,
                )
                kept = {e: p for e, p in self._plans.items() if e == epoch - 1}
                self._plans = {**kept, epoch: tuple(np.asarray(a) for a in jax.device_get(plan))}
            return self._plans[epoch]

    def example(self, k: int) -> np.ndarray:
        """Example `k` of this process's stream: row k % b of the local batch of step k // b."""
        step, j = divmod(int(k), self.local_batch_size)
        epoch, pos = divmod(step, self.steps_per_epoch)
        indices, flips = self.plan(epoch)
        row = self.rows[0] + j
        image = np.asarray(self.images[int(indices[pos, row])])
        if self.flip and flips[pos, row]:
            image = image[:, ::-1]
        return np.ascontiguousarray(image)

    def stream(self, start_step: int) -> grain.IterDataset:
        """This process's local batches [b, S, S, 3] from `start_step` on."""
        b = self.local_batch_size
        examples = grain.MapDataset.range(start_step * b, (start_step * b) + _HORIZON)
        return examples.map(self.example).to_iter_dataset(self.read_options).batch(b)

    def batch(self, step: int) -> jax.Array:
        """The uint8 batch [B, S, S, 3] of global train step `step`, sharded over `data`."""
        local = self._local(step)
        return jax.make_array_from_process_local_data(self.batch_sharding, local, self.global_shape)

    def batches(self, step: int, n: int, k: int) -> jax.Array:
        """The batches of steps `step` … `step + n - 1` stacked, uint8 [k, B, S, S, 3] sharded
        over `data` on axis 1; the k - n unused slots repeat the last batch (nothing is read
        beyond step + n - 1)."""
        local = [self._local(step + i) for i in range(n)]
        local += [local[-1]] * (k - n)
        sharding = NamedSharding(self.batch_sharding.mesh, P(None, "data"))
        return jax.make_array_from_process_local_data(
            sharding, np.stack(local), (k, *self.global_shape)
        )

    def _local(self, step: int) -> np.ndarray:
        """This process's rows of the batch of `step` [b, S, S, 3], read in order."""
        if self._iterator is None or step != self._next_step:
            self.close()
            self._iterator = iter(self.stream(step))
        local = next(self._iterator)
        self._next_step = step + 1
        return local

    def close(self) -> None:
        """Stops the reading threads."""
        if self._iterator is not None:
            self._iterator.close()
            self._iterator = None
