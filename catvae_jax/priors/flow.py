"""The learned prior: a RealNVP flow (Dinh et al. 2017) fitted to the training set's latent means.

Like the GMM of catvae_jax/priors/gmm.py it is ex-post density estimation (Ghosh et al. 2020):
after training, encode the training images, fit a density to their posterior means mu(x) and
decode draws from it. The density here is a normalizing flow: the latents are standardised
per dimension, then `num_layers` affine coupling layers (each a fixed permutation, then the
second half scaled by exp(tanh(s)) and shifted by t, with s, t from a two-hidden-layer MLP of
the first half) map them to N(0, I). Fitted by maximum likelihood with Adam; a held-out tenth
of the latents picks the best of the parameters seen every 100 steps, the identity start
included (so a tiny data set gets at worst a diagonal Gaussian, not an overfitted flow).
Sampling runs the layers backwards from N(0, temperature² I).

Everything is a pure function of latents [N, z] (float32). The model stores a fit beside the
checkpoint it belongs to, WORKDIR/flow_<step>.npz (`cache_path`), with the digest of that
checkpoint's parameters, and loads it with the model; a file of other parameters, another
z_dim, or damaged in any way is ignored with a warning (catvae_jax/priors/stored.py).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils import epath

from catvae_jax import atomic
from catvae_jax.errors import UserError
from catvae_jax.priors import stored

NUM_LAYERS = 8
HIDDEN = 128
FIT_STEPS = 2000
MAX_EPOCHS = 100  # fewer steps for small sets: at most this many passes (and at least 300 steps)
EVAL_EVERY = 100  # steps between held-out evaluations (one compiled chunk of steps)
BATCH_SIZE = 256
LEARNING_RATE = 1e-3
HELDOUT_FRACTION = 0.1
MIN_HELDOUT = 20  # fewer latents than this: no held-out part, the last parameters are kept


@dataclasses.dataclass(frozen=True)
class Flow:
    """A fitted flow: standardisation loc/scale [z], coupling weights, permutations [L, z]."""

    loc: np.ndarray
    scale: np.ndarray
    weights: dict[str, np.ndarray]  # "w{layer}_{k}" / "b{layer}_{k}", k = 0, 1, 2
    perms: np.ndarray
    num_images: int  # latents it was fitted to (held-out part included)
    max_images: int  # the image cap it was fitted with
    heldout_nll: float  # mean −log p(z) in nats on the held-out latents (nan without one)
    params_sha256: str = ""  # digest of the checkpoint parameters whose latents it was fitted to

    @property
    def num_layers(self) -> int:
        return int(self.perms.shape[0])

    def arrays(self) -> tuple:
        """A pytree (loc, scale, layers, perms) for the jittable `sample` and `log_prob`."""
        layers = [
            tuple(jnp.asarray(self.weights[f"{p}{i}_{k}"]) for k in range(3) for p in "wb")
            for i in range(self.num_layers)
        ]
        return jnp.asarray(self.loc), jnp.asarray(self.scale), layers, jnp.asarray(self.perms)

    def save(self, path: str | epath.Path) -> None:
        """Writes the flow to an .npz file atomically."""
        atomic.write_npz(
            path,
            loc=self.loc,
            scale=self.scale,
            perms=self.perms,
            num_images=self.num_images,
            max_images=self.max_images,
            heldout_nll=self.heldout_nll,
            **{stored.DIGEST_KEY: np.array(self.params_sha256)},
            **self.weights,
        )

    @classmethod
    def read(
        cls, path: str | epath.Path, z_dim: int | None = None, params_sha256: str | None = None
    ) -> Flow:
        """Reads a file written by `save`; stored.Unusable if it is damaged, has latents of
        another size than `z_dim`, or another digest than `params_sha256` (None: not checked)."""
        d, digest = stored.read_fitted(path, params_sha256)
        return cls.from_arrays(d, z_dim, digest)

    @classmethod
    def from_arrays(
        cls, d: dict[str, np.ndarray], z_dim: int | None = None, params_sha256: str = ""
    ) -> Flow:
        """The flow of the arrays `save` writes (as `read` checks them; a model file holds
        them too); stored.Unusable if any is missing, of another shape or not finite."""
        loc = stored.array(d, "loc", (z_dim,))
        z = len(loc)
        scale = stored.array(d, "scale", (z,))
        perms = stored.array(d, "perms", (None, z), "iu")
        if z < 1 or len(perms) < 1 or (scale <= 0).any():
            raise stored.Unusable(f"it has {z} dimensions, {len(perms)} layers or a scale ≤ 0")
        if not (np.sort(perms, axis=1) == np.arange(z)).all():
            raise stored.Unusable("'perms' are not permutations")
        fixed = ("loc", "scale", "perms", "num_images", "max_images", "heldout_nll")
        weights = _weights(d, len(perms), z, set(d) - {*fixed, stored.DIGEST_KEY})
        return cls(
            loc=loc.astype(np.float32),
            scale=scale.astype(np.float32),
            weights=weights,
            perms=perms.astype(np.int32),
            num_images=stored.count(d, "num_images", 2),
            max_images=stored.count(d, "max_images", 0),
            heldout_nll=_stored_nll(d),
            params_sha256=params_sha256,
        )


def _stored_nll(d: dict[str, np.ndarray]) -> float:
    """The stored held-out NLL (nan allowed: fitted without a held-out part)."""
    value = d.get("heldout_nll")
    if value is None or value.shape != () or value.dtype.kind != "f":
        raise stored.Unusable("it has no scalar 'heldout_nll'")
    return float(value)


def _weights(d: dict[str, np.ndarray], num_layers: int, z: int, names: set[str]) -> dict:
    """The coupling weights w/b{layer}_{k}, each of the shape a flow of latents [N, z] has."""
    want = {f"{p}{i}_{k}" for i in range(num_layers) for k in range(3) for p in "wb"}
    if names != want:
        extra = sorted(names ^ want)
        raise stored.Unusable(f"its coupling weights do not match {num_layers} layers ({extra[0]})")
    hidden = d["b0_0"].shape[0] if d["b0_0"].ndim == 1 else None
    d1, d2 = z // 2, z - z // 2
    shapes = {0: ((d1, hidden), (hidden,)), 1: ((hidden, hidden), (hidden,))}
    shapes[2] = ((hidden, 2 * d2), (2 * d2,))
    weights = {}
    for i in range(num_layers):
        for k, (w_shape, b_shape) in shapes.items():
            for name, shape in ((f"w{i}_{k}", w_shape), (f"b{i}_{k}", b_shape)):
                weights[name] = stored.array(d, name, shape).astype(np.float32)
    return weights


def cache_path(workdir: str | epath.Path, step: int | None) -> epath.Path:
    """WORKDIR/flow_<step>.npz, where the flow of checkpoint `step` is stored."""
    return epath.Path(workdir) / f"flow_{step if step is not None else 'none'}.npz"


def _coupling(layer: tuple, a: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(log-scale s, shift t) of the second half from the first half `a` [N, d1]."""
    w0, b0, w1, b1, w2, b2 = layer
    h = jax.nn.relu(a @ w0 + b0)
    h = jax.nn.relu(h @ w1 + b1)
    s, t = jnp.split(h @ w2 + b2, 2, axis=-1)
    return jnp.tanh(s), t


def log_prob(arrays: tuple, z: jax.Array) -> jax.Array:
    """log p(z) [N] in nats of latents z [N, d] under the flow `arrays` (Flow.arrays())."""
    loc, scale, layers, perms = arrays
    x = (z - loc) / scale
    d1 = x.shape[-1] // 2
    log_det = jnp.full(x.shape[:1], -jnp.sum(jnp.log(scale)))
    for layer, perm in zip(layers, perms, strict=True):
        x = x[:, perm]
        a, b = x[:, :d1], x[:, d1:]
        s, t = _coupling(layer, a)
        x = jnp.concatenate([a, b * jnp.exp(s) + t], axis=-1)
        log_det = log_det + jnp.sum(s, axis=-1)
    base = -0.5 * jnp.sum(x * x + math.log(2.0 * math.pi), axis=-1)
    return base + log_det


def sample(arrays: tuple, key: jax.Array, n: int, temperature: jax.Array) -> jax.Array:
    """n latents [n, d] drawn through the flow from N(0, temperature² I) (jittable)."""
    loc, scale, layers, perms = arrays
    x = temperature * jax.random.normal(key, (n, loc.shape[-1]), loc.dtype)
    d1 = x.shape[-1] // 2
    for layer, perm in zip(reversed(layers), reversed(list(perms)), strict=True):
        a, b = x[:, :d1], x[:, d1:]
        s, t = _coupling(layer, a)
        x = jnp.concatenate([a, (b - t) * jnp.exp(-s)], axis=-1)
        x = x[:, jnp.argsort(perm)]
    return x * scale + loc


def _init(key: jax.Array, d: int, num_layers: int, hidden: int) -> list[tuple]:
    """Glorot-uniform hidden layers; a zero output layer, so the flow starts as the identity."""
    d1, d2 = d // 2, d - d // 2
    init = jax.nn.initializers.glorot_uniform()
    layers = []
    for i in range(num_layers):
        k0, k1 = jax.random.split(jax.random.fold_in(key, i))
        w0 = init(k0, (d1, hidden)) if d1 else jnp.zeros((0, hidden))
        layers.append(
            (
                w0,
                jnp.zeros(hidden),
                init(k1, (hidden, hidden)),
                jnp.zeros(hidden),
                jnp.zeros((hidden, 2 * d2)),
                jnp.zeros(2 * d2),
            )
        )
    return layers


@functools.lru_cache
def _optimizer(learning_rate: float, steps: int) -> optax.GradientTransformation:
    schedule = optax.cosine_decay_schedule(learning_rate, max(1, steps))
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=1e-4))


@jax.jit
def _nll(layers: list, fixed: tuple, z: jax.Array) -> jax.Array:
    """Mean −log p(z) in nats; `fixed` = (loc, scale, perms)."""
    loc, scale, perms = fixed
    return -jnp.mean(log_prob((loc, scale, layers, perms), z))


@functools.partial(jax.jit, static_argnames=("batch", "learning_rate", "steps"))
def _train_chunk(layers, opt_state, train, fixed, key, start, batch, learning_rate, steps):
    """EVAL_EVERY Adam steps on random batches of `train` [N, d] (one compiled program)."""
    opt = _optimizer(learning_rate, steps)

    def one(carry, i):
        layers, opt_state = carry
        idx = jax.random.randint(jax.random.fold_in(key, start + i), (batch,), 0, len(train))
        grads = jax.grad(_nll)(layers, fixed, train[idx])
        updates, opt_state = opt.update(grads, opt_state, layers)
        return (optax.apply_updates(layers, updates), opt_state), None

    (layers, opt_state), _ = jax.lax.scan(one, (layers, opt_state), jnp.arange(EVAL_EVERY))
    return layers, opt_state


def fit(
    latents: np.ndarray,
    seed: int = 0,
    max_images: int = 0,
    *,
    num_layers: int = NUM_LAYERS,
    hidden: int = HIDDEN,
    steps: int = FIT_STEPS,
    batch_size: int = BATCH_SIZE,
    learning_rate: float = LEARNING_RATE,
) -> Flow:
    """Fits a flow to latents [N, z] (N ≥ 2) by maximum likelihood; deterministic in `seed`."""
    z = np.asarray(latents, np.float32)
    if z.ndim != 2 or len(z) < 2:
        raise UserError(f"the flow prior needs at least 2 latent vectors, got shape {z.shape}")
    n, d = z.shape
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    n_held = int(n * HELDOUT_FRACTION) if n >= MIN_HELDOUT else 0
    held, train = z[order[:n_held]], z[order[n_held:]]
    loc = train.mean(0)
    scale = np.maximum(train.std(0), 1e-6).astype(np.float32)
    perms = np.stack([rng.permutation(d) for _ in range(num_layers)]).astype(np.int32)
    key = jax.random.key(seed)
    layers = _init(key, d, num_layers, hidden)
    fixed = (jnp.asarray(loc), jnp.asarray(scale), jnp.asarray(perms))
    batch = min(batch_size, len(train))
    epochs_cap = -(-MAX_EPOCHS * len(train) // (batch * EVAL_EVERY)) * EVAL_EVERY
    steps = min(steps, max(3 * EVAL_EVERY, epochs_cap))
    opt_state = _optimizer(learning_rate, steps).init(layers)
    best, best_nll = layers, math.inf  # the identity start is a candidate too
    if n_held:
        best_nll = float(_nll(layers, fixed, jnp.asarray(held)))
    for start in range(0, steps, EVAL_EVERY):
        layers, opt_state = _train_chunk(
            layers, opt_state, jnp.asarray(train), fixed, key, start, batch, learning_rate, steps
        )
        if n_held:
            nll = float(_nll(layers, fixed, jnp.asarray(held)))
            if math.isfinite(nll) and nll < best_nll:
                best, best_nll = layers, nll
        else:
            best = layers
    weights = {}
    for i, layer in enumerate(jax.device_get(best)):
        for k in range(3):
            weights[f"w{i}_{k}"] = np.asarray(layer[2 * k], np.float32)
            weights[f"b{i}_{k}"] = np.asarray(layer[2 * k + 1], np.float32)
    return Flow(
        loc=loc.astype(np.float32),
        scale=scale,
        weights=weights,
        perms=perms,
        num_images=n,
        max_images=max_images,
        heldout_nll=best_nll if n_held else math.nan,
    )
