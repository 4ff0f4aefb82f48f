"""A trained model as a plain object: `load(workdir, step)` → VaeModel.

VaeModel methods take and return numpy NHWC float32 images in [0, 1] and [n, z_dim] latents;
each is jitted once per input shape.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath
from flax import nnx

from catvae_jax import config as config_lib
from catvae_jax import models, sampling, steps
from catvae_jax.checkpoint import Checkpoints, LayoutMismatch
from catvae_jax.errors import UserError


class VaeModel:
    """encode / decode / generate / reconstruct / interpolate of one set of parameters."""

    def __init__(
        self,
        graphdef,
        params,
        config: ml_collections.ConfigDict,
        step: int | None = None,
        workdir: str | epath.Path | None = None,
    ):
        self.config, self.step, self._params = config, step, params
        self.graphdef, self.workdir = graphdef, workdir  # workdir: where the gmm fit is cached
        self.gmm: sampling.GaussianMixture | None = None
        self.image_shape = (config.image_size, config.image_size, 3)
        self.z_dim = int(config.model.z_dim)
        self._encode = jax.jit(lambda p, x: nnx.merge(graphdef, p).encode(x))
        self._decode = jax.jit(lambda p, z: nnx.merge(graphdef, p).decode(z))

        def generate(p, key, n, temperature):
            z = temperature * jax.random.normal(key, (n, self.z_dim))
            return nnx.merge(graphdef, p).decode(z)

        def generate_gmm(p, mixture, key, n, temperature):
            z = sampling.sample_latents(key, *mixture, n, temperature)
            return nnx.merge(graphdef, p).decode(z)

        def interpolate(p, x_a, x_b, steps):
            model = nnx.merge(graphdef, p)
            (mu_a, _), (mu_b, _) = model.encode(x_a), model.encode(x_b)
            t = jnp.linspace(0.0, 1.0, steps)[None, :, None]
            z = (1.0 - t) * mu_a[:, None] + t * mu_b[:, None]  # [N, steps, z]
            out = model.decode(z.reshape(-1, z.shape[-1]))
            return out.reshape(x_a.shape[0], steps, *out.shape[1:])

        self._generate = jax.jit(generate, static_argnums=2)
        self._generate_gmm = jax.jit(generate_gmm, static_argnums=3)
        self._interpolate = jax.jit(interpolate, static_argnums=3)

    @property
    def params(self):
        """The model parameters (an nnx.State); `nnx.merge(self.graphdef, self.params)` is the
        module."""
        return self._params

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

    def generate(
        self, n: int, seed: int = 0, temperature: float = 1.0, sampler: str = "prior"
    ) -> np.ndarray:
        """n images [n, S, S, 3] decoded from latents drawn by `sampler`, deterministic in seed.

        "prior": z ~ N(0, temperature² I). "gmm": z from the Gaussian mixture fitted to the
        training set's latent means (`fit_gmm`, run on first use and cached in the workdir),
        each component's spread scaled by `temperature`.
        """
        check_generate_args(n, temperature, sampler)
        key = jax.random.key(seed)
        if sampler == "gmm":
            gmm = self.gmm if self.gmm is not None else self.fit_gmm()
            mixture = gmm.arrays()
            out = self._generate_gmm(self._params, mixture, key, int(n), jnp.float32(temperature))
        else:
            out = self._generate(self._params, key, int(n), jnp.float32(temperature))
        return np.asarray(out)

    def fit_gmm(
        self,
        n_components: int = sampling.DEFAULT_COMPONENTS,
        max_images: int = sampling.DEFAULT_MAX_IMAGES,
    ) -> sampling.GaussianMixture:
        """Fits (or reads from WORKDIR/gmm_<step>.npz) the latent mixture the gmm sampler uses."""
        self.gmm = sampling.load_or_fit(self, n_components, max_images, seed=self.config.seed)
        return self.gmm

    def interpolate(self, x_a: np.ndarray, x_b: np.ndarray, steps: int = 8) -> np.ndarray:
        """Decodes `steps` evenly spaced points on the line from mu(x_a) to mu(x_b), both ends
        included: images [N, S, S, 3] → [N, steps, S, S, 3] (or [S, S, 3] → [steps, S, S, 3])."""
        if not 2 <= steps <= 256:
            raise UserError(f"steps must be between 2 and 256, got {steps}")
        single = np.ndim(x_a) == 3
        if single:
            x_a, x_b = np.asarray(x_a)[None], np.asarray(x_b)[None]
        x_a, x_b = self._check_images(x_a), self._check_images(x_b)
        if x_a.shape != x_b.shape:
            raise UserError(f"x_a and x_b differ in shape: {list(x_a.shape)}, {list(x_b.shape)}")
        out = np.asarray(self._interpolate(self._params, x_a, x_b, int(steps)))
        return out[0] if single else out

    def reconstruct(self, x: np.ndarray) -> np.ndarray:
        """Images [N, S, S, 3] → decode(mu(x)), the posterior-mean reconstruction."""
        mu, _ = self.encode(x)
        return self.decode(mu)


SAMPLERS = ("prior", "gmm")
MAX_GENERATE = 4096
MAX_TEMPERATURE = 10.0


def check_generate_args(n: int, temperature: float, sampler: str = "prior") -> None:
    """Raises UserError unless 1 ≤ n ≤ 4096, 0 < temperature ≤ 10 and sampler is known."""
    if not 0 < n <= MAX_GENERATE:
        raise UserError(f"n must be between 1 and {MAX_GENERATE}, got {n}")
    if not 0 < temperature <= MAX_TEMPERATURE:
        raise UserError(f"temperature must be in (0, {MAX_TEMPERATURE:g}], got {temperature}")
    if sampler not in SAMPLERS:
        raise UserError(f"sampler must be one of {', '.join(SAMPLERS)}, got '{sampler}'")


def read_config(workdir: str | epath.Path) -> ml_collections.ConfigDict:
    """The resolved config a run wrote to WORKDIR/config.json."""
    path = epath.Path(workdir) / "config.json"
    if not path.exists():
        raise UserError(f"{workdir} is not a catvae_jax workdir (no config.json)")
    return ml_collections.ConfigDict(config_lib.read_json(path))


def load(workdir: str | epath.Path, step: str | int = "best", ema: bool = True) -> VaeModel:
    """The model of `workdir` at checkpoint `step` ("best", "latest" or a number), on device 0.

    With `ema` (the default) the model uses the checkpoint's moving average of the parameters
    when it has one (`config.ema_decay` > 0); `ema=False`, or a checkpoint without one (written
    before EMA existed, imported, or trained without), gives the raw parameters.

    For "best" and "latest" an unreadable checkpoint is skipped with a one-line warning (the
    next best by validation loss, or the next newest, is used); an unreadable numbered step is
    a UserError. Nothing in the workdir is moved or written.
    """
    if not epath.Path(workdir).is_dir():
        raise UserError(f"workdir {workdir} does not exist")
    config = read_config(workdir)
    graphdef, abstract = steps.abstract_state(config, lambda: models.init_eager(config))
    if not ema:
        abstract = abstract.replace(ema=None)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device), abstract
    )
    ckpts = Checkpoints(workdir, read_only=True)
    try:
        restored = ckpts.restore_for_reading(step, abstract)
        raw_but_has_ema = restored is not None and not ema and ckpts.has_ema(restored[0])
    except LayoutMismatch as e:
        raise UserError(
            f"a checkpoint in {workdir} does not match its config: {str(e).splitlines()[0][:200]}"
        ) from e
    finally:
        ckpts.close()
    if restored is None:
        raise UserError(f"no checkpoint in {workdir}")
    number, state, _, _ = restored
    # The workdir's cached samplers belong to the default (EMA) parameters: raw ones use none.
    cache = None if raw_but_has_ema else workdir
    return VaeModel(graphdef, steps.eval_params(state), config, step=number, workdir=cache)
