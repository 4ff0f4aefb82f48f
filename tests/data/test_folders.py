"""Folders of user images: hostile files, the prepare CLI, TFDS without catvae_jax, training."""

from __future__ import annotations

import errno
import io
import json
import os
import socket
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import bomb_png, run_cli, run_python
from etils import epath
from PIL import Image

from catvae_jax import data
from catvae_jax.data import builders, decode, folders
from catvae_jax.errors import EnvironmentFailure, UserError

RNG = np.random.default_rng(0)
TINY = [  # as tests/e2e/test_cli.py, without the synthetic split sizes
    "--config.image_size=16",
    "--config.batch_size=8",
    "--config.model.z_dim=8",
    "--config.model.widths=(8,16)",
    "--config.model.name=resvae",  # the tiny model of the other CLI tests (tests/e2e/test_cli.py)
    "--config.num_epochs=1",
    "--config.wandb.mode=disabled",
    "--config.progress_bar=False",
    "--config.loss.lpips_weight=0",
]


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _png16_rgb(a: np.ndarray) -> bytes:
    """A 16-bit RGB PNG written by hand (PIL cannot write one)."""
    h, w, _ = a.shape
    raw = b"".join(b"\x00" + a[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def _photo(h: int = 40, w: int = 52, seed: int = 0) -> np.ndarray:
    """A smooth random colour picture (compresses like a photo, survives JPEG)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    chans = [
        np.sin(x * rng.uniform(2, 6) + y * rng.uniform(2, 6) + rng.uniform(0, 6)) for _ in "rgb"
    ]
    return ((np.stack(chans, -1) * 0.5 + 0.5) * 255).astype(np.uint8)


# A real Encapsulated PostScript file: PIL's EPS plugin would hand it to Ghostscript (`gs`).
EPS = b"""%!PS-Adobe-3.0 EPSF-3.0
%%BoundingBox: 0 0 10 10
%%EndComments
newpath 0 0 moveto 10 10 lineto stroke
showpage
%%EOF
"""


# Hostile files: name → (bytes, None if it must be kept, else a word of its skip reason).
def hostile_files() -> dict[str, tuple[bytes, str | None]]:
    rgb = _photo()
    good_jpeg = _encode(Image.fromarray(rgb), "JPEG", quality=90)
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])
    gray16 = (np.linspace(0, 65535, 30 * 30).reshape(30, 30)).astype(np.uint16)
    return {
        "ok.jpg": (good_jpeg, None),
        "UPPER.JPEG": (good_jpeg, None),
        "truncated.jpg": (good_jpeg[: len(good_jpeg) // 2], "truncated"),
        "cmyk.jpg": (_encode(Image.fromarray(rgb).convert("CMYK"), "JPEG"), None),
        "rgba.png": (_encode(Image.fromarray(rgba), "PNG"), None),
        "palette.png": (_encode(Image.fromarray(rgb).convert("P"), "PNG", transparency=3), None),
        "gray.png": (_encode(Image.fromarray(rgb[..., 0]), "PNG"), None),
        "gray16.png": (_encode(Image.fromarray(gray16), "PNG"), None),
        "rgb16.png": (_png16_rgb(rgb.astype(np.uint16) * 257), None),
        "tiny.bmp": (_encode(Image.fromarray(rgb[:3, :2]), "BMP"), None),
        "photo.webp": (_encode(Image.fromarray(rgb), "WEBP"), None),
        "text.jpg": (b"this is a note, not a picture\n", "not an image"),
        "postscript.jpg": (EPS, "not an image"),  # never handed to Ghostscript
        "zero.png": (b"", "empty"),
        "random.png": (RNG.bytes(600), "not an image"),
        "bomb.png": (bomb_png(), "too large: 900000000 pixels is over"),  # never decoded
        "sub/kätzchen_猫.jpg": (good_jpeg, None),
        "sub/notes.txt": (b"not a candidate", None),
    }


def write_folder(root: Path, files: dict[str, tuple[bytes, str | None]], extra_good: int = 0):
    for name, (content, _) in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)
    for i in range(extra_good):
        (root / f"cats/cat_{i:03d}.jpg").parent.mkdir(parents=True, exist_ok=True)
        (root / f"cats/cat_{i:03d}.jpg").write_bytes(
            _encode(Image.fromarray(_photo(30 + i % 7, 36, seed=i + 1)), "JPEG")
        )
    return root


KEPT = [n for n, (_, why) in hostile_files().items() if why is None and decode.is_candidate(n)]
SKIPPED = {n: why for n, (_, why) in hostile_files().items() if why is not None}
# Names with an image extension that are no regular file → their skip reason.
SPECIAL = {
    "pipe.png": "not a regular file (a FIFO)",  # reading it would wait for a writer forever
    "dangling.jpg": "unreadable (a dangling symbolic link)",
    "loop.png": "unreadable (Too many levels of symbolic links)",
    "sub/device.png": "not a regular file (a character device)",  # -> /dev/zero: endless
}


def add_special_files(root: Path) -> Path:
    """The SPECIAL files in `root`."""
    os.mkfifo(root / "pipe.png")
    (root / "dangling.jpg").symlink_to(root / "nowhere.jpg")
    (root / "loop.png").symlink_to(root / "loop.png")
    (root / "sub").mkdir(exist_ok=True)
    (root / "sub/device.png").symlink_to("/dev/zero")
    return root


def fake_gs(tmp_path: Path) -> tuple[dict, Path]:
    """(env whose PATH finds a `gs` that only records that it ran, the file it records in)."""
    bin_dir, ran = tmp_path / "bin", tmp_path / "gs_ran"
    bin_dir.mkdir()
    (bin_dir / "gs").write_text(f'#!/bin/sh\necho "$@" >> {ran}\n')
    (bin_dir / "gs").chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}, ran


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> Path:
    """The hostile and special files plus 30 plain JPEGs of cats (enough for a training split)."""
    root = write_folder(tmp_path_factory.mktemp("hostile"), hostile_files(), extra_good=30)
    return add_special_files(root)


def test_every_mode_is_converted_to_rgb():
    red_half = np.zeros((10, 10, 4), np.uint8)
    red_half[..., 0], red_half[..., 3] = 255, 128
    rgba = decode.decode_image(_encode(Image.fromarray(red_half), "PNG"), 4)
    assert np.all(np.abs(rgba.astype(int) - [255, 127, 127]) <= 1)  # on the white background
    gray16 = np.full((6, 6), 32896, np.uint16)  # 32896 / 65535 × 255 = 128.0
    assert np.all(decode.decode_image(_encode(Image.fromarray(gray16), "PNG"), 4) == 128)
    rgb16 = np.zeros((6, 6, 3), np.uint16)
    rgb16[..., 0], rgb16[..., 2] = 65535, 257 * 40
    assert np.all(decode.decode_image(_png16_rgb(rgb16), 4) == [255, 0, 40])
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red in CMYK
    got = decode.decode_image(_encode(cmyk, "JPEG", quality=95), 4)
    assert np.all(np.abs(got.astype(int) - [255, 0, 0]) <= 6)
    palette = Image.fromarray(np.full((8, 8, 3), (10, 200, 30), np.uint8))
    palette = palette.convert("P", palette=Image.Palette.ADAPTIVE)
    assert np.all(decode.decode_image(_encode(palette, "PNG"), 4) == [10, 200, 30])
    tiny = decode.decode_image(_encode(Image.new("L", (1, 1), 77), "BMP"), 16)
    assert tiny.shape == (16, 16, 3) and np.all(tiny == 77)  # upscaled and kept


def test_centre_square_is_cropped_before_resizing():
    wide = np.zeros((20, 60, 3), np.uint8)
    wide[:, :20], wide[:, 20:40], wide[:, 40:] = (255, 0, 0), (0, 255, 0), (0, 0, 255)
    got = decode.decode_image(_encode(Image.fromarray(wide), "PNG"), 10)
    assert got.shape == (10, 10, 3) and np.all(got == [0, 255, 0])


def test_load_image_reads_a_path_or_says_why_not(tmp_path):
    (tmp_path / "a.png").write_bytes(_encode(Image.fromarray(_photo()), "PNG"))
    got = decode.load_image(tmp_path / "a.png", 8)
    assert np.array_equal(got, decode.decode_image((tmp_path / "a.png").read_bytes(), 8))
    with pytest.raises(decode.Undecodable, match="unreadable"):
        decode.load_image(tmp_path / "missing.png", 8)


@pytest.mark.parametrize("name", sorted(SKIPPED))
def test_undecodable_files_raise_with_a_reason(name):
    with pytest.raises(decode.Undecodable, match=SKIPPED[name]):
        decode.decode_image(hostile_files()[name][0], 16)


def test_prepare_cli_reports_skips_and_tfds_reads_it_without_catvae_jax(hostile, tmp_path):
    """Every hostile and special file is skipped and listed (a FIFO is never waited on, the
    PostScript file never reaches the `gs` first on PATH), the rest read back by TFDS alone."""
    data_dir = tmp_path / "tfds"
    env, gs_ran = fake_gs(tmp_path)
    args = ["--source", "folder", "--path", str(hostile), "--data_dir", str(data_dir)]
    proc = run_cli("catvae_jax.data", "prepare", *args, "--image_size", "16", env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not gs_ran.exists(), gs_ran.read_text()
    out = proc.stdout
    assert f"skipped {len(SKIPPED) + len(SPECIAL)} files:" in out
    for name, why in {**SKIPPED, **SPECIAL}.items():
        assert any(
            line.strip().startswith(f"{name}: ") and why in line for line in out.splitlines()
        )
    assert "ignored 1 other file (hidden or not an image type): sub/notes.txt" in out
    assert "%" in proc.stderr  # the progress bar
    counts = dict(part.split() for part in out.split("examples: ")[1].splitlines()[0].split(", "))
    assert sum(int(v) for v in counts.values()) == len(KEPT) + 30 and all(
        int(v) > 0 for v in counts.values()
    )
    path = out.split("location: ")[1].splitlines()[0]
    code = f"""
import sys
import tensorflow_datasets as tfds
b = tfds.builder_from_directory({path!r})
names = set()
for split in ("train", "validation", "test"):
    ds = b.as_data_source(split)
    for i in range(len(ds)):
        x = ds[i]
        assert x["image"].shape == (16, 16, 3) and str(x["image"].dtype) == "uint8"
        names.add(x["file_name"].decode())
assert "catvae_jax" not in sys.modules and "tensorflow" not in sys.modules
print(b.info.full_name, len(names), sorted(n for n in names if not n.startswith("cats/")))
"""
    read = run_python(code)
    assert read.returncode == 0, read.stderr[-2000:]
    assert read.stdout.startswith(f"cat_folder/16px_{folders.list_folder(hostile).fingerprint}")
    assert read.stdout.split()[1] == str(len(KEPT) + 30)
    assert "sub/kätzchen_猫.jpg" in read.stdout


@pytest.mark.parametrize(
    "files,message",
    [
        (None, "does not exist"),
        ({}, "no image files"),
        ({"a.txt": (b"x", None)}, "no image files"),
        ({"a.jpg": (b"not", ""), "b.png": (b"", "")}, "no valid image"),
    ],
)
def test_unusable_folders_are_one_line_errors(tmp_path, files, message):
    folder = tmp_path / "imgs"
    if files is not None:
        folder.mkdir()
        write_folder(folder, files)
    data_dir = tmp_path / "tfds"
    with pytest.raises(UserError, match=message):
        builders.prepare_folder(str(folder), 16, str(data_dir), progress=False)
    assert not (data_dir / "cat_folder").exists() or not any(
        (data_dir / "cat_folder").rglob("*.json")
    )


def test_unusable_folder_cli_exit_code(tmp_path):
    proc = run_cli(
        "catvae_jax.data", "prepare", "--source", "folder", "--path", str(tmp_path / "no")
    )
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(errors) == 1 and errors[0].startswith("error: ")


def test_a_changed_folder_is_prepared_anew(tmp_path):
    folder = write_folder(tmp_path / "imgs", {}, extra_good=5)
    first = builders.prepare_folder(str(folder), 16, str(tmp_path / "tfds"), progress=False)
    assert builders.prepare_folder(str(folder), 16, str(tmp_path / "tfds"), progress=False).reused
    (folder / "new.png").write_bytes(_encode(Image.fromarray(_photo(seed=9)), "PNG"))
    second = builders.prepare_folder(str(folder), 16, str(tmp_path / "tfds"), progress=False)
    assert not second.reused and second.config != first.config
    assert second.num_examples == first.num_examples + 1
    assert len(first.content_sha256) == 64 and first.content_sha256 != second.content_sha256


def test_a_build_that_fails_half_way_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    folder = write_folder(tmp_path / "imgs", {}, extra_good=6)
    seen = []

    def failing(self, names, good):
        for i, name in enumerate(names):
            if seen:
                raise KeyboardInterrupt  # e.g. Ctrl-C half-way through writing
            seen.append(name)
            yield i, {"image": good[name], "file_name": name}

    monkeypatch.setattr(builders.CatFolder, "_generate_examples", failing)
    data_dir = tmp_path / "tfds"
    with pytest.raises(KeyboardInterrupt):
        builders.prepare_folder(str(folder), 16, str(data_dir), progress=False)
    assert seen and not list(data_dir.rglob("dataset_info.json"))
    assert not builders.folder_builder(str(folder), 16, str(data_dir)).is_prepared()


def test_splits_are_deterministic_from_names_and_never_empty():
    for n in (3, 4, 7, 25):
        keys = [f"cat_{i}.jpg" for i in range(n)]
        parts = folders.assign_splits(keys)
        assert parts == folders.assign_splits(list(keys)) and all(parts.values())
        assert sorted(i for part in parts.values() for i in part) == list(range(n))
    many = [f"img{i}.png" for i in range(400)]
    base = folders.assign_splits(many)
    grown = folders.assign_splits([*many, "another.png"])
    assert all(set(base[s]) <= set(grown[s]) for s in base)  # adding a file moves no other
    assert 0.05 < len(base["validation"]) / 400 < 0.15


def test_folder_source_loads_splits_and_trains_via_main_with_grain(hostile, tmp_path):
    from conftest import tiny_config

    c = tiny_config()
    c.data.source, c.data.path, c.data.data_dir = "folder", str(hostile), str(tmp_path / "tfds")
    total = 0
    for split in ("train", "validation", "test"):
        images = data.load_split(c, split)
        assert images.shape[1:] == (16, 16, 3) and images.dtype == np.uint8 and len(images) > 0
        assert (images / 255.0).min() >= 0.0 and (images / 255.0).max() <= 1.0
        total += len(images)
    assert total == len(KEPT) + 30
    workdir = tmp_path / "run"
    proc = run_cli(
        "catvae_jax.main",
        "--config",
        "configs/quickstart.py",
        "--workdir",
        str(workdir),
        *TINY,
        "--config.data.source=folder",
        f"--config.data.path={hostile}",
        f"--config.data.data_dir={tmp_path / 'tfds'}",
        "--config.data.pipeline=grain",
        env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "devices: 2 × cpu" in proc.stdout and "done: step" in proc.stdout
    # 2 validation images: too few to measure the samplers, which the run's end says and survives
    assert "note: samplers not measured (the sampler choice needs at least 8 validation " in (
        proc.stdout
    )
    dataset = json.loads((workdir / "config.json").read_text())["dataset"]
    fingerprint = folders.list_folder(hostile).fingerprint
    assert dataset == {
        "name": "cat_folder",
        "version": folders.FOLDER_VERSION,
        "config": f"16px_{fingerprint}",
        "path": str(hostile),
    }


def test_postscript_named_jpg_is_not_an_image_and_never_runs_a_program(tmp_path, monkeypatch):
    """PIL decodes only JPEG, PNG, WebP, BMP, GIF and TIFF: an EPS file (which PIL would hand to
    Ghostscript) is refused by every reader, training's, reconstruct's and the service's, and
    no program is started."""
    from PIL import EpsImagePlugin

    from catvae_jax import pictures

    started = []

    def record(*args, **kwargs):
        started.append(args)
        return 0

    for name in ("check_call", "run", "Popen", "call", "check_output"):
        monkeypatch.setattr(subprocess, name, record)
    monkeypatch.setattr(EpsImagePlugin, "gs_binary", None)  # looked up again if EPS is opened
    with pytest.raises(decode.Undecodable, match=r"not an image \(unknown format"):
        decode.decode_image(EPS, 16)
    with pytest.raises(decode.Undecodable, match="not an image"):
        pictures.read_upload(EPS, 16)  # POST /reconstruct
    (tmp_path / "cat.jpg").write_bytes(EPS)
    _, kept, skipped = pictures.read_images([tmp_path / "cat.jpg"], 16)  # reconstruct
    assert not kept and len(skipped) == 1 and "not an image" in skipped[0]
    assert started == []


def test_special_files_are_skipped_and_listed_never_opened(tmp_path):
    """A FIFO, a socket, a device, a dangling or looping symlink named like an image: skipped
    with the reason, in-process (a FIFO would block the reader forever)."""
    folder = add_special_files(write_folder(tmp_path / "imgs", {}, extra_good=4))
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(folder / "socket.png"))
        listing = folders.list_folder(folder)
        assert len(listing.files) == 4
        expected = {**SPECIAL, "socket.png": "not a regular file (a socket)"}
        assert dict(listing.unusable) == expected
        p = builders.prepare_folder(str(folder), 16, str(tmp_path / "tfds"), progress=False)
    finally:
        sock.close()
    assert p.num_examples == 4 and dict(p.skipped) == expected
    assert p.skipped == sorted(p.skipped)
    for name in ("pipe.png", "sub/device.png"):
        with pytest.raises(decode.Undecodable, match="not a regular file"):
            decode.read_file(folder / name)


def test_a_folder_of_special_files_only_is_one_line(tmp_path):
    (tmp_path / "imgs").mkdir()
    folder = add_special_files(tmp_path / "imgs")
    with pytest.raises(UserError, match=r"no valid image .*\(4 files skipped; first: dangling.jpg"):
        builders.prepare_folder(str(folder), 16, str(tmp_path / "tfds"), progress=False)


def test_a_file_removed_while_listing_or_before_reading_is_skipped(tmp_path, monkeypatch):
    folder = write_folder(tmp_path / "imgs", {}, extra_good=5)
    cats = folder / "cats"
    (cats / "gone.png").write_bytes(b"x")
    walk = type(epath.Path(folder)).walk

    def racing_walk(self, **kwargs):  # the file goes after its folder was read, before stat
        for dirpath, dirs, files in walk(self, **kwargs):
            (epath.Path(dirpath) / "gone.png").unlink(missing_ok=True)
            yield dirpath, dirs, files

    monkeypatch.setattr(type(epath.Path(folder)), "walk", racing_walk)
    listing = folders.list_folder(folder)
    monkeypatch.undo()
    assert listing.unusable == (("cats/gone.png", "unreadable (No such file or directory)"),)
    (cats / "cat_000.jpg").unlink()  # listed, then removed before the build reads it
    builder = builders.folder_builder(listing, 16, str(tmp_path / "tfds"))
    p = builders.prepare(builder, str(folder), progress=False)
    assert p.num_examples == 4
    assert dict(p.skipped) == {
        "cats/cat_000.jpg": "unreadable (No such file or directory)",
        "cats/gone.png": "unreadable (No such file or directory)",
    }


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES, errno.ENOSPC])
def test_an_unwritable_data_dir_is_an_environment_failure(tmp_path, monkeypatch, code):
    """Every folder TFDS makes under data_dir fails as on a read-only, forbidden or full disk:
    EnvironmentFailure naming the path (exit 1 in the CLIs), nothing written."""
    data_dir = tmp_path / "tfds"
    makedirs = os.makedirs

    def failing(path, *args, **kwargs):
        if str(path).startswith(str(data_dir)):
            raise OSError(code, os.strerror(code), str(path))
        return makedirs(path, *args, **kwargs)

    monkeypatch.setattr(os, "makedirs", failing)
    folder = write_folder(tmp_path / "imgs", {}, extra_good=3)
    with pytest.raises(EnvironmentFailure, match=f"cannot write {data_dir}.*: {os.strerror(code)}"):
        builders.prepare_folder(str(folder), 16, str(data_dir), progress=False)
    assert not data_dir.exists()


def test_prepare_cli_on_a_read_only_data_dir_is_one_line_exit_1(tmp_path):
    """The CLI with os.makedirs failing as on a read-only mount (EROFS)."""
    data_dir = tmp_path / "tfds"
    code = f"""
import errno, os, runpy, sys
makedirs = os.makedirs
def read_only(path, *args, **kwargs):
    if str(path).startswith({str(data_dir)!r}):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
    return makedirs(path, *args, **kwargs)
os.makedirs = read_only
sys.argv = ["catvae_jax.data", "prepare", "--source", "synthetic", "--data_dir", {str(data_dir)!r},
            "--image_size", "16", "--num_train", "4", "--num_validation", "2", "--num_test", "2",
            "--noprogress"]
runpy.run_module("catvae_jax.data", run_name="__main__", alter_sys=True)
"""
    proc = run_python(code)
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"error: cannot prepare the data set: cannot write {data_dir}")
    assert errors[0].endswith("Read-only file system") and not data_dir.exists()
