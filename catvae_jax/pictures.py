"""Pictures in and out of a trained model: the user's images read as training reads them, and
the PNGs the commands write (sample grids, interpolation rows, reconstruction comparisons).

Images are NHWC float32 in [0, 1] unless said otherwise. Every read goes through the one reader
of user images, `data.decode` (one list of file types, one pixel limit); every write is atomic
and turns a failed write into a one-line UserError.
"""

from __future__ import annotations

import contextlib
import math
import sys

import numpy as np
from etils import epath

from catvae_jax import atomic, data, images
from catvae_jax.data import decode
from catvae_jax.errors import EnvironmentFailure, UserError, failed_write
from catvae_jax.inference import VaeModel

MAX_PAIRS = 64


def image_files(paths: list[str]) -> list[epath.Path]:
    """The image files named by `paths`: files as given, and each folder's files with an image
    extension (`decode.EXTENSIONS`, hidden files left out) in name order."""
    files = []
    for p in paths:
        path = epath.Path(p)
        if path.is_dir():
            files += sorted(f for f in path.iterdir() if decode.is_candidate(f.name))
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
    """(images [N, size, size, 3] float32 in [0, 1], the files read, "file (why)" of each file
    skipped).

    Pixels are read as training reads them (`data.decode`: EXIF orientation applied,
    transparency on white, 16-bit scaled to 8 bits). An image that is not size×size raises
    UserError, unless `resize`: then it is centre-cropped and resized as in training (Lanczos),
    with a warning on stderr. Unreadable files and images over the pixel limit (decompression
    bombs) are skipped.
    """
    out, kept, skipped = [], [], []
    for f in files:
        try:
            image, (w, h) = decode.read_image(decode.read_file(f), size)
        except decode.Undecodable as e:
            skipped.append(f"{f} ({e})")
            continue
        if (w, h) != (size, size):
            if not resize:
                raise UserError(
                    f"{f} is {w}×{h} pixels but the model takes {size}×{size}; pass --resize "
                    "to centre-crop and resize it"
                )
            print(
                f"warning: {f} is {w}×{h}: centre-cropped and resized to {size}×{size}",
                file=sys.stderr,
            )
        out.append(images.to_unit(image))
        kept.append(f)
    empty = np.zeros((0, size, size, 3), np.float32)
    return (np.stack(out) if out else empty), kept, skipped


def read_upload(data: bytes, size: int) -> tuple[np.ndarray, str | None]:
    """Image file bytes → ([1, size, size, 3] float32 in [0, 1], how it was resized or None).

    Raises decode.TooLarge over the pixel limit and decode.Undecodable for bytes that are not
    an image; another size is centre-cropped and resized as training data is.
    """
    image, (w, h) = decode.read_image(data, size)
    resized = None
    if (w, h) != (size, size):
        side = min(w, h)
        crop = "" if w == h else f"centre-cropped to {side}x{side}, "
        resized = f"{w}x{h} {crop}resized to {size}x{size}"
    return images.to_unit(image)[None], resized


def check_comparison(path: str | epath.Path, n: int, size: int, ncols: int) -> None:
    """A UserError, before the work, unless `comparison_grid` of n images size×size in `ncols`
    columns can be written to `path` (ncols positive, the picture within its format's limit)."""
    if ncols <= 0:
        raise UserError(f"ncols must be positive, got {ncols}")
    ncols = min(ncols, n)
    check_grid(path, 2 * math.ceil(n / ncols) * ncols, size, ncols)


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


def check_interpolation_args(pairs: int, steps: int) -> None:
    """A UserError unless 1 ≤ pairs ≤ MAX_PAIRS and 2 ≤ steps ≤ 256."""
    if not 1 <= pairs <= MAX_PAIRS:
        raise UserError(f"pairs must be between 1 and {MAX_PAIRS}, got {pairs}")
    if not 2 <= steps <= 256:
        raise UserError(f"steps must be between 2 and 256, got {steps}")


def interpolation_rows(
    model: VaeModel, pairs: int = 4, steps: int = 8, seed: int = 0, split: str = "validation"
) -> np.ndarray:
    """[pairs, steps + 2, S, S, 3] float32: per row image A, the decoded path, image B; which
    images of `split` are paired is decided by `seed`."""
    check_interpolation_args(pairs, steps)
    split_images = data.load_split(model.config, split)
    n = len(split_images)
    if n < 2 * pairs:
        raise UserError(f"{pairs} pairs need {2 * pairs} {split} images, the split has {n}")
    order = np.random.default_rng(seed).permutation(n)[: 2 * pairs]
    x = images.to_unit(split_images[order])
    x_a, x_b = x[:pairs], x[pairs:]
    path = model.interpolate(x_a, x_b, steps)
    return np.concatenate([x_a[:, None], path, x_b[:, None]], axis=1)


# What an output picture's name may end in, and the format it is written in; a name with no
# suffix gets PNG.
OUTPUT_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}


def check_out(path: str | epath.Path, folder: bool = False) -> epath.Path:
    """`path` as an output picture (or, with `folder`, a folder of them), or a UserError that
    says what is wrong with it: called before the slow work, so a bad --out costs nothing."""
    path = epath.Path(path)
    if folder:
        if path.exists() and not path.is_dir():
            raise UserError(f"cannot write into {path}: it is a file, not a folder")
        return path
    if path.is_dir():
        raise UserError(
            f"cannot write {path}: it is a folder; give a file name such as {path}/grid.png"
        )
    if path.suffix and path.suffix.lower() not in OUTPUT_FORMATS:
        names = ", ".join(OUTPUT_FORMATS)
        raise UserError(f"cannot write {path}: a picture's name must end in one of {names}")
    return atomic.check_replaceable(path)


def check_grid(path: str | epath.Path, n: int, size: int, ncols: int | None = None) -> None:
    """A UserError, before the work, when a grid of n size×size images in `ncols` columns
    (default ⌈√n⌉; `images.grid`) is larger than the format `path` names can encode."""
    path = epath.Path(path)
    fmt = OUTPUT_FORMATS.get(path.suffix.lower(), "PNG")
    height, width = images.grid_shape(n, size, size, ncols)
    if max(height, width) > images.MAX_SIDE[fmt]:
        raise UserError(
            f"cannot write {path}: the picture would be {width}×{height} pixels, over the "
            f"{fmt} limit of {images.MAX_SIDE[fmt]} a side; write a .png, or fewer images a row"
        )


def write_image(path: str | epath.Path, image: np.ndarray) -> epath.Path:
    """Writes one image [H, W, 3] (a grid) to `path` atomically, making its folder, in the
    format its suffix names (OUTPUT_FORMATS). A failed write names the path: an
    EnvironmentFailure when the disk is full or read-only, else a UserError."""
    path = check_out(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fmt = OUTPUT_FORMATS.get(path.suffix.lower(), "PNG")
        atomic.write_atomic(path, images.encode(image, fmt))
    except OSError as e:
        raise failed_write(e, path) from e
    return path


def write_samples(
    samples: np.ndarray, out: str | epath.Path, individual: bool = False
) -> list[epath.Path]:
    """Writes images [N, S, S, 3] in [0, 1] as one grid (⌈√N⌉ columns) at `out`, or as
    `out`/sample_0000.png … when `individual`. Returns the paths written. When one of the
    individual files fails (a full disk), those already written are removed: all or none."""
    out = check_out(out, folder=individual)
    if not individual:
        return [write_image(out, images.grid(samples, ncols=math.ceil(math.sqrt(len(samples)))))]
    written: list[epath.Path] = []
    try:
        for i, image in enumerate(samples):
            written.append(write_image(out / f"sample_{i:04d}.png", image))
    except (EnvironmentFailure, UserError) as e:
        for path in written:
            with contextlib.suppress(OSError):
                path.unlink()
        raise type(e)(
            f"{e}; wrote none of the {len(samples)} samples (removed the {len(written)} "
            "written before it)"
        ) from e
    return written
