"""Robust image decoding: any file a user may put in a folder → uint8 [S, S, 3] or a skip reason.

`load_image(path, size)` opens a file with PIL, applies its EXIF orientation, converts every mode
to RGB (16-bit samples scaled to 8 bits, transparency composited on `BACKGROUND`, palette and CMYK
converted), centre-crops the largest square and resizes it to `size` × `size` (smaller images are
upscaled). A file that cannot be decoded raises :class:`Undecodable` whose message is the reason.
"""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
from etils import epath
from PIL import Image, ImageOps

EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")  # matched in any letter case
BACKGROUND = (255, 255, 255)  # the plain background transparent pixels are composited on
MAX_PIXELS = 200_000_000  # larger images are refused (decompression-bomb guard)


class Undecodable(Exception):
    """A file that is not a usable image; `str(e)` is the one-line reason shown to the user."""


def is_candidate(name: str) -> bool:
    """Whether a file name has an image extension (.jpg/.jpeg/.png/.webp/.bmp, any case)."""
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


def decode_image(data: bytes, size: int) -> np.ndarray:
    """Encoded image bytes → uint8 [size, size, 3]. Raises Undecodable with a reason."""
    if not data:
        raise Undecodable("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if img.width * img.height > MAX_PIXELS:
                raise Undecodable(f"too large ({img.width}×{img.height} pixels)")
            if img.format == "JPEG":
                img.draft("RGB", (size, size))  # DCT-domain downscale, never below `size`
            img.load()
            img = ImageOps.exif_transpose(img)
            return np.asarray(square_resize(to_rgb(img), size), dtype=np.uint8)
    except Undecodable:
        raise
    except Image.UnidentifiedImageError:
        raise Undecodable("not an image (unknown format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise Undecodable("too large (decompression-bomb limit)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        reason = " ".join(str(e).split()) or type(e).__name__
        if "truncated" in reason.lower():
            raise Undecodable(f"truncated image ({reason})") from None
        raise Undecodable(f"corrupt image ({reason})") from None


def load_image(path: str | os.PathLike, size: int) -> np.ndarray:
    """An image file → uint8 [size, size, 3]. Raises Undecodable with a reason."""
    try:
        data = epath.Path(path).read_bytes()
    except OSError as e:
        raise Undecodable(f"unreadable ({e.strerror or type(e).__name__})") from None
    return decode_image(data, size)
