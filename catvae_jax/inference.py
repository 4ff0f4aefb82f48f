"""A trained model as a plain object: `load(workdir, step)` → VaeModel. `workdir` may also be
a model file (`NAME.catvae`, a model folder, or `pretrained:<name>`: catvae_jax/model_file.py).

VaeModel methods take and return numpy NHWC float32 images in [0, 1] and [n, z_dim] latents;
each is jitted once per input shape. The latent samplers (catvae_jax/priors/gmm.py,
catvae_jax/priors/flow.py) are pure functions of latents: the model encodes the training images for
them, fits them and caches the fits beside its checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath
from flax import nnx

from catvae_jax import bpd_range, data, model_file
from catvae_jax import config as config_lib
from catvae_jax.errors import UserError, failed_write
from catvae_jax.priors import choice, flow, gmm, stored
from catvae_jax.train import state as state_lib
from catvae_jax.train.checkpoint import read_checkpoint
from catvae_jax.train.hooks import say


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
        self.graphdef, self.workdir = graphdef, workdir  # workdir: where fits are cached
        self.gmm: gmm.GaussianMixture | None = None
        self.flow: flow.Flow | None = None  # the learned prior of this checkpoint, if fitted
        self.bpd_range: bpd_range.BpdRange | None = None  # what inputs it knows, if computed
        # The measured choice of `auto` (priors/choice.py, a record with `choice`), if stored.
        self.choice: dict | None = None
        self._auto: str | None = None  # what sampler="auto" resolved to without a choice
        self._train_means: tuple[int, np.ndarray] | None = None  # (max_images, latents)
        self.image_shape = (config.image_size, config.image_size, 3)
        self.z_dim = config_lib.latent_size(config)  # z_dim, plus hvae's local group
        self._encode = jax.jit(lambda p, x: nnx.merge(graphdef, p).encode(x))
        self._decode = jax.jit(lambda p, z: nnx.merge(graphdef, p).decode(z))

        def generate(p, key, n, temperature):
            z = temperature * jax.random.normal(key, (n, self.z_dim))
            return nnx.merge(graphdef, p).decode(z)

        def generate_gmm(p, mixture, key, n, temperature):
            z = gmm.sample_latents(key, *mixture, n, temperature)
            return nnx.merge(graphdef, p).decode(z)

        def generate_flow(p, prior, key, n, temperature):
            return nnx.merge(graphdef, p).decode(flow.sample(prior, key, n, temperature))

        def interpolate(p, x_a, x_b, steps):
            model = nnx.merge(graphdef, p)
            (mu_a, _), (mu_b, _) = model.encode(x_a), model.encode(x_b)
            t = jnp.linspace(0.0, 1.0, steps)[None, :, None]
            z = (1.0 - t) * mu_a[:, None] + t * mu_b[:, None]  # [N, steps, z]
            out = model.decode(z.reshape(-1, z.shape[-1]))
            return out.reshape(x_a.shape[0], steps, *out.shape[1:])

        self._generate = jax.jit(generate, static_argnums=2)
        self._generate_gmm = jax.jit(generate_gmm, static_argnums=3)
        self._generate_flow = jax.jit(generate_flow, static_argnums=3)
        self._interpolate = jax.jit(interpolate, static_argnums=3)

    @property
    def params(self):
        """The model parameters (an nnx.State); `nnx.merge(self.graphdef, self.params)` is the
        module."""
        return self._params

    @functools.cached_property
    def params_sha256(self) -> str:
        """The parameters' digest (`state.params_digest`): a sampler file stored for this
        checkpoint is used only if it records the same one."""
        return state_lib.params_digest(self._params)

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
        self, n: int, seed: int = 0, temperature: float = 1.0, sampler: str = "auto"
    ) -> np.ndarray:
        """n images [n, S, S, 3] decoded from latents drawn by `sampler`, deterministic in seed.

        "prior": z ~ N(0, temperature² I). "gmm": z from the Gaussian mixture fitted to the
        training set's latent means (`fit_gmm`, run on first use and cached in the workdir),
        each component's spread scaled by `temperature`. "flow": the learned prior fitted for
        this checkpoint (`fit_flow`; an error if there is none), its base noise scaled by
        `temperature`. "auto": see `resolve_sampler`.
        """
        check_generate_args(n, temperature, sampler, seed)
        sampler = self.resolve_sampler(sampler)
        key, n, t = jax.random.key(seed), int(n), jnp.float32(temperature)
        if sampler == "flow":
            if self.flow is None:
                raise UserError(
                    f"no learned prior for checkpoint {self.step}: run python -m "
                    "catvae_jax.fit_prior --workdir W, or use --sampler gmm or prior"
                )
            out = self._generate_flow(self._params, self.flow.split(), key, n, t)
        elif sampler == "gmm":
            gmm = self.gmm if self.gmm is not None else self.fit_gmm()
            out = self._generate_gmm(self._params, gmm.arrays(), key, n, t)
        else:
            out = self._generate(self._params, key, n, t)
        return np.asarray(out)

    def resolve_sampler(self, sampler: str = "auto") -> str:
        """The sampler "auto" stands for: the measured choice of this checkpoint (`choice`,
        read by `load` from WORKDIR/sampler_<step>.json or a model file's sampler_choice.json)
        when there is one and it can be drawn; otherwise the fixed order: "flow" when a learned
        prior is fitted for this checkpoint; else "gmm" when its mixture is cached or the
        training split can be read to fit it (done here, on first use); else "prior"
        (N(0, I)), with a warning on stderr. Any other name is returned as it is."""
        if sampler != "auto":
            return sampler
        chosen = self._chosen()
        if chosen is not None:
            return chosen
        if self.flow is not None:
            return "flow"
        if self._auto is None:
            try:
                self.fit_gmm()
                self._auto = "gmm"
            except (UserError, OSError) as e:
                print(f"warning: auto sampler uses N(0, I): no gmm ({e})", file=sys.stderr)
                self._auto = "prior"
        return self._auto

    def _chosen(self) -> str | None:
        """The stored choice if it can be drawn (a chosen flow must be loaded, a chosen gmm
        cached or fittable); otherwise None, and the choice is dropped with a warning."""
        if self.choice is None:
            return None
        name = self.choice["choice"]
        try:
            if name == "flow" and self.flow is None:
                raise UserError("no learned prior is loaded")
            if name == "gmm" and self.gmm is None:
                self.fit_gmm()
        except (UserError, OSError) as e:
            print(
                f"warning: ignoring the sampler choice '{name}' of checkpoint {self.step}: {e}",
                file=sys.stderr,
            )
            self.choice = None
            return None
        return name

    def encode_means(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Posterior means [N, z] of uint8 images [N, S, S, 3], in batches of one shape."""
        out = []
        batch_size = min(batch_size, len(images))
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            real = len(chunk)
            if real < batch_size:
                pad = np.zeros((batch_size - real, *chunk.shape[1:]), chunk.dtype)
                chunk = np.concatenate([chunk, pad])
            mu, _ = self.encode(chunk.astype(np.float32) / 255.0)
            out.append(mu[:real])
        return np.concatenate(out)

    def training_means(self, max_images: int = gmm.DEFAULT_MAX_IMAGES) -> np.ndarray:
        """Posterior means [N, z] of the first `max_images` training images (kept for reuse)."""
        if max_images <= 0:
            raise UserError(f"max_images must be positive, got {max_images}")
        if self._train_means is None or self._train_means[0] != max_images:
            train = data.load_split(self.config, "train")[:max_images]
            self._train_means = (max_images, self.encode_means(train))
        return self._train_means[1]

    def fit_gmm(
        self,
        n_components: int | None = None,
        max_images: int = gmm.DEFAULT_MAX_IMAGES,
    ) -> gmm.GaussianMixture:
        """The latent mixture the gmm sampler uses: read from WORKDIR/gmm_<step>.npz when that
        file was fitted to these parameters with the same K and image cap, else fitted to
        `training_means` and cached there (when the model has a workdir; a damaged file, or one
        of other parameters, is replaced with a one-line warning). K: `n_components`, else the
        run's `config.gmm_components`."""
        if n_components is None:
            n_components = self.config.gmm_components
        if n_components <= 0:
            raise UserError(f"gmm components must be positive, got {n_components}")
        path = gmm.cache_path(self.workdir, self.step) if self.workdir else None
        mixture = None
        if path is not None:
            args = (n_components, max_images, self.z_dim, self.params_sha256)
            mixture = gmm.read_cached(path, *args)
        if mixture is None and self.gmm is not None:  # e.g. the one a model file holds
            mixture = self.gmm if self.gmm.fitted_as(n_components, max_images) else None
        if mixture is None:
            say(
                f"checkpoint {self.step}: fitting a Gaussian mixture of up to {n_components} "
                f"components to the latents of up to {max_images} training images (the gmm "
                "sampler) ..."
            )
            start = time.perf_counter()
            latents = self.training_means(max_images)
            mixture = gmm.fit(latents, n_components, self.config.seed, max_images)
            mixture = dataclasses.replace(mixture, params_sha256=self.params_sha256)
            cached = path is not None and gmm.save_cached(mixture, path)
            say(
                f"checkpoint {self.step}: gmm of {mixture.n_components} components fitted to "
                f"{len(latents)} latents in "
                f"{time.perf_counter() - start:.1f} s"
                + (f", cached in {path}" if cached else " (not cached)")
            )
        self.gmm = mixture
        return mixture

    def fit_flow(self, max_images: int = gmm.DEFAULT_MAX_IMAGES) -> flow.Flow:
        """Fits the learned prior to `training_means` and, with a workdir, writes it to
        WORKDIR/flow_<step>.npz (atomically, over a damaged or stale one), where `load` finds
        it. A failed write is an EnvironmentFailure (full or read-only disk) or a UserError."""
        fitted = flow.fit(self.training_means(max_images), self.config.seed, max_images)
        fitted = dataclasses.replace(fitted, params_sha256=self.params_sha256)
        if self.workdir is not None:
            path = flow.cache_path(self.workdir, self.step)
            try:
                fitted.save(path)
            except OSError as e:
                raise failed_write(e, path) from e
        self.flow = fitted
        return fitted

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


SAMPLERS = gmm.SAMPLERS
MAX_GENERATE = 4096
MAX_TEMPERATURE = 10.0


def check_generate_args(n: int, temperature: float, sampler: str = "auto", seed: int = 0) -> None:
    """Raises UserError unless 1 ≤ n ≤ 4096, 0 < temperature ≤ 10, sampler is known and
    0 ≤ seed < 2**32."""
    if not 0 < n <= MAX_GENERATE:
        raise UserError(f"n must be between 1 and {MAX_GENERATE}, got {n}")
    if not 0 < temperature <= MAX_TEMPERATURE:
        raise UserError(f"temperature must be in (0, {MAX_TEMPERATURE:g}], got {temperature}")
    if sampler not in SAMPLERS:
        raise UserError(f"sampler must be one of {', '.join(SAMPLERS)}, got '{sampler}'")
    if not 0 <= seed < config_lib.SEEDS:
        raise UserError(f"seed must be between 0 and 2**32 - 1, got {seed}")


def read_config(workdir: str | epath.Path) -> ml_collections.ConfigDict:
    """The resolved config a run wrote to WORKDIR/config.json (or the one in a model file)."""
    if model_file.is_model_file(workdir):
        return _upgrade(model_file.read(workdir))
    path = epath.Path(workdir) / "config.json"
    if not path.exists():
        raise UserError(f"{workdir} is not a catvae_jax workdir (no config.json)")
    return config_lib.read_json(path)


def load(workdir: str | epath.Path, step: str | int = "best", ema: bool = True) -> VaeModel:
    """The model of `workdir` at checkpoint `step` ("best", "latest" or a number), on device 0.

    With `ema` (the default) the model uses the checkpoint's moving average of the parameters
    when it has one (`config.ema_decay` > 0); `ema=False`, or a checkpoint without one (written
    before EMA existed, imported, or trained without), gives the raw parameters.

    For "best" and "latest" an unreadable checkpoint is skipped with a one-line warning (the
    next best by validation loss, or the next newest, is used); an unreadable numbered step is
    a UserError. Nothing in the workdir is moved or written.

    A model file (see catvae_jax/model_file.py) holds one checkpoint's evaluation parameters:
    `step` may be "best", "latest" or its number, `ema` must be True.
    """
    if model_file.is_model_file(workdir):
        return load_model_file(workdir, step, ema)
    if not epath.Path(workdir).is_dir():
        raise UserError(f"workdir {workdir} does not exist")
    config = read_config(workdir)
    graphdef, abstract = state_lib.reading_target(config, ema)
    number, state, has_ema = read_checkpoint(workdir, step, abstract)
    # The workdir's cached samplers belong to the default (EMA) parameters: raw ones use none.
    cache = None if has_ema and not ema else workdir
    model = VaeModel(graphdef, state_lib.eval_params(state), config, step=number, workdir=cache)
    if cache is not None:
        model.flow = read_flow(model)
        model.bpd_range = read_bpd_range(model)
        model.choice = choice.read(workdir, number, model.params_sha256)
    return model


def read_bpd_range(model: VaeModel) -> bpd_range.BpdRange | None:
    """The bits/dim range stored for `model`'s checkpoint, or None: none stored, or unusable
    (unreadable, or measured with other parameters: a one-line warning)."""
    return bpd_range.read(bpd_range.path(model.workdir, model.step), model.params_sha256)


def read_flow(model: VaeModel) -> flow.Flow | None:
    """The learned prior stored for `model`'s checkpoint, or None: none stored, or one that is
    unusable (damaged, of other parameters, of another z_dim: a one-line warning)."""
    path = flow.cache_path(model.workdir, model.step)

    def read(p: epath.Path) -> flow.Flow:
        return flow.Flow.read(p, model.z_dim, model.params_sha256)

    refit = f"refit it with python -m catvae_jax.fit_prior --workdir {model.workdir}"
    return stored.read_or_none(path, "the learned prior", read, refit)


def load_model_file(
    source: str | epath.Path, step: str | int = "best", ema: bool = True
) -> VaeModel:
    """The model in a model file (checksums verified), on device 0; see `load`."""
    contents = model_file.read(source)
    if str(step) not in ("best", "latest", str(contents.step)):
        raise UserError(f"{source} holds checkpoint {contents.step} only, not '{step}'")
    if not ema:
        raise UserError(
            f"{source} holds only the evaluation parameters (EMA when trained with one)"
        )
    config = _upgrade(contents)
    graphdef, abstract = state_lib.reading_target(config)
    params = model_file.fill_params(abstract.params, contents.params(), str(source))
    params = jax.device_put(params, jax.local_devices()[0])
    model = VaeModel(graphdef, params, config, step=contents.step, workdir=None)
    model.flow, model.gmm = contents.flow(), contents.mixture()
    model.bpd_range = contents.bpd_range()
    if model_file.SAMPLER_CHOICE in contents.files:  # the digest is computed only then
        model.choice = contents.sampler_choice(model.params_sha256)
    return model


def _upgrade(contents: model_file.ModelFile) -> ml_collections.ConfigDict:
    """The config of a model file, upgraded and validated as `config.read_json` reads a
    workdir's."""
    try:
        config = config_lib.upgrade(contents.config)
    except (TypeError, ValueError, AttributeError, KeyError) as e:
        raise UserError(f"{contents.source}: config.json is not a catvae_jax config: {e}") from e
    try:  # the right structure with an impossible value, as config.read_json refuses it
        config_lib.validate(config)
    except UserError as e:
        raise UserError(f"{contents.source}: config.json is not a usable config: {e}") from e
    return config
