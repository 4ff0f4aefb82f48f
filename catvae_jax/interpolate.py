"""Latent interpolations: python -m catvae_jax.interpolate --workdir W --out interp.png.

Picks --pairs pairs of images of a split (validation by default; which ones is decided by
--seed), encodes each to its posterior mean and decodes --steps evenly spaced points on the line
between the two means. Each row of the PNG is: image A, the decoded path (its ends are the
reconstructions of A and B), image B.
"""

from __future__ import annotations

import sys

from absl import flags

from catvae_jax import cli, images, pictures
from catvae_jax.inference import load, read_config
from catvae_jax.model_file import output_path

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines the flags of this command (called by `run`, so importing the module defines none)."""
    flags.DEFINE_string(
        "workdir", None, "Training run directory, model file (.catvae) or pretrained:NAME."
    )
    flags.DEFINE_string("step", "best", "Checkpoint: best, latest or a step number.")
    flags.DEFINE_string(
        "out", "", "Picture to write, .png/.jpg/.webp (default W/interpolations.png)."
    )
    flags.DEFINE_integer("pairs", 4, "Number of image pairs (rows).")
    flags.DEFINE_integer("steps", 8, "Decoded points per row, both ends included (2–256).")
    cli.define_seed("Which images are paired.")
    flags.DEFINE_string("split", "validation", "Split the images come from.")
    flags.mark_flag_as_required("workdir")


def main(argv: list[str]) -> None:
    with cli.user_errors():
        out = pictures.check_out(FLAGS.out or output_path(FLAGS.workdir, "interpolations.png"))
        pictures.check_interpolation_args(FLAGS.pairs, FLAGS.steps)
        columns = FLAGS.steps + 2  # image A, the path, image B
        size = read_config(FLAGS.workdir).image_size
        pictures.check_grid(out, FLAGS.pairs * columns, size, ncols=columns)
        model = load(FLAGS.workdir, FLAGS.step)
        rows = pictures.interpolation_rows(model, FLAGS.pairs, FLAGS.steps, FLAGS.seed, FLAGS.split)
        grid = images.grid(rows.reshape(-1, *rows.shape[2:]), ncols=rows.shape[1])
        pictures.write_image(out, grid)
    print(
        f"wrote {rows.shape[0]} interpolations of {FLAGS.steps} steps between {FLAGS.split} "
        f"images (checkpoint {model.step}) to {out}",
        flush=True,
    )


def run() -> None:
    cli.run_app(main, define_flags)


if __name__ == "__main__":
    sys.exit(run())
