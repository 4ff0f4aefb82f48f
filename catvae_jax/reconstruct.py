"""Reconstructions of your images: python -m catvae_jax.reconstruct --workdir W --images DIR.

--images takes image files and folders (comma-separated, or several paths after it as a shell
glob gives them); a folder contributes its image files (.png, .jpg, .jpeg, .bmp, .gif, .webp,
.tif, .tiff) in name order. Each image is encoded to its posterior mean and decoded; the PNG at
--out shows rows of originals, each above its row of reconstructions.

Image size policy: the model takes S×S images (S = its config.image_size). An image of another
size is refused (one-line error, exit code 2) unless --resize is given; then it is centre-cropped
to a square and resized to S×S with a warning on stderr. Files that cannot be read as images are
skipped and listed on stderr.
"""

from __future__ import annotations

import sys

import numpy as np
from absl import flags
from etils import epath
from PIL import Image, ImageOps, UnidentifiedImageError

from catvae_jax import cli, images
from catvae_jax.data import decode
from catvae_jax.errors import UserError

IMAGE_SUFFIXES = (*decode.EXTENSIONS, ".gif", ".tif", ".tiff")  # data folders' + a few more
FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines the flags of this command (called by `run`, so importing the module defines none)."""
    flags.DEFINE_string("workdir", None, "Training run directory with checkpoints.")
    flags.DEFINE_string("step", "best", "Checkpoint: best, latest or a step number.")
    flags.DEFINE_list("images", None, "Image files and/or folders of images.")
    flags.DEFINE_string("out", "", "PNG to write (default W/reconstructions_cli.png).")
    flags.DEFINE_bool("resize", False, "Centre-crop and resize images of another size.")
    flags.DEFINE_integer("max_images", 256, "Use at most this many images.")
    flags.DEFINE_integer("ncols", 8, "Images per row.")
    flags.mark_flag_as_required("workdir")
    flags.mark_flag_as_required("images")


def image_files(paths: list[str]) -> list[epath.Path]:
    """The image files named by `paths` (files, or folders whose image files are taken)."""
    files = []
    for p in paths:
        path = epath.Path(p)
        if path.is_dir():
            files += sorted(f for f in path.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        elif path.exists():
            files.append(path)
        else:
            raise UserError(f"no such file or folder: {p}")
    if not files:
        raise UserError(f"no image files in {', '.join(paths)}")
    return files


def read_images(
    files: list[epath.Path], size: int, resize: bool = False
) -> tuple[np.ndarray, list[epath.Path], list[str]]:
    """(images [N, size, size, 3] float32 in [0, 1], the files read, the files skipped with why).

    Pixels are read as training reads them (`data.decode`: EXIF orientation applied,
    transparency on white, 16-bit scaled to 8 bits). An image that is not size×size raises
    UserError, unless `resize`: then it is centre-cropped and resized as in training (Lanczos),
    with a warning on stderr. Unreadable files are skipped.
    """
    out, kept, skipped = [], [], []
    for f in files:
        try:
            with Image.open(f) as im:
                image = decode.to_rgb(ImageOps.exif_transpose(im))
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as e:
            skipped.append(f"{f} ({type(e).__name__}: {str(e).splitlines()[0][:120]})")
            continue
        if image.size != (size, size):
            if not resize:
                raise UserError(
                    f"{f} is {image.size[0]}×{image.size[1]} pixels but the model takes "
                    f"{size}×{size}; pass --resize to centre-crop and resize it"
                )
            print(
                f"warning: {f} is {image.size[0]}×{image.size[1]}: centre-cropped and resized "
                f"to {size}×{size}",
                file=sys.stderr,
            )
            image = decode.square_resize(image, size)
        out.append(np.asarray(image, np.float32) / 255.0)
        kept.append(f)
    empty = np.zeros((0, size, size, 3), np.float32)
    return (np.stack(out) if out else empty), kept, skipped


def comparison_grid(originals: np.ndarray, recons: np.ndarray, ncols: int = 8) -> np.ndarray:
    """uint8 grid: rows of up to `ncols` originals, each row followed by their reconstructions."""
    if ncols <= 0:
        raise UserError(f"ncols must be positive, got {ncols}")
    ncols = min(ncols, len(originals))
    rows = []
    blank = np.ones_like(originals[:1])
    for start in range(0, len(originals), ncols):
        for part in (originals, recons):
            row = part[start : start + ncols]
            rows.append(np.concatenate([row, *[blank] * (ncols - len(row))]))
    return images.grid(np.concatenate(rows), ncols=ncols)


def main(argv: list[str]) -> None:
    paths = [*FLAGS.images, *argv[1:]]  # a shell glob after --images gives more paths
    from catvae_jax.inference import load, read_config

    with cli.user_errors():
        if FLAGS.max_images <= 0:
            cli.fail(f"max_images must be positive, got {FLAGS.max_images}")
        files = image_files(paths)
        if len(files) > FLAGS.max_images:
            print(
                f"warning: {len(files)} images given; using the first {FLAGS.max_images} "
                "(--max_images)",
                file=sys.stderr,
            )
            files = files[: FLAGS.max_images]
        size = int(read_config(FLAGS.workdir).image_size)
        x, kept, skipped = read_images(files, size, FLAGS.resize)
        for line in skipped:
            print(f"skipped: {line}", file=sys.stderr)
        if not kept:
            cli.fail("none of the given files could be read as an image")
        model = load(FLAGS.workdir, FLAGS.step)
        recons = model.reconstruct(x)
        out = epath.Path(FLAGS.out or epath.Path(FLAGS.workdir) / "reconstructions_cli.png")
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            images.save_png(out, comparison_grid(x, recons, FLAGS.ncols))
        except OSError as e:
            cli.fail(f"cannot write {out}: {e.strerror or e}")
    print(
        f"wrote {len(kept)} reconstructions (checkpoint {model.step}) to {out}"
        + (f"; skipped {len(skipped)} unreadable file(s)" if skipped else ""),
        flush=True,
    )


def run() -> None:
    cli.run_app(main, define_flags, positional=True)


if __name__ == "__main__":
    sys.exit(run())
