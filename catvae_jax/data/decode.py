"""The one reader of user images: any file a user may give → uint8 [S, S, 3] or a skip reason.

Training data folders (`folders.py`), `reconstruct` and the HTTP service all read images here,
with one list of file types (`EXTENSIONS`, decoded only by PIL's plugins for `FORMATS`) and one
pixel limit (`MAX_PIXELS`, also PIL's own decompression-bomb limit). Any other content (EPS,
PDF, ...) is "not an image" whatever its name says: PIL never hands a file to an external
program such as Ghostscript. `read_image(data, size)` opens a file with PIL, refuses more than
MAX_PIXELS before decoding, applies its EXIF orientation, converts every mode to RGB (16-bit
samples scaled to 8 bits, transparency composited on `BACKGROUND`, palette and CMYK
converted), centre-crops the largest square and resizes it to `size` × `size` (smaller images
are upscaled). A file that cannot be decoded raises :class:`Undecodable` whose message is the
reason; one over the limit raises its subclass :class:`TooLarge`.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import re
import stat
import warnings
from collections.abc import Iterator

import numpy as np
from etils import epath
from PIL import Image, ImageOps

# matched in any letter case
EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
# The PIL plugins allowed to decode them (by content, not by name): no other plugin ever runs.
FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
_FORMAT_NAMES = ", ".join(FORMATS)
BACKGROUND = (255, 255, 255)  # the plain background transparent pixels are composited on
# Larger images are refused before decoding (a decompression bomb: a small file that decodes to
# gigabytes). 50 MP holds every common camera's photos; decoded, it is 150 MB of RGB.
MAX_PIXELS = 50_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS  # PIL's own bomb check, raised by Image.open, agrees
_ORIENTATION = 0x0112  # the EXIF tag; values 5-8 turn the image by 90°


class Undecodable(Exception):
    """A file that is not a usable image; `str(e)` is the one-line reason shown to the user."""


class TooLarge(Undecodable):
    """An image of more than MAX_PIXELS pixels (refused before decoding)."""


def _too_large(pixels: int | str) -> TooLarge:
    return TooLarge(f"too large: {pixels} pixels is over the limit of {MAX_PIXELS} pixels")


def is_candidate(name: str) -> bool:
    """Whether a file name has an image extension (EXTENSIONS, any case) and is not hidden."""
    return name.lower().endswith(EXTENSIONS) and not os.path.basename(name).startswith(".")


def _to_8bit(a: np.ndarray) -> np.ndarray:
    """Scales integer or float samples to uint8: 16-bit by 255/65535, floats in [0, 1] by 255."""
    if a.dtype == np.uint8:
        return a
    if np.issubdtype(a.dtype, np.floating):
        hi = 1.0 if a.size == 0 or np.nanmax(a) <= 1.0 else 255.0
        return np.clip(np.rint(np.nan_to_num(a) * (255.0 / hi)), 0, 255).astype(np.uint8)
    # 16-bit samples (modes I;16*, or I holding 0..65535): round(v * 255 / 65535).
    return ((np.clip(a.astype(np.int64), 0, 65535) * 255 + 32767) // 65535).astype(np.uint8)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL image → mode RGB; alpha is composited on BACKGROUND, 16-bit scaled to 8 bits."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        gray = Image.fromarray(_to_8bit(np.asarray(img)), mode="L")
        return gray.convert("RGB")
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        img.mode in ("P", "L", "RGB") and "transparency" in img.info
    )
    if has_alpha:
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV, RGBX, ...


def square_resize(img: Image.Image, size: int) -> Image.Image:
    """Centre-crops the largest square of an RGB image and resizes it to size × size."""
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    img = img.crop((left, top, left + side, top + side))
    if side != size:
        img = img.resize((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return img


def square_resize_array(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W, C] (C in 1, 3, 4) → uint8 [size, size, 3]; a no-op when already that shape."""
    if image.shape == (size, size, 3):
        return image
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    return np.asarray(square_resize(to_rgb(Image.fromarray(image)), size))


@contextlib.contextmanager
def decoding() -> Iterator[None]:
    """Turns what PIL raises while an image is opened, decoded and converted inside this block
    into :class:`Undecodable` with a one-line reason (:class:`TooLarge` over MAX_PIXELS)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except Undecodable:
        raise
    except Image.UnidentifiedImageError:
        raise Undecodable(f"not an image (unknown format; supported: {_FORMAT_NAMES})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        found = re.search(r"\((\d+) pixels\)", str(e))  # "Image size (N pixels) exceeds ..."
        raise _too_large(found[1] if found else "more than") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        reason = " ".join(str(e).split()) or type(e).__name__
        if "truncated" in reason.lower():
            raise Undecodable(f"truncated image ({reason})") from None
        raise Undecodable(f"corrupt image ({reason})") from None


def open_image(data: bytes) -> Image.Image:
    """Encoded bytes → a PIL image, not yet decoded, opened only by the plugins of FORMATS.

    Raises Undecodable for an empty file and TooLarge over MAX_PIXELS; use inside `decoding()`,
    which turns PIL's own errors into reasons.
    """
    if not data:
        raise Undecodable("empty file (0 bytes)")
    img = Image.open(io.BytesIO(data), formats=FORMATS)
    if img.width * img.height > MAX_PIXELS:
        raise _too_large(f"{img.width}×{img.height}")
    return img


def read_image(data: bytes, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Encoded image bytes → (uint8 [size, size, 3], the image's own (width, height) after its
    EXIF orientation). Raises TooLarge over MAX_PIXELS, Undecodable with a reason otherwise."""
    with decoding():
        img = open_image(data)
        w, h = img.size
        if img.getexif().get(_ORIENTATION, 1) in (5, 6, 7, 8):
            w, h = h, w
        if img.format == "JPEG":
            img.draft("RGB", (size, size))  # DCT-domain downscale, never below `size`
        img.load()
        img = ImageOps.exif_transpose(img)
        return np.asarray(square_resize(to_rgb(img), size), dtype=np.uint8), (w, h)


def decode_image(data: bytes, size: int) -> np.ndarray:
    """Encoded image bytes → uint8 [size, size, 3] (`read_image` without the size)."""
    return read_image(data, size)[0]


def _is_local(path: str | os.PathLike) -> bool:
    return "://" not in os.fspath(path)  # gs://, s3://, ... are read through etils.epath


def _kind(mode: int) -> str:
    """What a non-regular file is, from its st_mode."""
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"))
    kinds += ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))
    return next((what for test, what in kinds if test(mode)), "a special file")


def _unreadable(e: OSError, path: str | os.PathLike) -> Undecodable:
    if e.errno == errno.ENOENT and os.path.islink(path):
        return Undecodable("unreadable (a dangling symbolic link)")
    return Undecodable(f"unreadable ({e.strerror or type(e).__name__})")


def _check_regular(mode: int) -> None:
    if not stat.S_ISREG(mode):
        raise Undecodable(f"not a regular file ({_kind(mode)})")


def regular_file_size(path: str | os.PathLike) -> int:
    """The size in bytes of a regular file (or a symlink to one). Raises Undecodable with the
    reason for anything else: missing, a dangling symlink, a FIFO, socket, device or folder."""
    try:
        if not _is_local(path):
            return epath.Path(path).stat().length
        st = os.stat(path)
    except OSError as e:
        raise _unreadable(e, path) from None
    _check_regular(st.st_mode)
    return st.st_size


def read_file(path: str | os.PathLike) -> bytes:
    """The bytes of a regular file; Undecodable("unreadable (...)" or "not a regular file (...)")
    otherwise. A FIFO or device is never read (opened non-blocking, checked before reading), so
    it cannot hang the reader."""
    try:
        if not _is_local(path):
            return epath.Path(path).read_bytes()
        _check_regular(os.stat(path).st_mode)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO swapped in since: no wait
        with open(fd, "rb") as f:
            _check_regular(os.fstat(fd).st_mode)
            return f.read()
    except OSError as e:
        raise _unreadable(e, path) from None


def load_image(path: str | os.PathLike, size: int) -> np.ndarray:
    """An image file → uint8 [size, size, 3]. Raises Undecodable with a reason."""
    return decode_image(read_file(path), size)
