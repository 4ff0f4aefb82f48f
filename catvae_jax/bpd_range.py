"""The bits/dim range of the images a model knows, and where a new image falls in it.

At the end of training (and by `fit_prior`) the bits/dim of each held-out validation image
under the model is computed (catvae_jax/evaluation/typicality.py) and its percentiles are
stored beside the checkpoint, WORKDIR/bpd_<step>.json, with the digest of the parameters it
was measured with (a reader ignores one of other parameters), and in an exported model file.
`BpdRange.judge` places an image's bits/dim among them: one above every reference image is far
from what the model was trained on (a photo under a cartoon model, a coffee cup under a cat
model), one below every reference image unusually simple for it (a blank image). With N
reference images an image like them is flagged with probability about 2/(N + 1) (256 images:
0.8 %). Pure numbers and JSON: the service and the commands read it without the evaluation
stack.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import sys

import numpy as np
from etils import epath

from catvae_jax import atomic


@dataclasses.dataclass(frozen=True)
class Verdict:
    """Where one image's bits/dim falls in a model's range."""

    bits_per_dim: float
    percentile: float  # of the reference images with a lower bits/dim, in [0, 100]
    far: bool  # above or below every reference image
    sentence: str  # a one-line explanation for people

    def headers(self) -> dict[str, str]:
        """The HTTP response headers that carry the verdict."""
        return {
            "X-Bits-Per-Dim": f"{self.bits_per_dim:.4f}",
            "X-Bits-Per-Dim-Percentile": f"{self.percentile:.1f}",
            "X-Far-From-Training": "true" if self.far else "false",
            "X-Input-Note": self.sentence,
        }


@dataclasses.dataclass(frozen=True)
class BpdRange:
    """Percentiles 0, 1, ..., 100 of the bits/dim of `num_images` images of `split`, computed
    with the decoder σ `sigma` and `iw_samples` importance samples (seed `seed`)."""

    quantiles: tuple[float, ...]  # 101 non-decreasing values: quantiles[q] is percentile q
    sigma: float
    iw_samples: int
    seed: int
    split: str
    num_images: int
    step: int | None
    params_sha256: str = ""  # digest of the parameters it was measured with (state.params_digest)

    @classmethod
    def of(cls, bits_per_dim: np.ndarray, **fields) -> BpdRange:
        """The range of per-image bits/dim [N] (N ≥ 1); `fields`: the other attributes."""
        values = np.asarray(bits_per_dim, np.float64)
        quantiles = np.percentile(values, np.arange(101))
        return cls(tuple(float(q) for q in quantiles), num_images=len(values), **fields)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"quantiles": list(self.quantiles)}

    @classmethod
    def from_dict(cls, d: dict) -> BpdRange:
        """Raises ValueError (or KeyError, TypeError) unless `d` is a complete, sane range."""
        q = tuple(float(v) for v in d["quantiles"])
        ok = len(q) == 101 and all(math.isfinite(v) for v in q)
        if not ok or any(b < a for a, b in itertools.pairwise(q)):
            raise ValueError("quantiles must be 101 finite non-decreasing numbers")
        step = d["step"]
        return cls(
            quantiles=q,
            sigma=float(d["sigma"]),
            iw_samples=int(d["iw_samples"]),
            seed=int(d["seed"]),
            split=str(d["split"]),
            num_images=int(d["num_images"]),
            step=None if step is None else int(step),
            params_sha256=str(d.get("params_sha256", "")),
        )

    def percentile(self, bits_per_dim: float) -> float:
        """The share of reference images (in %) whose bits/dim is below `bits_per_dim`."""
        q = np.asarray(self.quantiles)
        lo = np.searchsorted(q, bits_per_dim, side="left")
        hi = np.searchsorted(q, bits_per_dim, side="right")
        if hi > lo:  # equal to one or more quantiles (a flat stretch): their middle
            return float((lo + hi - 1) / 2)
        if lo == 0 or hi == len(q):  # below the lowest or above the highest
            return 0.0 if lo == 0 else 100.0
        return float(np.interp(bits_per_dim, q, np.arange(101)))

    def judge(self, bits_per_dim: float) -> Verdict:
        """The verdict on an image of `bits_per_dim` (see the module docstring)."""
        bpd, p = float(bits_per_dim), self.percentile(bits_per_dim)
        low, high = self.quantiles[0], self.quantiles[-1]
        images = f"the {self.num_images} {self.split} images it was checked on"
        span = f"{images} span {low:.3f}-{high:.3f} bits/dim"
        if bpd > high:
            sentence = (
                f"{bpd:.3f} bits/dim, more than any of {images} ({low:.3f}-{high:.3f}): far from "
                "what this model knows; its reconstruction will not look like it"
            )
        elif bpd < low:
            sentence = (
                f"{bpd:.3f} bits/dim, less than any of {images} ({low:.3f}-{high:.3f}): "
                "unusually simple for this model (a blank or flat image?)"
            )
        else:
            sentence = (
                f"{bpd:.3f} bits/dim, percentile {p:.0f}: within what this model knows ({span})"
            )
        return Verdict(bpd, p, not low <= bpd <= high, sentence)


def path(workdir: str | epath.Path, step: int | None) -> epath.Path:
    """WORKDIR/bpd_<step>.json, where the range of checkpoint `step` is stored."""
    return epath.Path(workdir) / f"bpd_{step if step is not None else 'none'}.json"


def save(bpd_range: BpdRange, where: str | epath.Path) -> epath.Path:
    """Writes the range as JSON, atomically."""
    return atomic.write_json(where, bpd_range.to_dict())


def read(where: str | epath.Path, params_sha256: str | None = None) -> BpdRange | None:
    """The range stored at `where`, or None: none, or unusable (unreadable, or measured with
    other parameters than those of digest `params_sha256`, None: not checked; a one-line
    warning on stderr)."""
    where = epath.Path(where)
    if not where.exists():
        return None
    try:
        found = BpdRange.from_dict(json.loads(where.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"warning: ignoring unreadable bits/dim range {where}: {e}", file=sys.stderr)
        return None
    if params_sha256 is not None and found.params_sha256 != params_sha256:
        why = "other parameters than this checkpoint's" if found.params_sha256 else "no digest"
        print(
            f"warning: ignoring bits/dim range {where}: it was measured with {why}; "
            "python -m catvae_jax.fit_prior measures it again",
            file=sys.stderr,
        )
        return None
    return found
