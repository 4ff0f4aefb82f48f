"""Procedurally drawn cat faces: the embedded default data set.

Every image is a pure function of ``(seed, index, image_size)``: its attributes come from
``np.random.default_rng([seed, index])`` and the pixels are drawn with elementwise float32
operations only (add, multiply, divide, sqrt, min/max), which give the same bits whatever batch
an image is drawn in. Any process can therefore make any share of the data set without disk.

Shapes are drawn as signed distance fields in "face units" (1 = half the head width) and
composited with ~1 px anti-aliased coverage, so faces look clean at 16 to 128+ px.
"""

from __future__ import annotations

import bisect
import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

VERSION = "1.0.0"  # bump when the drawing changes: it names the data set version

SPLIT_OFFSETS = {"train": 0, "validation": 10_000_000, "test": 20_000_000}


def config_name(image_size: int, seed: int, n_train: int, n_val: int, n_test: int) -> str:
    """The `synthetic_cats` TFDS config name: `<S>px_seed<seed>_n<train>-<validation>-<test>`."""
    return f"{image_size}px_seed{seed}_n{n_train}-{n_val}-{n_test}"


_SPLIT_STRIDE = 10_000_000
_CHUNK_PIXELS = 1 << 16  # pixels drawn per batch: keeps working arrays cache-sized

# Fur colours (sRGB in [0, 1]): ginger, black, grey, white, brown, cream, blue-grey, tabby-brown.
_FURS = (
    (0.86, 0.52, 0.22),
    (0.13, 0.12, 0.13),
    (0.52, 0.52, 0.54),
    (0.94, 0.93, 0.91),
    (0.47, 0.32, 0.20),
    (0.93, 0.82, 0.62),
    (0.55, 0.60, 0.68),
    (0.62, 0.50, 0.36),
)
_KIND_CDF = (0.15, 0.26, 0.37, 0.45, 0.54, 0.62, 0.69, 0.8, 0.92, 1.0)  # 8 furs, calico, tortie
_IRIS = (
    (0.40, 0.74, 0.30),
    (0.92, 0.82, 0.22),
    (0.38, 0.62, 0.92),
    (0.92, 0.60, 0.16),
    (0.72, 0.78, 0.30),
    (0.80, 0.45, 0.12),
)
_GINGER, _BLACK, _WHITE = _FURS[0], _FURS[1], _FURS[3]
_PINK, _DARK_NOSE = (0.93, 0.56, 0.62), (0.24, 0.17, 0.17)

Color = tuple[float, ...]


def _mix(a: Color, b: Color, t: float) -> Color:
    return tuple(x + (y - x) * t for x, y in zip(a, b, strict=True))


def _sample(rng: np.random.Generator) -> dict[str, float | Color]:
    """Attributes of one cat: floats (face units, radians as cos/sin) and RGB tuples in [0, 1]."""
    draws = iter(rng.random(128).tolist())  # one generator call keeps sampling fast

    def uni(lo: float, hi: float) -> float:
        return lo + (hi - lo) * next(draws)

    def jitter(c: Color, amount: float = 0.1) -> Color:
        bright = 1.0 + uni(-amount, amount)  # mostly brightness, plus a small hue shift
        return tuple(min(1.0, x * bright * (1.0 + uni(-amount, amount) * 0.4)) for x in c)

    def pick(options: tuple) -> Color:
        return options[min(int(uni(0, len(options))), len(options) - 1)]

    p: dict[str, float | Color] = {}
    kind = bisect.bisect(_KIND_CDF, next(draws))
    fur = jitter(_FURS[kind % 8])
    patch_a, patch_b, n_patches = jitter(_GINGER), jitter(_BLACK), 0
    if kind == 8:  # calico: white base with ginger and black patches
        fur, n_patches = jitter(_WHITE, 0.03), 3
    elif kind == 9:  # tortoiseshell: black base with dark ginger patches
        fur, patch_b, n_patches = jitter(_BLACK), jitter(_mix(_GINGER, _BLACK, 0.3)), 3
    elif next(draws) < 0.12:  # bicolour: patches in another fur colour
        patch_a = patch_b = jitter(pick(_FURS))
        n_patches = 1 + int(next(draws) < 0.5)
    lum = 0.3 * fur[0] + 0.59 * fur[1] + 0.11 * fur[2]
    p["fur"], p["patch_a"], p["patch_b"] = fur, patch_a, patch_b
    for k in range(3):  # patch k: centre x, centre y, radius, on/off
        p[f"patch{k}"] = (uni(-0.9, 0.9), uni(-0.9, 0.6), uni(0.25, 0.5), float(k < n_patches))
    tabby_p = 0.0 if n_patches or kind in (1, 3) else (0.85 if kind == 7 else 0.5)
    p["tabby"] = float(next(draws) < tabby_p)
    p["stripe"] = _mix(fur, (0.0, 0.0, 0.0), uni(0.35, 0.55))
    p["bib"] = float(next(draws) < (0.35 if kind in (1, 2, 4, 7) else 0.12))
    p["muzzle"] = _mix(fur, (1.0, 1.0, 1.0), uni(0.35, 0.85))
    p["inner_ear"] = _mix(fur, jitter(_PINK), 0.55)
    p["nose"] = jitter(_DARK_NOSE if lum < 0.3 or next(draws) < 0.25 else _PINK)
    p["whisker"] = (0.97,) * 3 if lum < 0.75 else (0.35,) * 3
    p["iris"] = jitter(pick(_IRIS), 0.12)
    p["pupil_w"] = uni(0.15, 0.32) if next(draws) < 0.5 else uni(0.5, 0.75)
    p["eye_x"], p["eye_y"] = uni(0.36, 0.44), uni(-0.08, 0.02)
    p["eye_r"], p["eye_h"] = uni(0.16, 0.21), uni(0.75, 1.0)
    tilt = uni(0.0, 0.35)
    p["eye_cos"], p["eye_sin"] = math.cos(tilt), math.sin(tilt)
    p["ear_w"], p["ear_h"], p["ear_out"] = uni(0.55, 0.75), uni(0.4, 0.6), uni(0.0, 0.2)
    p["head_h"], p["cheek"] = uni(0.78, 0.9), uni(1.0, 1.1)
    grey, sat, hue = uni(0.2, 0.85), uni(0.15, 0.55), (uni(0, 1), uni(0, 1), uni(0, 1))
    bg = tuple(min(1.0, max(0.0, grey + sat * (h - sum(hue) / 3))) for h in hue)
    p["bg0"], p["bg1"] = bg, jitter(_mix(bg, (0.0, 0.0, 0.0), uni(-0.2, 0.4)), 0.05)
    g, angle = uni(0, 2 * math.pi), math.radians(uni(-15, 15))
    p["bg_cos"], p["bg_sin"] = math.cos(g), math.sin(g)
    p["cos"], p["sin"], p["scale"] = math.cos(angle), math.sin(angle), uni(0.6, 0.95)
    p["ox"], p["oy"] = uni(-0.1, 0.1), uni(-0.05, 0.08)
    return p


def _stack(params: list[dict[str, float | Color]]) -> dict[str, np.ndarray]:
    """Stack attributes to float32: scalars to [B, 1, 1], vectors (e.g. RGB) to [n, B, 1, 1]."""
    out = {}
    for key in params[0]:
        arr = np.asarray([p[key] for p in params], dtype=np.float32)
        out[key] = np.moveaxis(arr, 0, -1).reshape((*arr.shape[1:], -1, 1, 1))
    return out


def _ellipse(x: np.ndarray, y: np.ndarray, a, b) -> np.ndarray:
    """Approximate signed distance to an axis-aligned ellipse with radii (a, b)."""
    ia, ib = 1.0 / a, 1.0 / b  # per-image reciprocals: multiplies are cheaper on pixels
    xa, yb = x * ia, y * ib
    k0 = np.sqrt(xa * xa + yb * yb)
    xa *= ia
    yb *= ib
    k1 = np.sqrt(xa * xa + yb * yb)
    return k0 * (k0 - 1.0) / (k1 + 1e-6)


def _circle(x: np.ndarray, y: np.ndarray, cx, cy, r) -> np.ndarray:
    return np.sqrt((x - cx) ** 2 + (y - cy) ** 2) - r


def _segment(x: np.ndarray, y: np.ndarray, ax, ay, bx, by) -> np.ndarray:
    """Unsigned distance to the segment from (ax, ay) to (bx, by)."""
    dx, dy, px, py = bx - ax, by - ay, x - ax, y - ay
    t = np.clip((px * dx + py * dy) * (1.0 / (dx * dx + dy * dy)), 0.0, 1.0)
    return np.sqrt((px - t * dx) ** 2 + (py - t * dy) ** 2)


def _triangle(x: np.ndarray, y: np.ndarray, pts: list[tuple]) -> np.ndarray:
    """Signed distance (exact inside, sharp corners outside) to a triangle of 3 (x, y) points."""
    (ax, ay), (bx, by), (cx, cy) = pts
    orient = np.sign((bx - ax) * (cy - ay) - (by - ay) * (cx - ax))
    d = None
    for (ax, ay), (bx, by) in zip(pts, pts[1:] + pts[:1], strict=True):
        ex, ey = bx - ax, by - ay
        h = ((x - ax) * ey - (y - ay) * ex) * (orient / np.sqrt(ex * ex + ey * ey))
        d = h if d is None else np.maximum(d, h)
    return d


def _render(p: dict[str, np.ndarray], size: int) -> np.ndarray:
    """Draw a batch of cats; returns float32 channels-first [3, B, size, size] in [0, 1]."""
    f32 = np.float32
    g = (np.arange(size, dtype=f32) + f32(0.5)) * f32(2.0 / size) - f32(1.0)
    u, v = g[None, None, :], g[None, :, None]  # frame coords in [-1, 1], y down
    px = f32(2.0 / size) / p["scale"]  # one pixel in face units, [B, 1, 1]
    inv_px = f32(1.0) / px

    def cover(d: np.ndarray) -> np.ndarray:
        return np.clip(f32(0.5) - d * inv_px, 0.0, 1.0)

    def line(d: np.ndarray, half_width: float) -> np.ndarray:
        hw = np.maximum(f32(half_width), px * f32(0.5))
        return cover(d - hw) * np.minimum(f32(1.0), f32(half_width) / hw)

    def paint(img: np.ndarray, alpha: np.ndarray, color: np.ndarray) -> np.ndarray:
        tmp = color - img
        tmp *= alpha
        img += tmp
        return img

    t = np.clip(f32(0.5) + f32(0.5) * (u * p["bg_cos"] + v * p["bg_sin"]), 0, 1)
    img = p["bg0"] + t * (p["bg1"] - p["bg0"])
    cu, cv = u - p["ox"], v - (p["oy"] + f32(0.25) * p["scale"])
    x = (p["cos"] * cu + p["sin"] * cv) / p["scale"]
    y = (p["cos"] * cv - p["sin"] * cu) / p["scale"]
    ax = np.abs(x)

    # Ears (both at once via |x|), drawn before the head so the head hides their base.
    ew, eh, eo = p["ear_w"], p["ear_h"], p["ear_out"]
    base_in = (f32(0.22), -p["head_h"] * f32(0.95))
    base_out = (f32(0.22) + ew, -p["head_h"] * f32(0.45))
    tip = (f32(0.45) + eo + ew * f32(0.35), -p["head_h"] - eh)
    ear = _triangle(ax, y, [base_in, base_out, tip])
    ear_alpha = cover(ear - f32(0.02))
    img = paint(img, ear_alpha, p["fur"])
    img = paint(img, cover(ear + f32(0.09)) * f32(0.9), p["inner_ear"])

    # Head: ellipse with fuller cheeks; soft radial shading for volume.
    head = np.minimum(
        _ellipse(x, y, f32(1.0), p["head_h"]),
        _ellipse(x, y - f32(0.2), p["cheek"], p["head_h"] * f32(0.75)),
    )
    head_alpha = cover(head)
    r2 = np.clip(x * x + (y + f32(0.2)) ** 2, 0.0, 1.6)
    img = paint(img, head_alpha, p["fur"] * (f32(1.0) - f32(0.1) * r2))
    face_alpha = np.maximum(head_alpha, ear_alpha)

    # Coat patterns, clipped to the head (and ears for patches).
    for k in range(3):
        color = p["patch_a"] if k % 2 == 0 else p["patch_b"]
        bx, by, br, on = p[f"patch{k}"]
        img = paint(img, cover(_circle(x, y, bx, by, br)) * face_alpha * on, color)
    stripes = np.minimum(
        np.minimum(
            _segment(ax, y, f32(0.2), -p["head_h"] * f32(0.88), f32(0.14), f32(-0.4)),
            _segment(x, y, f32(0.0), -p["head_h"] * f32(0.95), f32(0.0), f32(-0.38)),
        ),
        np.minimum(
            _segment(ax, y, f32(1.05), f32(0.05), f32(0.72), f32(0.12)),
            _segment(ax, y, f32(1.05), f32(0.25), f32(0.75), f32(0.26)),
        ),
    )
    img = paint(img, line(stripes, 0.05) * head_alpha * p["tabby"], p["stripe"])
    bib = _ellipse(x, y - f32(0.75), f32(0.6), f32(0.5))
    img = paint(img, cover(bib) * head_alpha * p["bib"], p["muzzle"])

    # Muzzle: two lobes and a chin in a lighter colour.
    muzzle = np.minimum(
        _circle(ax, y, f32(0.14), f32(0.42), f32(0.17)),
        _ellipse(x, y - f32(0.58), f32(0.14), f32(0.09)),
    )
    img = paint(img, cover(muzzle) * f32(0.95), p["muzzle"])

    # Eyes: dark rim, iris (darker at the top), pupil (slit or round), highlight.
    ex, ey = ax - p["eye_x"], y - p["eye_y"]
    ct, st = p["eye_cos"], p["eye_sin"]
    qx, qy = ct * ex + st * ey, ct * ey - st * ex
    er, eh2 = p["eye_r"], p["eye_r"] * p["eye_h"]
    img = paint(img, cover(_ellipse(qx, qy, er + f32(0.035), eh2 + f32(0.035))), f32(0.08))
    shade = f32(0.75) + f32(0.3) * np.clip(qy / eh2 + f32(0.4), 0.0, 1.0)
    img = paint(img, cover(_ellipse(qx, qy, er, eh2)), p["iris"] * shade)
    pupil = _ellipse(qx, qy, er * p["pupil_w"], eh2 * f32(0.92))
    img = paint(img, cover(pupil), f32(0.04))
    hx, hy, hr = p["eye_x"], p["eye_y"] - eh2 * f32(0.4), er * f32(0.22)
    glint = np.minimum(
        _circle(x, y, hx - er * f32(0.3), hy, hr), _circle(x, y, -hx - er * f32(0.3), hy, hr)
    )
    img = paint(img, cover(glint) * f32(0.9), f32(1.0))

    # Nose, mouth and whiskers.
    nose = _triangle(x, y, [(f32(-0.08), f32(0.26)), (f32(0.0), f32(0.34)), (f32(0.08), f32(0.26))])
    img = paint(img, cover(nose - f32(0.03)), p["nose"])
    arc = np.sqrt((ax - f32(0.07)) ** 2 + (y - f32(0.44)) ** 2)
    below = np.abs(arc - f32(0.07))
    mouth = np.where(y > f32(0.44), below, np.sqrt(ax * ax + (y - f32(0.44)) ** 2))
    mouth = np.minimum(mouth, _segment(x, y, f32(0.0), f32(0.34), f32(0.0), f32(0.44)))
    img = paint(img, line(mouth, 0.016) * f32(0.85), p["nose"] * f32(0.6))
    whiskers = np.minimum(
        np.minimum(
            _segment(ax, y, f32(0.3), f32(0.4), f32(1.2), f32(0.28)),
            _segment(ax, y, f32(0.3), f32(0.45), f32(1.22), f32(0.45)),
        ),
        _segment(ax, y, f32(0.3), f32(0.5), f32(1.15), f32(0.63)),
    )
    img = paint(img, line(whiskers, 0.01) * f32(0.85), p["whisker"])
    return img


def make_cats(indices: np.ndarray | Sequence[int], image_size: int, seed: int) -> np.ndarray:
    """Draw cat faces for the given indices.

    Returns uint8 [len(indices), image_size, image_size, 3] (NHWC, RGB, 0..255). Image ``i``
    depends only on ``(seed, indices[i], image_size)``.
    """
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    if seed < 0 or (idx.size and idx.min() < 0):
        raise ValueError("seed and indices must be non-negative")
    out = np.empty((idx.size, image_size, image_size, 3), dtype=np.uint8)
    chunk = max(1, _CHUNK_PIXELS // (image_size * image_size))

    def draw(start: int) -> None:
        batch = idx[start : start + chunk]
        params = _stack([_sample(np.random.default_rng([seed, int(i)])) for i in batch])
        img = _render(params, image_size)
        img = np.clip(img * np.float32(255.0) + np.float32(0.5), 0, 255).astype(np.uint8)
        out[start : start + len(batch)] = img.transpose(1, 2, 3, 0)

    starts = range(0, idx.size, chunk)
    if len(starts) > 1:  # numpy releases the GIL in its loops: chunks draw in parallel
        with ThreadPoolExecutor(min(len(starts), os.cpu_count() or 1)) as pool:
            list(pool.map(draw, starts))
    else:
        for start in starts:
            draw(start)
    return out


def make_split(split: str, num_examples: int, image_size: int, seed: int) -> np.ndarray:
    """Draw the first ``num_examples`` images of a split ("train", "validation" or "test").

    Splits use disjoint index ranges. Returns uint8 [num_examples, image_size, image_size, 3].
    """
    if split not in SPLIT_OFFSETS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLIT_OFFSETS)}")
    if not 0 <= num_examples <= _SPLIT_STRIDE:
        raise ValueError(f"num_examples must be in [0, {_SPLIT_STRIDE}], got {num_examples}")
    return make_cats(SPLIT_OFFSETS[split] + np.arange(num_examples), image_size, seed)
