"""Reconstructions of your images: python -m catvae_jax.reconstruct --workdir W --images DIR.

--images takes image files and folders (comma-separated, or several paths after it as a shell
glob gives them); a folder contributes its image files (.png, .jpg, .jpeg, .bmp, .gif, .webp,
.tif, .tiff, in any letter case) in name order. Each image is encoded to its posterior mean and
decoded; the PNG at --out shows rows of originals, each above its row of reconstructions.

Image size policy: the model takes S×S images (S = its config.image_size). An image of another
size is refused (one-line error, exit code 2) unless --resize is given; then it is centre-cropped
to a square and resized to S×S with a warning on stderr. Files that cannot be read as images, and
images over the pixel limit of every reader (`data.decode.MAX_PIXELS`: decompression bombs), are
skipped and listed on stderr.

Each input's bits/dim under the model is placed in the range of the model's validation images
(stored at the end of training: catvae_jax/bpd_range.py); one outside it gets a warning line on
stderr: the model does not know images like it, and its reconstruction will not look like it.
"""

from __future__ import annotations

import sys

from absl import flags

from catvae_jax import cli, pictures
from catvae_jax.cli import plural
from catvae_jax.evaluation import typicality
from catvae_jax.inference import load, read_config
from catvae_jax.model_file import output_path

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines the flags of this command (called by `run`, so importing the module defines none)."""
    flags.DEFINE_string(
        "workdir", None, "Training run directory, model file (.catvae) or pretrained:NAME."
    )
    flags.DEFINE_string("step", "best", "Checkpoint: best, latest or a step number.")
    flags.DEFINE_list("images", None, "Image files and/or folders of images.")
    flags.DEFINE_string(
        "out", "", "Picture to write, .png/.jpg/.webp (default W/reconstructions_cli.png)."
    )
    flags.DEFINE_bool("resize", False, "Centre-crop and resize images of another size.")
    flags.DEFINE_integer("max_images", 256, "Use at most this many images.", lower_bound=1)
    flags.DEFINE_integer("ncols", 8, "Images per row.")
    flags.mark_flag_as_required("workdir")
    flags.mark_flag_as_required("images")


def main(argv: list[str]) -> None:
    paths = [*FLAGS.images, *argv[1:]]  # a shell glob after --images gives more paths
    with cli.user_errors():
        out = FLAGS.out or output_path(FLAGS.workdir, "reconstructions_cli.png")
        pictures.check_out(out)
        files = pictures.image_files(paths)
        if len(files) > FLAGS.max_images:
            print(
                f"warning: {len(files)} images given; using the first {FLAGS.max_images} "
                "(--max_images)",
                file=sys.stderr,
            )
            files = files[: FLAGS.max_images]
        size = int(read_config(FLAGS.workdir).image_size)
        x, kept, skipped = pictures.read_images(files, size, FLAGS.resize)
        for line in skipped:
            print(f"skipped: {line}", file=sys.stderr)
        if not kept:
            cli.fail("none of the given files could be read as an image")
        pictures.check_comparison(out, len(kept), size, FLAGS.ncols)
        model = load(FLAGS.workdir, FLAGS.step)
        recons = model.reconstruct(x)
        pictures.write_image(out, pictures.comparison_grid(x, recons, FLAGS.ncols))
        far = _check_inputs(model, x, kept)
    print(
        f"wrote {plural(len(kept), 'reconstruction')} (checkpoint {model.step}) to {out}"
        + (f"; skipped {plural(len(skipped), 'unreadable file')}" if skipped else "")
        + (f"; {far} far from what the model knows" if far else ""),
        flush=True,
    )


def _check_inputs(model, x, files) -> int:
    """Warns, one line per image, of inputs whose bits/dim under the model is outside the range
    of its validation images (catvae_jax/bpd_range.py); returns how many."""
    verdicts = typicality.check(model, x)
    if verdicts is None:
        print(
            f"note: checkpoint {model.step} has no bits/dim range, so the inputs are not "
            "checked against what the model knows (python -m catvae_jax.fit_prior adds it)",
            file=sys.stderr,
        )
        return 0
    far = [(f, v) for f, v in zip(files, verdicts, strict=True) if v.far]
    for f, verdict in far:
        print(f"warning: {f}: {verdict.sentence}", file=sys.stderr)
    return len(far)


def run() -> None:
    cli.run_app(main, define_flags, positional=True)


if __name__ == "__main__":
    sys.exit(run())
