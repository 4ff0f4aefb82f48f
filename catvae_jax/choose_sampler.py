"""Measures the samplers of existing checkpoints and stores the best for `auto`:
python -m catvae_jax.choose_sampler --workdir W [--step S] [--num_samples N].

Without --step it measures `best` and `latest` (once when they are the same checkpoint), as
training does at its end (`config.choose_sampler`); with --step S only that one. Each available
sampler (prior, gmm, flow: fit the flow first with fit_prior) draws N images that are compared
with N validation images in AlexNet and VGG16 features and in pixel statistics
(catvae_jax/evaluation/sampler_choice.py); the figures and the choice are written to
W/sampler_<step>.json, where generate, serve, evaluate and `catvae_jax.load` find it.
"""

from __future__ import annotations

import sys

from absl import flags

from catvae_jax import after_training, cli
from catvae_jax.evaluation import sampler_choice

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines the flags of this command (called by `run`, so importing the module defines none)."""
    flags.DEFINE_string("workdir", None, "Training run directory with checkpoints.")
    flags.DEFINE_string("step", None, "Checkpoint: best, latest or a number (default: both).")
    flags.DEFINE_integer("num_samples", 256, "Samples per sampler and validation images.")
    cli.define_seed("Seed of the samples.")
    flags.mark_flag_as_required("workdir")


def main(argv: list[str]) -> None:
    with cli.user_errors():
        if not 8 <= FLAGS.num_samples <= sampler_choice.MAX_SAMPLES:
            cli.fail(f"--num_samples must be between 8 and {sampler_choice.MAX_SAMPLES}")
        steps = [FLAGS.step] if FLAGS.step else list(after_training.DEFAULT_STEPS)
        done = sampler_choice.choose_checkpoints(
            FLAGS.workdir, steps, FLAGS.num_samples, FLAGS.seed
        )
    for step, record in done:
        print(sampler_choice.format_record(step, record))
        print(f"wrote {FLAGS.workdir}/sampler_{step}.json", flush=True)


def run() -> None:
    cli.run_app(main, define_flags)


if __name__ == "__main__":
    sys.exit(run())
