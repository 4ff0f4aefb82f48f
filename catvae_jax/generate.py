"""Samples from a trained model: python -m catvae_jax.generate --workdir W --n 64 --out grid.png.

Draws n latents with --sampler (default auto: the learned prior W/flow_<step>.npz when it
exists, else a Gaussian mixture fitted to the training set's latent means, cached in
W/gmm_<step>.npz, else N(0, I); prior, gmm and flow pick one), decodes them and writes one
grid PNG of ⌈√n⌉ columns, or with --individual one PNG per image into the folder --out.
The same seed gives the same images.
"""

from __future__ import annotations

import sys
import time

from absl import flags

from catvae_jax import cli, pictures
from catvae_jax.cli import plural
from catvae_jax.inference import check_generate_args, load, read_config
from catvae_jax.model_file import output_path
from catvae_jax.priors.gmm import SAMPLERS

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines the flags of this command (called by `run`, so importing the module defines none)."""
    flags.DEFINE_string(
        "workdir", None, "Training run directory, model file (.catvae) or pretrained:NAME."
    )
    flags.DEFINE_string("step", "best", "Checkpoint: best, latest or a step number.")
    flags.DEFINE_integer("n", 64, "Number of images (1–4096).")
    cli.define_seed("Random seed of the latents.")
    flags.DEFINE_float("temperature", 1.0, "Scale of the latent noise, in (0, 10].")
    flags.DEFINE_enum(
        "sampler", "auto", list(SAMPLERS), "Latent sampler: auto = flow, else gmm, else prior."
    )
    flags.DEFINE_integer(
        "gmm_components", None, "Mixture components (gmm sampler); default: the run's config."
    )
    flags.DEFINE_string(
        "out",
        "",
        "Grid picture to write, .png/.jpg/.webp (default W/generated.png, ./generated.png for a "
        "model file); with --individual, a folder of PNGs.",
    )
    flags.DEFINE_bool("individual", False, "One PNG per image instead of a grid.")
    flags.mark_flag_as_required("workdir")


def main(argv: list[str]) -> None:
    with cli.user_errors():
        check_generate_args(FLAGS.n, FLAGS.temperature, FLAGS.sampler)  # before the slow load
        default = "generated" if FLAGS.individual else "generated.png"
        out = FLAGS.out or str(output_path(FLAGS.workdir, default))
        pictures.check_out(out, folder=FLAGS.individual)
        if not FLAGS.individual:  # a grid too large for its format: refused before the work
            pictures.check_grid(out, FLAGS.n, read_config(FLAGS.workdir).image_size)
        model = load(FLAGS.workdir, FLAGS.step)
        sampler = model.resolve_sampler(FLAGS.sampler)
        if sampler == "gmm":
            model.fit_gmm(n_components=FLAGS.gmm_components)
        start = time.perf_counter()
        samples = model.generate(FLAGS.n, FLAGS.seed, FLAGS.temperature, sampler)
        seconds = time.perf_counter() - start
        paths = pictures.write_samples(samples, out, FLAGS.individual)
    where = out if len(paths) == 1 else f"{plural(len(paths), 'file')} in {out}"
    print(
        f"wrote {plural(FLAGS.n, 'sample')} (checkpoint {model.step}, sampler {FLAGS.sampler}"
        f"{f' = {sampler}' if sampler != FLAGS.sampler else ''}, "
        f"seed {FLAGS.seed}, temperature {FLAGS.temperature:g}) to {where}; "
        f"generating took {seconds:.2f} s including compilation",
        flush=True,
    )


def run() -> None:
    cli.run_app(main, define_flags)


if __name__ == "__main__":
    sys.exit(run())
