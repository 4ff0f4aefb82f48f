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

The flow is an nnx.Module (`RealNVP`, a `Coupling` per layer) of latents [N, z] (float32);
`sample` and `log_prob` take it split (`Flow.split`) so that jitted callers pass arrays, and
the fit's Adam steps run on its nnx.Param in one compiled scan per EVAL_EVERY steps. The model
stores a fit beside the checkpoint it belongs to, WORKDIR/flow_<step>.npz (`cache_path`), with
the digest of that checkpoint's parameters, and loads it with the model; a file of other
parameters, another z_dim, or damaged in any way is ignored with a warning
(catvae_jax/priors/stored.py). The file's layout predates the module and is kept (`Flow`).
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
from flax import nnx

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


class Fixed(nnx.Variable):
    """An array of a flow that is set from the data, never trained: loc, scale, a permutation."""


Layers = list[tuple[jax.Array, jax.Array]]  # (kernel [in, out], bias [out]) of each Dense


class Dense(nnx.Module):
    """x @ kernel + bias: a linear layer made from its weights (kernel [in, out], bias [out]),
    so that reading a flow runs no initialiser (`init_layers` draws a new one's)."""

    def __init__(self, kernel: jax.Array, bias: jax.Array):
        self.kernel = nnx.Param(jnp.asarray(kernel, jnp.float32))
        self.bias = nnx.Param(jnp.asarray(bias, jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        return x @ self.kernel[...] + self.bias[...]


class Coupling(nnx.Module):
    """One affine coupling of latents [N, d]: the dimensions permuted by `perm` [d], the first
    half a [N, d // 2] kept, the second scaled by exp(tanh(s)) and shifted by t, with (s, t)
    from `mlp`, a two-hidden-layer ReLU MLP of a (its three Dense of `layers`)."""

    def __init__(self, perm: np.ndarray, layers: Layers):
        self.perm = Fixed(jnp.asarray(perm, jnp.int32))
        self.mlp = nnx.List([Dense(kernel, bias) for kernel, bias in layers])

    def _log_scale_and_shift(self, a: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(log-scale s, shift t) [N, d - d // 2] of the second half from the first `a`."""
        h = jax.nn.relu(self.mlp[0](a))
        h = jax.nn.relu(self.mlp[1](h))
        s, t = jnp.split(self.mlp[2](h), 2, axis=-1)
        return jnp.tanh(s), t

    def forward(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(y [N, d], log |det ∂y/∂x| [N]) of x [N, d]: towards the base N(0, I)."""
        x = x[:, self.perm[...]]
        d1 = x.shape[-1] // 2
        a, b = x[:, :d1], x[:, d1:]
        s, t = self._log_scale_and_shift(a)
        return jnp.concatenate([a, b * jnp.exp(s) + t], axis=-1), jnp.sum(s, axis=-1)

    def inverse(self, y: jax.Array) -> jax.Array:
        """x [N, d] of y [N, d] (`forward` undone): from the base towards the latents."""
        d1 = y.shape[-1] // 2
        a, b = y[:, :d1], y[:, d1:]
        s, t = self._log_scale_and_shift(a)
        x = jnp.concatenate([a, (b - t) * jnp.exp(-s)], axis=-1)
        return x[:, jnp.argsort(self.perm[...])]


class RealNVP(nnx.Module):
    """Latents [N, d] standardised by `loc`, `scale` [d], then one `Coupling` per row of
    `perms` [L, d] (with its `layers`), onto N(0, I). Its nnx.Param are the couplings' MLPs;
    the rest is `Fixed`."""

    def __init__(self, loc: np.ndarray, scale: np.ndarray, perms: np.ndarray, layers: list[Layers]):
        self.loc = Fixed(jnp.asarray(loc, jnp.float32))
        self.scale = Fixed(jnp.asarray(scale, jnp.float32))
        self.couplings = nnx.List([Coupling(p, c) for p, c in zip(perms, layers, strict=True)])

    def forward(self, z: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(x [N, d], log |det ∂x/∂z| [N]): latents z [N, d] mapped onto the base N(0, I)."""
        scale = self.scale[...]
        x = (z - self.loc[...]) / scale
        log_det = jnp.full(x.shape[:1], -jnp.sum(jnp.log(scale)))
        for coupling in self.couplings:
            x, layer_log_det = coupling.forward(x)
            log_det = log_det + layer_log_det
        return x, log_det

    def inverse(self, x: jax.Array) -> jax.Array:
        """The latents z [N, d] of base points x [N, d] (`forward` undone)."""
        for coupling in reversed(self.couplings):
            x = coupling.inverse(x)
        return x * self.scale[...] + self.loc[...]

    def log_prob(self, z: jax.Array) -> jax.Array:
        """log p(z) [N] in nats of latents z [N, d]."""
        x, log_det = self.forward(z)
        base = -0.5 * jnp.sum(x * x + math.log(2.0 * math.pi), axis=-1)
        return base + log_det

    def sample(self, key: jax.Array, n: int, temperature: jax.Array) -> jax.Array:
        """n latents [n, d] drawn through the flow from N(0, temperature² I); `temperature` a
        scalar or any array that broadcasts to [n, d]."""
        loc = self.loc[...]
        return self.inverse(temperature * jax.random.normal(key, (n, loc.shape[-1]), loc.dtype))


def log_prob(prior: tuple, z: jax.Array) -> jax.Array:
    """log p(z) [N] in nats under `prior` = nnx.split(a RealNVP) (jittable: one argument)."""
    return nnx.merge(*prior).log_prob(z)


def sample(prior: tuple, key: jax.Array, n: int, temperature: jax.Array) -> jax.Array:
    """n latents [n, d] of `prior` = nnx.split(a RealNVP), from N(0, temperature² I)."""
    return nnx.merge(*prior).sample(key, n, temperature)


_SCALARS = ("num_images", "max_images", "heldout_nll")


@dataclasses.dataclass(frozen=True)
class Flow:
    """A fitted flow: its `module` and what it was fitted to.

    Its files keep the layout of the flows of before the module: loc, scale [z], perms [L, z],
    and Dense k (0, 1, 2) of coupling i as kernel "w{i}_{k}" and bias "b{i}_{k}"."""

    module: RealNVP
    num_images: int  # latents it was fitted to (held-out part included)
    max_images: int  # the image cap it was fitted with
    heldout_nll: float  # mean −log p(z) in nats on the held-out latents (nan without one)
    params_sha256: str = ""  # digest of the checkpoint parameters whose latents it was fitted to

    @property
    def num_layers(self) -> int:
        return len(self.module.couplings)

    def split(self) -> tuple:
        """nnx.split(module): the argument of the jittable `sample` and `log_prob`."""
        return nnx.split(self.module)

    def tensors(self, dtype: str = "float32") -> dict[str, np.ndarray]:
        """Its arrays as a file stores them (the digest aside), in the order they are written:
        the couplings' weights in `dtype` (float16 in a float16 model file), the rest float32."""
        module = self.module
        out = {name: np.asarray(getattr(module, name)[...]) for name in ("loc", "scale")}
        out["perms"] = np.stack([np.asarray(c.perm[...]) for c in module.couplings])
        out |= {name: np.asarray(getattr(self, name)) for name in _SCALARS}
        for i, coupling in enumerate(module.couplings):
            for k, dense in enumerate(coupling.mlp):
                out[f"w{i}_{k}"] = np.asarray(dense.kernel[...]).astype(dtype)
                out[f"b{i}_{k}"] = np.asarray(dense.bias[...]).astype(dtype)
        return out

    def save(self, path: str | epath.Path) -> None:
        """Writes the flow to an .npz file atomically."""
        tensors = self.tensors()
        head = {k: tensors.pop(k) for k in ("loc", "scale", "perms", *_SCALARS)}
        digest = {stored.DIGEST_KEY: np.array(self.params_sha256)}
        atomic.write_npz(path, **head, **digest, **tensors)

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
        fixed = ("loc", "scale", "perms", *_SCALARS)
        layers = _layers(d, len(perms), z, set(d) - {*fixed, stored.DIGEST_KEY})
        return cls(
            module=RealNVP(loc, scale, perms, layers),
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


def _layers(d: dict[str, np.ndarray], num_layers: int, z: int, names: set[str]) -> list[Layers]:
    """The couplings' (kernel "w{i}_{k}", bias "b{i}_{k}") of Dense k = 0, 1, 2 of each layer i,
    each of the shape a flow of latents [N, z] has."""
    want = {f"{p}{i}_{k}" for i in range(num_layers) for k in range(3) for p in "wb"}
    if names != want:
        extra = sorted(names ^ want)
        raise stored.Unusable(f"its coupling weights do not match {num_layers} layers ({extra[0]})")
    hidden = d["b0_0"].shape[0] if d["b0_0"].ndim == 1 else None
    d1, d2 = z // 2, z - z // 2
    shapes = [((d1, hidden), (hidden,)), ((hidden, hidden), (hidden,))]
    shapes.append(((hidden, 2 * d2), (2 * d2,)))
    return [
        [
            (stored.array(d, f"w{i}_{k}", w_shape), stored.array(d, f"b{i}_{k}", b_shape))
            for k, (w_shape, b_shape) in enumerate(shapes)
        ]
        for i in range(num_layers)
    ]


def cache_path(workdir: str | epath.Path, step: int | None) -> epath.Path:
    """WORKDIR/flow_<step>.npz, where the flow of checkpoint `step` is stored."""
    return epath.Path(workdir) / f"flow_{step if step is not None else 'none'}.npz"


def init_layers(key: jax.Array, d: int, num_layers: int, hidden: int) -> list[Layers]:
    """The weights of a new flow of latents [N, d]: Glorot-uniform hidden layers and a zero
    output layer, so that it starts as the identity."""
    d1, d2 = d // 2, d - d // 2
    init = jax.nn.initializers.glorot_uniform()
    layers = []
    for i in range(num_layers):
        k0, k1 = jax.random.split(jax.random.fold_in(key, i))
        w0 = init(k0, (d1, hidden)) if d1 else jnp.zeros((0, hidden))
        layers.append(
            [
                (w0, jnp.zeros(hidden)),
                (init(k1, (hidden, hidden)), jnp.zeros(hidden)),
                (jnp.zeros((hidden, 2 * d2)), jnp.zeros(2 * d2)),
            ]
        )
    return layers


@functools.lru_cache
def _optimizer(learning_rate: float, steps: int) -> optax.GradientTransformation:
    schedule = optax.cosine_decay_schedule(learning_rate, max(1, steps))
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=1e-4))


@jax.jit
def _nll(params: nnx.State, rest: tuple, z: jax.Array) -> jax.Array:
    """Mean −log p(z) in nats of a RealNVP split into `params` and rest = (graphdef, Fixed)."""
    graphdef, fixed = rest
    return -jnp.mean(nnx.merge(graphdef, params, fixed).log_prob(z))


@functools.partial(jax.jit, static_argnames=("batch", "learning_rate", "steps"))
def _train_chunk(params, opt_state, train, rest, key, start, batch, learning_rate, steps):
    """EVAL_EVERY Adam steps on random batches of `train` [N, d] (one compiled program)."""
    opt = _optimizer(learning_rate, steps)

    def one(carry, i):
        params, opt_state = carry
        idx = jax.random.randint(jax.random.fold_in(key, start + i), (batch,), 0, len(train))
        grads = jax.grad(_nll)(params, rest, train[idx])
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), None

    (params, opt_state), _ = jax.lax.scan(one, (params, opt_state), jnp.arange(EVAL_EVERY))
    return params, opt_state


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
    module = RealNVP(loc, scale, perms, init_layers(key, d, num_layers, hidden))
    graphdef, params, fixed = nnx.split(module, nnx.Param, ...)
    rest = (graphdef, fixed)
    batch = min(batch_size, len(train))
    epochs_cap = -(-MAX_EPOCHS * len(train) // (batch * EVAL_EVERY)) * EVAL_EVERY
    steps = min(steps, max(3 * EVAL_EVERY, epochs_cap))
    opt_state = _optimizer(learning_rate, steps).init(params)
    best, best_nll = params, math.inf  # the identity start is a candidate too
    if n_held:
        best_nll = float(_nll(params, rest, jnp.asarray(held)))
    for start in range(0, steps, EVAL_EVERY):
        params, opt_state = _train_chunk(
            params, opt_state, jnp.asarray(train), rest, key, start, batch, learning_rate, steps
        )
        if n_held:
            nll = float(_nll(params, rest, jnp.asarray(held)))
            if math.isfinite(nll) and nll < best_nll:
                best, best_nll = params, nll
        else:
            best = params
    nnx.update(module, best)
    return Flow(
        module=module,
        num_images=n,
        max_images=max_images,
        heldout_nll=best_nll if n_held else math.nan,
    )
