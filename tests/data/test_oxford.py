"""oxford_cat_faces: Oxford-IIIT Pet's cats cut to their head boxes, from a miniature copy of the
data set's two archives in the real layout (no network: downloads come from file:// URLs)."""

from __future__ import annotations

import errno
import io
import json
import os
import tarfile
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli, run_python, tiny_config
from PIL import Image

from catvae_jax import data
from catvae_jax.data import builders, oxford
from catvae_jax.errors import EnvironmentFailure, UserError

RED, GREY = (220, 30, 30), (90, 90, 90)
EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n%%EndComments\nshowpage\n%%EOF\n"
LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY a "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa">
<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">
<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">
<!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">
<!ENTITY e "&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;">
]><annotation><object><name>&e;</name></object></annotation>"""  # ~600 MB if expanded


def voc(name: str, width: int, height: int, box: tuple[int, int, int, int], species: str) -> bytes:
    """A head box annotation as the data set writes it (PASCAL VOC)."""
    xmin, ymin, xmax, ymax = box
    return f"""<annotation><folder>OXIIIT</folder><filename>{name}.jpg</filename>
<source><database>OXFORD-IIIT Pet Dataset</database></source>
<size><width>{width}</width><height>{height}</height><depth>3</depth></size><segmented>0</segmented>
<object><name>{species}</name><pose>Frontal</pose><truncated>0</truncated><occluded>0</occluded>
<bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox>
<difficult>0</difficult></object></annotation>""".encode()


def photo(width: int, height: int, box: tuple[int, int, int, int], fmt: str = "JPEG") -> bytes:
    """A grey photo whose head box (VOC, 1-based inclusive) is red."""
    a = np.empty((height, width, 3), np.uint8)
    a[...] = GREY
    xmin, ymin, xmax, ymax = box
    a[ymin - 1 : ymax, xmin - 1 : xmax] = RED
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _tar(path: Path, members: dict[str, bytes], mode: str) -> None:
    with tarfile.open(path, mode) as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))


BREEDS = ["Abyssinian", "Bengal", "Birman", "Bombay", "Persian"]  # cats: capital first letter
FACES = [f"{b}_{i}" for b in BREEDS for i in range(1, 5)]  # 20 cats with a readable face
BAD = {  # cats listed with a head box that cannot be read → a word of their skip reason
    "Sphynx_1": "not an image",  # PostScript named .jpg: never given to Ghostscript
    "Sphynx_2": "unreadable head box",  # XML that is no XML
    "Sphynx_3": "unreadable head box",  # an entity expansion bomb
    "Sphynx_4": "not in images.tar.gz",
}


def make_archives(folder: Path) -> Path:
    """A miniature Oxford-IIIT Pet: 20 good cat faces (one a PNG named .jpg), 4 bad ones, 3
    test-list cats without a head box, dogs with and without boxes, an AppleDouble file, a .mat
    file. images.tar.gz is an uncompressed tar (as the real one is), annotations gzipped."""
    folder.mkdir(parents=True, exist_ok=True)
    imgs, notes, trainval, test = {}, {}, [], []
    for i, name in enumerate(FACES):
        w, h = 40 + 3 * i, 60 - i
        box = (5 + i % 7, 8, 5 + i % 7 + 19, 8 + 19)  # 20×20 head, off the centre
        fmt = "PNG" if name == "Bengal_2" else "JPEG"
        imgs[f"images/{name}.jpg"] = photo(w, h, box, fmt)
        notes[f"annotations/xmls/{name}.xml"] = voc(name, w, h, box, "cat")
        trainval.append(f"{name} {1 + i // 4} 1 {1 + i // 4}")
    for name in ("Sphynx_1", "Sphynx_2", "Sphynx_3", "Sphynx_4"):
        trainval.append(f"{name} 34 1 12")
        notes[f"annotations/xmls/{name}.xml"] = voc(name, 30, 30, (5, 5, 20, 20), "cat")
        if name != "Sphynx_4":
            imgs[f"images/{name}.jpg"] = photo(30, 30, (5, 5, 20, 20))
    imgs["images/Sphynx_1.jpg"] = EPS
    notes["annotations/xmls/Sphynx_2.xml"] = b"<annotation><object>"
    notes["annotations/xmls/Sphynx_3.xml"] = LAUGHS
    for name in ("Ragdoll_10", "Ragdoll_11", "Siamese_12"):  # the test list: no head boxes
        test.append(f"{name} 27 1 9")
        imgs[f"images/{name}.jpg"] = photo(30, 30, (5, 5, 20, 20))
    for name in ("beagle_1", "pug_2"):  # dogs, with head boxes: left out
        trainval.append(f"{name} 5 2 3")
        imgs[f"images/{name}.jpg"] = photo(30, 30, (5, 5, 20, 20))
        notes[f"annotations/xmls/{name}.xml"] = voc(name, 30, 30, (5, 5, 20, 20), "dog")
    test.append("boxer_3 9 2 4")
    imgs["images/boxer_3.jpg"] = photo(30, 30, (5, 5, 20, 20))
    imgs["images/Abyssinian_100.mat"] = b"MATLAB 5.0 MAT-file"
    imgs["images/._Abyssinian_1.jpg"] = b"\x00\x05\x16\x07 AppleDouble"
    header = "#Image CLASS-ID SPECIES BREED ID\n#SPECIES: 1:Cat 2:Dog\n"
    notes["annotations/list.txt"] = (header + "\n".join(trainval + test) + "\n").encode()
    notes["annotations/trainval.txt"] = ("\n".join(trainval) + "\n").encode()
    notes["annotations/test.txt"] = ("\n".join(test) + "\n").encode()
    _tar(folder / oxford.IMAGES, imgs, "w")
    _tar(folder / oxford.ANNOTATIONS, notes, "w:gz")
    return folder


@pytest.fixture(scope="module")
def archives(tmp_path_factory) -> Path:
    return make_archives(tmp_path_factory.mktemp("oxford") / "archives")


def test_face_square_is_centred_moved_inside_and_scaled():
    face = oxford.Face((41, 31, 60, 50), (100, 80))  # a 20×20 box, pixels 40..59 × 30..49
    assert oxford.face_square(face, 100, 80, 0.0) == (40, 30, 60, 50)
    assert oxford.face_square(face, 100, 80, 0.5) == (30, 20, 70, 60)  # +10 on every side
    assert oxford.face_square(face, 200, 160, 0.0) == (80, 60, 120, 100)  # annotated at half
    edge = oxford.Face((1, 1, 20, 20), None)
    assert oxford.face_square(edge, 100, 80, 0.5) == (0, 0, 40, 40)  # moved inside
    assert oxford.face_square(face, 100, 80, 2.0) == (10, 0, 90, 80)  # at most the short side


def test_head_box_annotations_are_parsed_or_refused():
    face = oxford.parse_head_box(voc("Bombay_1", 300, 200, (10, 20, 110, 140), "cat"))
    assert face == oxford.Face((10.0, 20.0, 110.0, 140.0), (300, 200))
    for bad in (
        b"<annotation/>",
        b"<annotation><object>",
        LAUGHS,
        voc("x", 9, 9, (5, 5, 1, 1), ""),
    ):
        with pytest.raises(Exception) as e:  # ET.ParseError or ValueError: a reason, no hang
            oxford.parse_head_box(bad)
        assert isinstance(e.value, (ValueError, SyntaxError))


def test_prepare_cuts_the_cat_faces_and_tfds_reads_them(archives, tmp_path):
    p = builders.prepare_oxford(16, 0.0, str(archives), str(tmp_path / "tfds"), progress=False)
    assert p.name == "oxford_cat_faces" and p.config.startswith("16px_m0_")
    assert p.counts == {
        "cat images listed": 27,
        "with a head box": 22,  # Sphynx_1 and _4 have boxes but no readable image
        "without a head box (left out)": 3,
    }
    assert p.num_examples == len(FACES) and all(p.splits.values())
    assert [n for n, _ in p.skipped] == [
        "Sphynx_1",
        "Sphynx_4",
        "annotations/xmls/Sphynx_2.xml",
        "annotations/xmls/Sphynx_3.xml",
    ]
    for name, why in BAD.items():
        assert why in next(r for n, r in p.skipped if name in n)
    import tensorflow_datasets as tfds

    b = tfds.builder_from_directory(p.path)
    names = []
    for split in p.splits:
        ds = b.as_data_source(split)
        for i in range(len(ds)):
            x = ds[i]
            names.append(x["file_name"].decode())
            face = x["image"].reshape(-1, 3).astype(int)
            assert x["image"].shape == (16, 16, 3)  # margin 0: the square is the red head,
            assert np.abs(np.median(face, 0) - RED).max() <= 8, names[-1]
            assert face[:, 0].min() > 140, names[-1]  # no grey around it (JPEG blurs its edge)
    assert sorted(names) == sorted(f"{n}.jpg" for n in FACES)
    meta = json.loads((Path(p.path) / "metadata.json").read_text())
    assert meta["archives_sha256"][oxford.IMAGES] == oxford.sha256(archives / oxford.IMAGES)
    again = builders.prepare_oxford(16, 0.0, str(archives), str(tmp_path / "tfds"), progress=False)
    assert again.reused and again.splits == p.splits
    wider = builders.prepare_oxford(16, 0.5, str(archives), str(tmp_path / "tfds"), progress=False)
    assert wider.config.startswith("16px_m50_") and wider.path != p.path


def test_prepare_cli_reports_the_counts(archives, tmp_path):
    args = ["--source", "oxford_cat_faces", "--archives", str(archives)]
    proc = run_cli(
        "catvae_jax.data", "prepare", *args, "--data_dir", str(tmp_path), "--image_size", "16"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "data set: oxford_cat_faces/16px_m20_" in out
    assert "cat images listed: 27\nwith a head box: 22\nwithout a head box (left out): 3" in out
    assert f"skipped {len(BAD)} files:" in out and "  Sphynx_4: not in images.tar.gz" in out


def test_a_tiny_training_run_reads_the_faces(archives, tmp_path):
    from catvae_jax.train.loop import train_and_evaluate

    c = tiny_config()
    c.data.source, c.data.archives = "oxford_cat_faces", str(archives)
    c.data.data_dir, c.num_epochs, c.num_eval_images = str(tmp_path / "tfds"), 1, 2
    train = data.load_split(c, "train")
    assert train.shape[1:] == (16, 16, 3) and len(train) >= 8
    result = train_and_evaluate(c, str(tmp_path / "run"))
    assert result["step"] == len(train) // 8 and np.isfinite(result["val_loss"])
    dataset = json.loads((tmp_path / "run" / "config.json").read_text())["dataset"]
    assert dataset["name"] == "oxford_cat_faces" and dataset["config"].startswith("16px_m20_")


def _serve_as_download(monkeypatch, archives: Path, sizes: dict | None = None) -> None:
    """ARCHIVES pointing at the miniature archives by file:// URL, with their sizes and sha256
    (or the `sizes` given, to make a transfer look damaged)."""
    fake = {
        name: oxford.Archive(
            (f"file://{archives / name}",),
            (sizes or {}).get(name, (archives / name).stat().st_size),
            oxford.sha256(archives / name),
        )
        for name in oxford.ARCHIVES
    }
    monkeypatch.setattr(oxford, "ARCHIVES", fake)


def test_archives_are_downloaded_once_checked_and_renamed(archives, tmp_path, monkeypatch):
    _serve_as_download(monkeypatch, archives)
    p = builders.prepare_oxford(16, 0.0, "", str(tmp_path), progress=False)
    downloads = tmp_path / "downloads" / "oxford_iiit_pet"
    assert sorted(f.name for f in downloads.iterdir()) == sorted(oxford.ARCHIVES)
    assert p.num_examples == len(FACES)

    def offline(*args, **kwargs):
        raise AssertionError("downloaded again")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    assert builders.prepare_oxford(16, 0.0, "", str(tmp_path), progress=False).reused


def test_a_damaged_download_leaves_nothing(archives, tmp_path, monkeypatch):
    _serve_as_download(monkeypatch, archives, sizes={oxford.ANNOTATIONS: 12345})
    with pytest.raises(EnvironmentFailure, match=r"cannot download annotations\.tar\.gz .*12345"):
        builders.prepare_oxford(16, 0.0, "", str(tmp_path), progress=False)
    downloads = tmp_path / "downloads" / "oxford_iiit_pet"
    # the complete, checked images.tar.gz stays; no partial file, no temporary one
    assert [f.name for f in downloads.iterdir()] == [oxford.IMAGES]


def test_a_read_only_download_folder_is_an_environment_failure(archives, tmp_path, monkeypatch):
    _serve_as_download(monkeypatch, archives)
    makedirs = os.makedirs

    def read_only(path, *args, **kwargs):
        if str(path).startswith(str(tmp_path)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return makedirs(path, *args, **kwargs)

    monkeypatch.setattr(os, "makedirs", read_only)
    downloads = tmp_path / "downloads" / "oxford_iiit_pet"
    with pytest.raises(EnvironmentFailure) as e:
        builders.prepare_oxford(16, data_dir=str(tmp_path), progress=False)
    assert str(e.value) == (
        f"cannot download images.tar.gz: cannot write {downloads}: Read-only file system"
    )


def test_a_connection_lost_mid_download_leaves_nothing(tmp_path, monkeypatch):
    class Cut(io.BytesIO):
        def read(self, n=-1):
            if self.tell():
                raise ConnectionResetError(104, "Connection reset by peer")
            return super().read(n)

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: Cut(b"x" * 100))
    with pytest.raises(EnvironmentFailure, match=r"images\.tar\.gz: \[Errno 104\] Connection"):
        builders.prepare_oxford(16, data_dir=str(tmp_path), progress=False)
    assert [p.name for p in tmp_path.rglob("*")] == ["downloads", "oxford_iiit_pet"]


def test_no_network_is_one_line_exit_1_and_leaves_nothing(tmp_path):
    """The real URLs with urlopen failing as it does offline (a name that does not resolve)."""
    code = f"""
import runpy, socket, sys, urllib.error, urllib.request
def offline(url, *args, **kwargs):
    raise urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution"))
urllib.request.urlopen = offline
sys.argv = ["catvae_jax.data", "prepare", "--source", "oxford_cat_faces",
            "--data_dir", {str(tmp_path)!r}, "--image_size", "16", "--noprogress"]
runpy.run_module("catvae_jax.data", run_name="__main__", alter_sys=True)
"""
    proc = run_python(code)
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1 and len(errors) == 1, proc.stderr[-2000:]
    assert errors[0].startswith(
        "error: cannot download images.tar.gz (https://thor.robots.ox.ac.uk/~vgg/data/pets/"
        "images.tar.gz: [Errno -3] Temporary failure in name resolution); fetch images.tar.gz"
    )
    assert "--config.data.archives=DIR" in errors[0]
    assert not list((tmp_path / "downloads").rglob("*.*"))


def test_unusable_archives_are_user_errors(archives, tmp_path):
    with pytest.raises(UserError, match=r"lacks images\.tar\.gz and annotations\.tar\.gz"):
        builders.prepare_oxford(16, archives=str(tmp_path), data_dir=str(tmp_path))
    with pytest.raises(UserError, match=r"not in .* and data\.download is False"):
        builders.prepare_oxford(16, data_dir=str(tmp_path), download=False)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / oxford.IMAGES).write_bytes(b"")
    (broken / oxford.ANNOTATIONS).write_bytes(b"not a tar archive at all")
    with pytest.raises(UserError, match=r"annotations\.tar\.gz' is not a readable tar archive"):
        builders.prepare_oxford(16, archives=str(broken), data_dir=str(tmp_path), progress=False)
    (broken / oxford.ANNOTATIONS).write_bytes((archives / oxford.ANNOTATIONS).read_bytes())
    images = (archives / oxford.IMAGES).read_bytes()
    for cut in (5000, 5200):  # at a member's header (tarfile sees an end), inside a member
        (broken / oxford.IMAGES).write_bytes(images[:cut])
        with pytest.raises(UserError, match=r"images\.tar\.gz' is not a readable tar archive"):
            builders.prepare_oxford(16, archives=str(broken), data_dir=str(tmp_path))
    assert not list(tmp_path.rglob("dataset_info.json"))


def test_unknown_margin_is_a_config_error():
    from catvae_jax.config import validate

    c = tiny_config()
    c.data.source, c.data.face_margin = "oxford_cat_faces", -0.1
    with pytest.raises(UserError, match=r"data\.face_margin"):
        validate(c)
