"""One evaluation command: python -m catvae_jax.evaluate --workdir W [--split test].

Prints a table and writes W/eval.json, a flat object with the keys of `likelihood.KEYS`: the
negative ELBO and importance-weighted NLL per image (nats) under a discretized Gaussian decoder
likelihood (named in its `likelihood` entry), bits per dimension, SSIM, PSNR and MS-SSIM of the
posterior-mean reconstructions, the KL per latent dimension and the number of active units.
See catvae_jax/evaluation/likelihood.py for the definitions. With --num_samples N (default
1000; 0: none) it adds the sample-quality keys of `sample_quality.KEYS` (FD, KID,
precision/recall and diversity of N samples of --sampler, default auto, with the floor and
the decoder's limit: catvae_jax/evaluation/sample_quality.py); --nolikelihood skips the
importance-weighted part. The same seed gives the same numbers.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator

from absl import flags
from etils import epath

from catvae_jax import atomic, cli, data
from catvae_jax.errors import failed_write
from catvae_jax.evaluation import likelihood, sample_quality
from catvae_jax.inference import load
from catvae_jax.model_file import output_path
from catvae_jax.priors.gmm import SAMPLERS

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines the flags of this command (called by `run`, so importing the module defines none)."""
    flags.DEFINE_string(
        "workdir", None, "Training run directory, model file (.catvae) or pretrained:NAME."
    )
    flags.DEFINE_string("step", "best", "Checkpoint: best, latest or a step number.")
    flags.DEFINE_string("split", "test", "Split to evaluate: train, validation or test.")
    flags.DEFINE_integer("iw_samples", 100, "Posterior samples per image for the IW bound.")
    cli.define_seed("Seed of the posterior samples.")
    flags.DEFINE_integer("batch_size", 64, "Images per evaluation batch.")
    flags.DEFINE_integer("max_examples", 0, "Evaluate only the first N images (0: all).")
    flags.DEFINE_string("out", "", "JSON file to write (default W/eval.json).")
    flags.DEFINE_integer("num_samples", 1000, "Samples for the sample-quality metrics (0: none).")
    flags.DEFINE_enum("sampler", "auto", list(SAMPLERS), "Sampler of the sample metrics.")
    flags.DEFINE_integer(
        "gmm_components", None, "Mixture components (gmm sampler); default: the run's config."
    )
    flags.DEFINE_bool("likelihood", True, "Compute the likelihood keys (--nolikelihood: skip).")
    flags.DEFINE_bool("vgg", True, "Sample metrics in VGG16 features too (--novgg: AlexNet only).")
    flags.mark_flag_as_required("workdir")


def main(argv: list[str]) -> None:
    max_examples = FLAGS.max_examples or None  # 0: all
    with cli.user_errors():
        likelihood.check_args(FLAGS.iw_samples, FLAGS.batch_size, max_examples)  # before the load
        if not (FLAGS.likelihood or FLAGS.num_samples):
            cli.fail("nothing to evaluate: --nolikelihood and --num_samples 0")
        if FLAGS.num_samples:
            sample_quality.check_args(FLAGS.num_samples)
        if FLAGS.gmm_components is not None and FLAGS.gmm_components <= 0:
            cli.fail(f"--gmm_components must be positive, got {FLAGS.gmm_components}")
        model = load(FLAGS.workdir, FLAGS.step)
        if FLAGS.num_samples and FLAGS.likelihood:  # before the likelihood pass, not after it
            size = len(data.load_split(model.config, FLAGS.split))
            sample_quality.check_args(FLAGS.num_samples, FLAGS.split, size)
        gmm_k = FLAGS.num_samples and FLAGS.gmm_components is not None
        if gmm_k and model.resolve_sampler(FLAGS.sampler) == "gmm":  # as generate does
            model.fit_gmm(n_components=FLAGS.gmm_components)
        start = time.perf_counter()
        result = {"split": FLAGS.split, "checkpoint_step": model.step}
        if FLAGS.likelihood:
            doing = (
                f"the {FLAGS.split} split, {FLAGS.iw_samples} importance samples per image "
                f"(the decoder's σ fitted to up to {likelihood.SIGMA_FIT_IMAGES} training "
                "images first)"
            )
            with _said("likelihood", doing):
                result = likelihood.evaluate(
                    model,
                    FLAGS.split,
                    iw_samples=FLAGS.iw_samples,
                    seed=FLAGS.seed,
                    batch_size=FLAGS.batch_size,
                    max_examples=max_examples,
                )
        if FLAGS.num_samples:
            n, nets = FLAGS.num_samples, "AlexNet and VGG16" if FLAGS.vgg else "AlexNet"
            doing = (
                f"{nets} features of up to {n} training images, {n} samples (sampler "
                f"{FLAGS.sampler}) and up to {n} {FLAGS.split} images and their reconstructions"
            )
            with _said("sample quality", doing):
                result |= sample_quality.evaluate(
                    model,
                    FLAGS.split,
                    num_samples=FLAGS.num_samples,
                    sampler=FLAGS.sampler,
                    seed=FLAGS.seed,
                    vgg=FLAGS.vgg,
                )
        seconds = time.perf_counter() - start
        path = epath.Path(FLAGS.out or output_path(FLAGS.workdir, "eval.json"))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic.write_json(path, result)
        except OSError as e:  # a full or read-only disk: exit 1; e.g. a folder in the way: 2
            raise failed_write(e, path) from e
    if FLAGS.likelihood:
        print(likelihood.format_table(result))
    if FLAGS.num_samples:
        print(sample_quality.format_table(result))
    print(f"wrote {path} ({seconds:.1f} s)", flush=True)


@contextlib.contextmanager
def _said(what: str, doing: str) -> Iterator[None]:
    """Prints 'WHAT: DOING ...' before the block and 'WHAT: done in N s' after it."""
    print(f"{what}: {doing} ...", flush=True)
    start = time.perf_counter()
    yield
    print(f"{what}: done in {time.perf_counter() - start:.1f} s", flush=True)


def run() -> None:
    cli.run_app(main, define_flags)


if __name__ == "__main__":
    sys.exit(run())
