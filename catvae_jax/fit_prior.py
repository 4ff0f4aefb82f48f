"""Fits the learned prior of existing checkpoints: python -m catvae_jax.fit_prior --workdir W.

Without --step it fits `best` and `latest` (once when they are the same checkpoint), as
training does at its end; with --step S only that one. Each fit is written to
W/flow_<step>.npz, beside the checkpoint, where generate, serve, evaluate and
`catvae_jax.load` find it (their `auto` sampler then uses it), and the bits/dim range of the
validation images to W/bpd_<step>.json (what reconstruct and the service judge inputs by).
Works for imported workdirs too, as long as their training split can be read.
"""

from __future__ import annotations

import sys

from absl import flags

from catvae_jax import after_training, cli

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines the flags of this command (called by `run`, so importing the module defines none)."""
    flags.DEFINE_string("workdir", None, "Training run directory with checkpoints.")
    flags.DEFINE_string("step", None, "Checkpoint: best, latest or a number (default: both).")
    flags.DEFINE_integer("max_images", 10_000, "Training images whose latents it is fitted to.")
    flags.mark_flag_as_required("workdir")


def main(argv: list[str]) -> None:
    with cli.user_errors():  # each fit says when it starts and ends, and where it wrote
        steps = [FLAGS.step] if FLAGS.step else list(after_training.DEFAULT_STEPS)
        after_training.fit_checkpoints(FLAGS.workdir, steps, FLAGS.max_images)


def run() -> None:
    cli.run_app(main, define_flags)


if __name__ == "__main__":
    sys.exit(run())
