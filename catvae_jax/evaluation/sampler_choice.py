"""Which sampler `auto` should use for a checkpoint, decided by held-out measurement in three
feature spaces, and stored beside it (catvae_jax/priors/choice.py).

Each available sampler (`prior` always; `gmm` when the training split can be read to fit it;
`flow` when a learned prior is fitted) draws n images, compared with the first n images of the
validation split (which neither the samplers' fits nor the test-split metrics of `evaluate`
use) in:
- `alexnet`: KID (unbiased at small n) in the AlexNet features of `evaluate` (the network of the
  LPIPS loss term);
- `vgg16`: KID in the VGG16 features of `evaluate`'s `_vgg` keys (a network no loss uses);
- `pixels`: a network-free statistic, the total-variation distance between the histograms (32
  bins) of R, G and B values and of the luminance gradient magnitude √(dx² + dy²), averaged
  over the four: colour and sharpness as they are.
FD in both networks is recorded too. The rule (`RULE`): rank the samplers in each space (1 =
best, ties share the mean rank), choose the lowest mean rank over the three spaces; a tie goes
to the earlier of flow, gmm, prior (the fixed order `auto` had before).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Sequence

import numpy as np

from catvae_jax import data, model_file
from catvae_jax.errors import UserError
from catvae_jax.evaluation import sample_quality
from catvae_jax.inference import VaeModel, load
from catvae_jax.priors import choice

SPACES = {"alexnet": "kid_alexnet", "vgg16": "kid_vgg16", "pixels": "pixels"}  # ranked by
TIE_ORDER = ("flow", "gmm", "prior")
RULE = (
    "lowest mean rank over alexnet (KID), vgg16 (KID) and pixels (histogram TV distance) "
    "against the validation split; ties: flow, then gmm, then prior"
)
PIXEL_BINS = 32
MAX_SAMPLES = sample_quality.MAX_SAMPLES


@dataclasses.dataclass(frozen=True)
class Nets:
    """The two feature extractors, built once per process (their weights load, they compile)."""

    alex: sample_quality.FeatureNet
    vgg: sample_quality.VggFeatureNet

    @classmethod
    def build(cls) -> Nets:
        return cls(sample_quality.FeatureNet(), sample_quality.VggFeatureNet())


@dataclasses.dataclass(frozen=True)
class Reference:
    """The held-out images' features in the three spaces: pooled [n, 512], [n, 1024] and the
    pixel histograms [4, PIXEL_BINS]."""

    alex: np.ndarray
    vgg: np.ndarray
    pixels: np.ndarray

    @property
    def n(self) -> int:
        return len(self.alex)

    @classmethod
    def of(cls, images: np.ndarray, nets: Nets) -> Reference:
        return cls(nets.alex(images).pooled, nets.vgg(images).pooled, pixel_histograms(images))


def pixel_histograms(images: np.ndarray) -> np.ndarray:
    """Normalised histograms [4, PIXEL_BINS] of images [N, H, W, 3] (uint8, or floats in
    [0, 1]): R, G and B values on [0, 1], and the luminance gradient magnitude on [0, 1]
    (forward differences; larger values in the last bin)."""
    x = images.astype(np.float32) / 255.0 if images.dtype == np.uint8 else images
    x = np.asarray(x, np.float32)
    lum = x @ np.array([0.299, 0.587, 0.114], np.float32)
    dx, dy = lum[:, :-1, 1:] - lum[:, :-1, :-1], lum[:, 1:, :-1] - lum[:, :-1, :-1]
    grad = np.minimum(np.sqrt(dx * dx + dy * dy), 1.0)
    channels = [x[..., c] for c in range(3)] + [grad]
    hists = [np.histogram(v, PIXEL_BINS, (0.0, 1.0))[0] for v in channels]
    return np.stack([h / h.sum() for h in hists])


def pixel_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean total-variation distance (0 … 1) between two sets of `pixel_histograms`."""
    return float(np.mean(0.5 * np.abs(a - b).sum(axis=-1)))


def available(model: VaeModel) -> list[str]:
    """The samplers `model` can draw from now, in TIE_ORDER (fits the gmm if it can)."""
    names = ["flow"] if model.flow is not None else []
    try:
        model.fit_gmm()
        names.append("gmm")
    except (UserError, OSError) as e:
        print(f"warning: the sampler choice leaves out the gmm: {e}", file=sys.stderr)
    return [*names, "prior"]


def measure(
    model: VaeModel, sampler: str, reference: Reference, nets: Nets, seed: int = 0
) -> dict[str, float]:
    """The figures of `sampler`'s reference.n images against `reference`."""
    fake = sample_quality._sample(model, reference.n, sampler, seed)
    alex, vgg = nets.alex(fake).pooled, nets.vgg(fake).pooled
    kid = sample_quality.kernel_inception_distance
    fd = sample_quality.frechet_distance
    return {
        "kid_alexnet": kid(alex, reference.alex, seed)[0],
        "fd_alexnet": fd(alex, reference.alex),
        "kid_vgg16": kid(vgg, reference.vgg, seed)[0],
        "fd_vgg16": fd(vgg, reference.vgg),
        "pixels": pixel_distance(pixel_histograms(fake), reference.pixels),
    }


def rank(figures: dict[str, dict[str, float]]) -> tuple[str, dict[str, dict[str, float]]]:
    """(the chosen sampler, {sampler: {space: rank, ..., "mean": mean rank}}) by `RULE`."""
    ranks: dict[str, dict[str, float]] = {name: {} for name in figures}
    for space, key in SPACES.items():
        for name in figures:
            mine = figures[name][key]
            others = [figures[o][key] for o in figures if o != name]
            ranks[name][space] = 1 + sum(o < mine for o in others) + 0.5 * others.count(mine)
    for r in ranks.values():
        r["mean"] = float(np.mean([r[space] for space in SPACES]))
    best = min(figures, key=lambda name: (ranks[name]["mean"], TIE_ORDER.index(name)))
    return best, ranks


def choose(
    model: VaeModel,
    n: int,
    seed: int = 0,
    nets: Nets | None = None,
    reference: Reference | None = None,
) -> dict:
    """Measures every available sampler of `model` (n samples against the first n validation
    images, or `reference`), picks one by `RULE`, stores the record beside the checkpoint
    (when `model` has a workdir) and attaches it to `model` (its `auto` then uses it). Returns
    the record: choice, rule, n, seed, figures, ranks, seconds."""
    start = time.perf_counter()
    nets = nets or Nets.build()
    if reference is None:
        reference = Reference.of(validation_images(model, n), nets)
    figures = {name: measure(model, name, reference, nets, seed) for name in available(model)}
    best, ranks = rank(figures)
    record = {
        "choice": best,
        "rule": RULE,
        "split": "validation",
        "n": reference.n,
        "seed": seed,
        "figures": figures,
        "ranks": ranks,
        "seconds": round(time.perf_counter() - start, 1),
    }
    if model.workdir is not None:
        choice.write(model.workdir, model.step, model.params_sha256, record)
    model.choice = record
    return record


def validation_images(model: VaeModel, n: int) -> np.ndarray:
    """The first n images (uint8) of `model`'s validation split; at least 8 of them."""
    images = data.load_split(model.config, "validation")[:n]
    if len(images) < 8:
        raise UserError(f"the sampler choice needs at least 8 validation images, got {len(images)}")
    return images


def format_record(step: int, record: dict) -> str:
    """Text lines: the figures and ranks of each sampler, then the choice."""
    lines = [f"checkpoint {step}: sampler figures on {record['n']} validation images"]
    for name, fig in record["figures"].items():
        r = record["ranks"][name]
        lines.append(
            f"  {name:5s} KID alexnet {fig['kid_alexnet']:.4f} (FD {fig['fd_alexnet']:.1f})  "
            f"KID vgg16 {fig['kid_vgg16']:.4f} (FD {fig['fd_vgg16']:.1f})  "
            f"pixels {fig['pixels']:.4f}  mean rank {r['mean']:.2f}"
        )
    lines.append(f"  auto = {record['choice']} ({record['seconds']:.0f} s)")
    return "\n".join(lines)


def choose_checkpoints(
    workdir: str, steps: Sequence[str | int], n: int, seed: int = 0
) -> list[tuple[int, dict]]:
    """`choose` for each checkpoint of `steps` (best, latest, numbers; each step once), the
    networks and the reference features computed once. Returns (step, record) pairs. A model
    file is a UserError: the choice is stored in a training workdir, beside its checkpoint."""
    if model_file.is_model_file(workdir):
        raise UserError(f"{workdir} is a model file: choose_sampler writes into a training workdir")
    done: list[tuple[int, dict]] = []
    nets = reference = None
    for name in steps:
        model = load(workdir, name)
        if model.step in [step for step, _ in done]:
            continue
        if reference is None:
            nets = Nets.build()
            reference = Reference.of(validation_images(model, n), nets)
        done.append((int(model.step), choose(model, n, seed, nets, reference)))
    return done
