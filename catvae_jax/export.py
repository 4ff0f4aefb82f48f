"""A trained model as one file: python -m catvae_jax.export --workdir W --out cats.catvae.

Writes checkpoint --step (default best) of workdir W as a model file (catvae_jax/model_file.py):
a zip archive when --out ends in .catvae, else a new folder in the Hugging Face model layout
(config.json, model.safetensors, the learned prior, the bits/dim range, eval.json, the measured
sampler choice, a README.md model card with 64 samples in samples.png, and checksums.sha256).
Every command that takes --workdir takes the file too, and so does `catvae_jax.load`. --dtype
float16 halves the file.
With --ship it also writes OUT's name with .json instead of .catvae: what a model shipped as
`pretrained:<name>` carries beside it (sha256, size, the training commands, metrics, an FD
check of the file as loaded).

To share a model folder on the Hugging Face hub (needs a network and an account):
`huggingface-cli upload USER/NAME FOLDER .`; a clone of that repository is again a model folder.
"""

from __future__ import annotations

import sys

from absl import flags
from etils import epath

from catvae_jax import atomic, cli, sharing
from catvae_jax.model_file import DTYPES, SAMPLER_CHOICE, SUFFIX

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines the flags of this command (called by `run`, so importing the module defines none)."""
    flags.DEFINE_string("workdir", None, "Training run directory with checkpoints.")
    flags.DEFINE_string("step", "best", "Checkpoint: best, latest or a step number.")
    flags.DEFINE_string("out", None, "Model file to write: NAME.catvae (a zip) or a new folder.")
    flags.DEFINE_enum("dtype", "float32", list(DTYPES), "Storage type of the parameters.")
    flags.DEFINE_bool("ship", False, "Also write NAME.json for catvae_jax/pretrained/.")
    flags.DEFINE_integer("fd_check_n", sharing.FD_CHECK_N, "With --ship: samples of the FD check.")
    flags.mark_flag_as_required("workdir")
    flags.mark_flag_as_required("out")


def main(argv: list[str]) -> None:
    with cli.user_errors():
        if FLAGS.ship and not FLAGS.out.endswith(SUFFIX):
            cli.fail(f"--ship needs an --out ending in {SUFFIX}")
        done = sharing.export(FLAGS.workdir, FLAGS.out, FLAGS.step, FLAGS.dtype)
    measured = " (the measured choice)" if SAMPLER_CHOICE in done.members else ""
    print(
        f"wrote {done.path} ({done.num_bytes / 1e6:.2f} MB): checkpoint {done.step}, "
        f"{done.num_params:,} parameters as {done.dtype}, samples of the {done.sampler} "
        f"sampler{measured}; members {', '.join(done.members)}",
        flush=True,
    )
    if FLAGS.ship:
        with cli.user_errors():
            described = sharing.ship(done.path, done.commands, FLAGS.fd_check_n)
            path = epath.Path(FLAGS.out[: -len(SUFFIX)] + ".json")
            atomic.write_json(path, described)
        check = described["fd_check"]
        print(f"wrote {path}: FD check {check['fd']:.3f} (n {check['n']})", flush=True)


def run() -> None:
    cli.run_app(main, define_flags)


if __name__ == "__main__":
    sys.exit(run())
