"""Latent interpolations: python -m catvae_jax.interpolate --workdir W --out interp.png.

Picks --pairs pairs of images of a split (validation by default; which ones is decided by
--seed), encodes each to its posterior mean and decodes --steps evenly spaced points on the line
between the two means. Each row of the PNG is: image A, the decoded path (its ends are the
reconstructions of A and B), image B.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import numpy as np
from absl import flags
from etils import epath

from catvae_jax import cli, images
from catvae_jax.errors import UserError

if TYPE_CHECKING:  # annotations only: importing it here would be circular
    from catvae_jax.inference import VaeModel

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines the flags of this command (called by `run`, so importing the module defines none)."""
    flags.DEFINE_string("workdir", None, "Training run directory with checkpoints.")
    flags.DEFINE_string("step", "best", "Checkpoint: best, latest or a step number.")
    flags.DEFINE_string("out", "", "PNG to write (default W/interpolations.png).")
    flags.DEFINE_integer("pairs", 4, "Number of image pairs (rows).")
    flags.DEFINE_integer("steps", 8, "Decoded points per row, both ends included (2–256).")
    flags.DEFINE_integer("seed", 0, "Which images are paired.")
    flags.DEFINE_string("split", "validation", "Split the images come from.")
    flags.mark_flag_as_required("workdir")


MAX_PAIRS = 64


def interpolation_rows(
    model: VaeModel, pairs: int = 4, steps: int = 8, seed: int = 0, split: str = "validation"
) -> np.ndarray:
    """[pairs, steps + 2, S, S, 3] float32: per row image A, the decoded path, image B."""
    from catvae_jax.data import load_split

    if not 1 <= pairs <= MAX_PAIRS:
        raise UserError(f"pairs must be between 1 and {MAX_PAIRS}, got {pairs}")
    data = load_split(model.config, split)
    if len(data) < 2 * pairs:
        raise UserError(f"{pairs} pairs need {2 * pairs} {split} images, the split has {len(data)}")
    order = np.random.default_rng(seed).permutation(len(data))[: 2 * pairs]
    x = data[order].astype(np.float32) / 255.0
    x_a, x_b = x[:pairs], x[pairs:]
    path = model.interpolate(x_a, x_b, steps)
    return np.concatenate([x_a[:, None], path, x_b[:, None]], axis=1)


def main(argv: list[str]) -> None:
    from catvae_jax.inference import load

    with cli.user_errors():
        if not 2 <= FLAGS.steps <= 256:
            cli.fail(f"steps must be between 2 and 256, got {FLAGS.steps}")
        if not 1 <= FLAGS.pairs <= MAX_PAIRS:
            cli.fail(f"pairs must be between 1 and {MAX_PAIRS}, got {FLAGS.pairs}")
        model = load(FLAGS.workdir, FLAGS.step)
        rows = interpolation_rows(model, FLAGS.pairs, FLAGS.steps, FLAGS.seed, FLAGS.split)
        out = epath.Path(FLAGS.out or epath.Path(FLAGS.workdir) / "interpolations.png")
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            grid = images.grid(rows.reshape(-1, *rows.shape[2:]), ncols=rows.shape[1])
            images.save_png(out, grid)
        except OSError as e:
            cli.fail(f"cannot write {out}: {e.strerror or e}")
    print(
        f"wrote {rows.shape[0]} interpolations of {FLAGS.steps} steps between {FLAGS.split} "
        f"images (checkpoint {model.step}) to {out}",
        flush=True,
    )


def run() -> None:
    cli.run_app(main, define_flags)


if __name__ == "__main__":
    sys.exit(run())
