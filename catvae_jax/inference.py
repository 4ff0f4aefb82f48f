"""A trained model as a plain object: `load(workdir, step)` → VaeModel.

VaeModel methods take and return numpy NHWC float32 images in [0, 1] and [n, z_dim] latents;
each is jitted once per input shape.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath
from flax import nnx

from catvae_jax import models, steps
from catvae_jax.checkpoint import Checkpoints
from catvae_jax.errors import UserError


class VaeModel:
    """encode / decode / generate / reconstruct of one set of parameters."""

    def __init__(
        self, graphdef, params, config: ml_collections.ConfigDict, step: int | None = None
    ):
        self.config, self.step, self._params = config, step, params
        self.image_shape = (config.image_size, config.image_size, 3)
        self.z_dim = int(config.model.z_dim)
        self._encode = jax.jit(lambda p, x: nnx.merge(graphdef, p).encode(x))
        self._decode = jax.jit(lambda p, z: nnx.merge(graphdef, p).decode(z))

        def generate(p, key, n, temperature):
            z = temperature * jax.random.normal(key, (n, self.z_dim))
            return nnx.merge(graphdef, p).decode(z)

        self._generate = jax.jit(generate, static_argnums=2)

    def _check_images(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32)
        if x.ndim != 4 or x.shape[1:] != self.image_shape:
            raise UserError(
                f"images must be [N, {', '.join(map(str, self.image_shape))}] "
                f"(NHWC), got shape {list(x.shape)}"
            )
        return x

    def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Images [N, S, S, 3] in [0, 1] → (mu, logvar), each [N, z_dim]."""
        mu, logvar = self._encode(self._params, self._check_images(x))
        return np.asarray(mu), np.asarray(logvar)

    def decode(self, z: np.ndarray) -> np.ndarray:
        """Latents [N, z_dim] → images [N, S, S, 3] in [0, 1]."""
        z = np.asarray(z, np.float32)
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise UserError(f"latents must be [N, {self.z_dim}], got shape {list(z.shape)}")
        return np.asarray(self._decode(self._params, z))

    def generate(self, n: int, seed: int = 0, temperature: float = 1.0) -> np.ndarray:
        """n images [n, S, S, 3] decoded from z ~ N(0, temperature² I), deterministic in seed."""
        if not 0 < n <= 4096:
            raise UserError(f"n must be between 1 and 4096, got {n}")
        if not 0 < temperature <= 10:
            raise UserError(f"temperature must be in (0, 10], got {temperature}")
        key = jax.random.key(seed)
        return np.asarray(self._generate(self._params, key, int(n), jnp.float32(temperature)))

    def reconstruct(self, x: np.ndarray) -> np.ndarray:
        """Images [N, S, S, 3] → decode(mu(x)), the posterior-mean reconstruction."""
        mu, _ = self.encode(x)
        return self.decode(mu)


def read_config(workdir: str | epath.Path) -> ml_collections.ConfigDict:
    """The resolved config a run wrote to WORKDIR/config.json."""
    path = epath.Path(workdir) / "config.json"
    if not path.exists():
        raise UserError(f"{workdir} is not a catvae_jax workdir (no config.json)")
    return ml_collections.ConfigDict(json.loads(path.read_text()))


def load(workdir: str | epath.Path, step: str | int = "best") -> VaeModel:
    """The model of `workdir` at checkpoint `step` ("best", "latest" or a number), on device 0."""
    if not epath.Path(workdir).is_dir():
        raise UserError(f"workdir {workdir} does not exist")
    config = read_config(workdir)
    ckpts = Checkpoints(workdir, read_only=True)
    number = ckpts.resolve(step)
    if number is None:
        raise UserError(f"no checkpoint in {workdir}")
    graphdef, abstract = steps.abstract_state(config, lambda: models.build(config))
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device), abstract
    )
    try:
        state, _, _ = ckpts.restore(number, abstract)
    except (ValueError, KeyError) as e:
        raise UserError(
            f"checkpoint {number} in {workdir} does not match its config: "
            f"{str(e).splitlines()[0][:200]}"
        ) from e
    finally:
        ckpts.close()
    return VaeModel(graphdef, state.params, config, step=number)
