"""Latent samplers by name, and the Gaussian mixture fitted to the training set's latent means.

Samplers: `prior` = N(0, I); `gmm` = the mixture below; `flow` = the learned prior of
catvae_jax/priors/flow.py; `auto` = the flow when one is fitted for the checkpoint, else the
mixture, else N(0, I) (the model resolves it: `VaeModel.resolve_sampler`).

Ex-post density estimation (Ghosh et al. 2020; pythae's `GaussianMixtureSampler`): encode the
training images, fit a K-component full-covariance Gaussian mixture to their posterior means
mu(x), and decode draws from it instead of from N(0, I). The model caches the fit per
checkpoint in WORKDIR/gmm_<step>.npz, so it runs once; the file records the digest of the
parameters it was fitted on, and a file of other parameters, another z_dim, or damaged in any
way is refitted (catvae_jax/priors/stored.py). Everything here is a pure function of latents;
reading images and encoding them is the model's job (catvae_jax/inference.py).
"""

from __future__ import annotations

import dataclasses
import sys

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from catvae_jax import atomic
from catvae_jax.errors import UserError
from catvae_jax.priors import stored

SAMPLERS = ("auto", "prior", "gmm", "flow")
DEFAULT_MAX_IMAGES = 10_000
MAX_COVARIANCE_BYTES = 1 << 30  # a packed mixture that unpacks to more is refused, not read
# Fewest latents per component. The measured K = 200 fitted ~20 latents per component, and its
# samples were as much better against held-out images as against the training images
# (benchmarks/README.md, "K2 with more components"); more components per latent would start to
# copy training latents, e.g. on a small folder of photos.
LATENTS_PER_COMPONENT = 20
# A model file stores each covariance's eigenvalues above floor + this × its largest (`packed`);
# the rest, the fit's regularisation (reg_covar), as their mean. 1e-3: below float16's precision.
FLOOR_TOLERANCE = 1e-3


def components(n_components: int, num_latents: int) -> int:
    """K of a mixture asked for `n_components` on `num_latents` latents: at most one component
    per LATENTS_PER_COMPONENT latents, and at least one."""
    return max(1, min(int(n_components), num_latents // LATENTS_PER_COMPONENT))


@dataclasses.dataclass(frozen=True)
class GaussianMixture:
    """A mixture over latents: weights [K], means [K, z], covariances [K, z, z] (float32)."""

    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray
    num_images: int  # how many latent means it was fitted to
    max_images: int  # the cap it was fitted with
    params_sha256: str = ""  # digest of the checkpoint parameters whose latents it was fitted to

    @property
    def n_components(self) -> int:
        return int(self.weights.shape[0])

    def fitted_as(self, n_components: int, max_images: int) -> bool:
        """Whether `fit` with these settings on its latents gives a mixture of this K and cap."""
        same_k = self.n_components == components(n_components, self.num_images)
        return same_k and self.max_images == max_images

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(log weights [K], means [K, z], Cholesky factors [K, z, z]) for `sample_latents`."""
        chol = np.linalg.cholesky(self.covariances.astype(np.float64)).astype(np.float32)
        return np.log(self.weights).astype(np.float32), self.means.astype(np.float32), chol

    def packed(self, dtype: str = "float32") -> dict[str, np.ndarray]:
        """The arrays a model file stores: weights [K] and means [K, z] (float32), each
        component's covariance as its principal directions above its floor, num_images and
        max_images; `from_arrays` reads them back.

        A covariance fitted to n latents has n − 1 eigenvalues above the fit's regularisation
        (all of them when n > z); the rest sit at that floor. Component k keeps `ranks[k]`
        rows of `factors` [sum(ranks), z] (in `dtype`: float16 for a model file of float16
        parameters), each an eigenvector scaled by the square root of its eigenvalue less the
        floor, and its `floor` [K] (float32), the mean of the eigenvalues dropped:
        covariance_k = F_kᵀ F_k + floor_k I, to FLOOR_TOLERANCE. 200 components over 128 latents
        fitted to 4,096 latents: 1.0 MB as float16, against 3.3 MB for packed triangles."""
        lam, vec = np.linalg.eigh(self.covariances.astype(np.float64))  # ascending
        keep = lam > lam[:, :1] + FLOOR_TOLERANCE * lam[:, -1:]  # never the smallest
        floor = np.array([lam[k, ~keep[k]].mean() for k in range(len(lam))])
        scaled = vec * np.sqrt(np.maximum(lam - floor[:, None], 0.0))[:, None, :]
        factors = np.concatenate([scaled[k][:, keep[k]].T for k in range(len(lam))])
        return {
            "weights": self.weights,
            "means": self.means,
            "factors": factors.astype(dtype).reshape(-1, self.means.shape[1]),
            "ranks": keep.sum(1).astype(np.int32),
            "floor": floor.astype(np.float32),
            "num_images": np.asarray(self.num_images),
            "max_images": np.asarray(self.max_images),
        }

    def save(self, path: str | epath.Path) -> None:
        """Writes the parameters to an .npz file atomically."""
        atomic.write_npz(
            path,
            weights=self.weights,
            means=self.means,
            covariances=self.covariances,
            num_images=self.num_images,
            max_images=self.max_images,
            **{stored.DIGEST_KEY: np.array(self.params_sha256)},
        )

    @classmethod
    def read(
        cls, path: str | epath.Path, z_dim: int | None = None, params_sha256: str | None = None
    ) -> GaussianMixture:
        """Reads a file written by `save`; stored.Unusable if it is damaged, has latents of
        another size than `z_dim`, or another digest than `params_sha256` (None: not checked)."""
        d, digest = stored.read_fitted(path, params_sha256)
        return cls.from_arrays(d, z_dim, digest)

    @classmethod
    def from_arrays(
        cls, d: dict[str, np.ndarray], z_dim: int | None = None, params_sha256: str = ""
    ) -> GaussianMixture:
        """The mixture of the arrays `save` or `packed` writes (as `read` checks them; a model
        file holds them: `covariances` before its version 2, `cholesky` since); stored.Unusable
        if any is missing, of another shape, or not a mixture."""
        weights = stored.array(d, "weights", (None,))
        k = len(weights)
        means = stored.array(d, "means", (k, z_dim))
        z = means.shape[1]
        if "factors" in d:
            covariances = _from_factors(d, k, z)
        elif "cholesky" in d and "covariances" not in d:  # model files of version 2
            packed = stored.array(d, "cholesky", (k, z * (z + 1) // 2))
            _check_unpacked_size(k, z)
            chol = np.zeros((k, z, z), np.float32)
            chol[:, *np.tril_indices(z)] = packed
            covariances = chol @ chol.transpose(0, 2, 1)
        else:
            covariances = stored.array(d, "covariances", (k, z, z))
        if k < 1 or z < 1:
            raise stored.Unusable(f"it has {k} components of {z} dimensions")
        if (weights <= 0).any() or abs(float(weights.sum()) - 1.0) > 1e-3:
            raise stored.Unusable("its weights are not positive with sum 1")
        try:
            np.linalg.cholesky(covariances.astype(np.float64))
        except np.linalg.LinAlgError as e:
            raise stored.Unusable("a covariance is not positive definite") from e
        return cls(
            weights=weights.astype(np.float32),
            means=means.astype(np.float32),
            covariances=covariances.astype(np.float32),
            num_images=stored.count(d, "num_images", 1),
            max_images=stored.count(d, "max_images", 0),
            params_sha256=params_sha256,
        )


def _check_unpacked_size(k: int, z: int) -> None:
    """Refuses a stored mixture whose float32 covariances would be over MAX_COVARIANCE_BYTES,
    before they are allocated (a model file is untrusted)."""
    if k * z * z * 4 > MAX_COVARIANCE_BYTES:
        raise stored.Unusable(f"its {k} covariances of {z}×{z} are over 1 GiB")


def _from_factors(d: dict[str, np.ndarray], k: int, z: int) -> np.ndarray:
    """The covariances [K, z, z] (float32) of `packed`'s factors, ranks and floor."""
    ranks = stored.array(d, "ranks", (k,), "iu")
    floor = stored.array(d, "floor", (k,))
    if (ranks < 0).any() or (ranks >= z).any():
        raise stored.Unusable(f"its ranks are not between 0 and {z - 1}")
    factors = stored.array(d, "factors", (int(ranks.sum()), z))
    if (floor <= 0).any():
        raise stored.Unusable("its floors are not positive")
    _check_unpacked_size(k, z)
    covariances = np.zeros((k, z, z), np.float32)
    for c, rows in enumerate(np.split(factors.astype(np.float32), np.cumsum(ranks)[:-1])):
        covariances[c] = rows.T @ rows + floor[c] * np.eye(z, dtype=np.float32)
    return covariances


def sample_latents(
    key: jax.Array,
    log_weights: jax.Array,
    means: jax.Array,
    chol: jax.Array,
    n: int,
    temperature: jax.Array,
) -> jax.Array:
    """n draws [n, z] from the mixture; `temperature` scales each component's spread (jittable)."""
    k_comp, k_eps = jax.random.split(key)
    comp = jax.random.categorical(k_comp, log_weights, shape=(n,))
    eps = jax.random.normal(k_eps, (n, means.shape[-1]), means.dtype)
    return means[comp] + temperature * jnp.einsum("nij,nj->ni", chol[comp], eps)


def fit(
    latents: np.ndarray, n_components: int, seed: int = 0, max_images: int = 0
) -> GaussianMixture:
    """Fits a full-covariance mixture to latents [N, z]; K is capped by `components`."""
    if n_components <= 0 or max_images < 0:
        raise UserError(
            f"gmm components must be positive and max_images >= 0, got {n_components}, {max_images}"
        )
    try:  # lazily: scikit-learn takes a second to import and only the gmm needs it
        from sklearn.mixture import GaussianMixture as SkGaussianMixture
        from threadpoolctl import threadpool_limits  # a dependency of scikit-learn
    except ImportError as e:  # pragma: no cover - scikit-learn is a dependency
        raise UserError("the gmm sampler needs scikit-learn: pip install scikit-learn") from e
    latents = np.asarray(latents, np.float64)
    k = components(n_components, len(latents))
    gmm = SkGaussianMixture(k, covariance_type="full", random_state=seed, reg_covar=1e-5)
    # One BLAS thread: the matrices are z × z, and OpenBLAS's spinning threads next to XLA's
    # made a 2048-latent fit take 36 s instead of 1.2 s on the 2-core machine (issue 29).
    with threadpool_limits(limits=1, user_api="blas"):
        gmm.fit(latents)
    return GaussianMixture(
        weights=gmm.weights_.astype(np.float32),
        means=gmm.means_.astype(np.float32),
        covariances=gmm.covariances_.astype(np.float32),
        num_images=len(latents),
        max_images=max_images,
    )


def cache_path(workdir: str | epath.Path, step: int | None) -> epath.Path:
    """WORKDIR/gmm_<step>.npz, where the mixture of checkpoint `step` is cached."""
    return epath.Path(workdir) / f"gmm_{step if step is not None else 'none'}.npz"


def read_cached(
    path: epath.Path, n_components: int, max_images: int, z_dim: int, params_sha256: str
) -> GaussianMixture | None:
    """The mixture cached at `path` if it was fitted to the latents [N, z_dim] of the parameters
    with digest `params_sha256`, with the same K and image cap; else None, the caller refits
    (silently when there is no file or it was fitted with another K or cap; with a one-line
    warning when it is unusable: damaged, of other parameters, of another z_dim)."""

    def read(p: epath.Path) -> GaussianMixture:
        return GaussianMixture.read(p, z_dim, params_sha256)

    cached = stored.read_or_none(path, "the cached gmm", read, "refitting it")
    if cached is None:
        return None
    return cached if cached.fitted_as(n_components, max_images) else None


def save_cached(gmm: GaussianMixture, path: epath.Path) -> bool:
    """Writes the cache; a failure (read-only workdir, disk full) is a warning, not an error.
    Returns whether it was written."""
    try:
        gmm.save(path)
    except OSError as e:
        print(f"warning: could not cache the gmm in {path}: {e}", file=sys.stderr)
        return False
    return True
