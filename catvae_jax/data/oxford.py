"""Real cat faces: Oxford-IIIT Pet's cat photos cut to their annotated head boxes. No TFDS here:
`builders.OxfordCatFaces` turns the result into a data set.

The data set's two public archives (`ARCHIVES`, from the Oxford VGG page `HOMEPAGE`) are read
as they are, never unpacked to disk:

* `annotations.tar.gz`: `annotations/trainval.txt` and `annotations/test.txt` list every image
  as `<name> <class 1-37> <species 1=cat, 2=dog> <breed id>` (cats are also the names with a
  capital first letter); `annotations/xmls/<name>.xml` holds its head box in PASCAL VOC form
  (`<size>`, `<object><bndbox>xmin ymin xmax ymax`, 1-based pixels). Head boxes were published
  for the trainval images only, so the test list's cats have none and are left out (counted).
* `images.tar.gz`: `images/<name>.jpg` (a few are PNG or GIF inside, read as such; any format
  outside `decode.FORMATS` is skipped like any unreadable image).

A face is the square centred on the head box whose side is the box's longer side times
(1 + 2 × margin): `margin` of that side is added on every side (0.2 by default). Where the square
would cross the photo's edge it is moved inside, and it is never larger than the photo's
shorter side. It is then converted to RGB and resized to `image_size` as folder images are.

`archives_folder` finds both archives (a folder the user gives, or the download folder, filled
by `download` on a connected machine: checked against the known size and sha256, written under
a temporary name and renamed, so nothing partial looks complete).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import http.client
import math
import tarfile
import urllib.error
import urllib.request
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import PurePosixPath

import numpy as np
from etils import epath
from PIL import ImageOps
from tqdm.auto import tqdm

from catvae_jax import images
from catvae_jax.data import decode
from catvae_jax.data.folders import THREADS, ProgressFn
from catvae_jax.errors import EnvironmentFailure, UserError

VERSION = "1.0.0"  # the oxford_cat_faces version: bump when cropping or splitting changes
HOMEPAGE = "https://www.robots.ox.ac.uk/~vgg/data/pets/"
DEFAULT_MARGIN = 0.2
IMAGES, ANNOTATIONS = "images.tar.gz", "annotations.tar.gz"
LISTS = ("trainval.txt", "test.txt")  # the two lists of the data set's own split
MAX_MEMBER_BYTES = {".xml": 1 << 20, ".txt": 16 << 20, ".jpg": 64 << 20}  # larger: skipped
CHUNK = 1 << 20  # bytes per read while downloading and hashing


@dataclasses.dataclass(frozen=True)
class Archive:
    """A public archive of the data set: where to fetch it and what it must be."""

    urls: tuple[str, ...]  # tried in order
    size: int  # bytes
    sha256: str


# Sizes and sha256 as TFDS 4.9.10 records them (tensorflow_datasets/datasets/oxford_iiit_pet/
# checksums.tsv); thor.robots.ox.ac.uk is where the VGG page links to, the www URL the older one.
ARCHIVES = {
    IMAGES: Archive(
        (
            "https://thor.robots.ox.ac.uk/~vgg/data/pets/images.tar.gz",
            "https://www.robots.ox.ac.uk/~vgg/data/pets/data/images.tar.gz",
        ),
        791918971,
        "67195c5e1c01f1ab5f9b6a5d22b8c27a580d896ece458917e61d459337fa318d",
    ),
    ANNOTATIONS: Archive(
        (
            "https://thor.robots.ox.ac.uk/~vgg/data/pets/annotations.tar.gz",
            "https://www.robots.ox.ac.uk/~vgg/data/pets/data/annotations.tar.gz",
        ),
        19173078,
        "52425fb6de5c424942b7626b428656fcbd798db970a937df61750c0f1d358e91",
    ),
}


@dataclasses.dataclass(frozen=True)
class Face:
    """The head box of one cat image: VOC pixels (1-based, inclusive) and the annotated size."""

    box: tuple[float, float, float, float]  # xmin, ymin, xmax, ymax
    size: tuple[int, int] | None  # (width, height) the box refers to; None if not given


@dataclasses.dataclass
class Annotations:
    """What annotations.tar.gz says about the cats."""

    faces: dict[str, Face]  # image name (no extension) → its head box, for cats that have one
    cats: int  # cat images in the lists
    without_box: int  # of which have no head box (the test list's)
    skipped: list[tuple[str, str]]  # (member, reason) of unreadable annotations of cats


# Finding and fetching the archives ---------------------------------------------------------


def download_dir(data_dir: str) -> epath.Path:
    """Where downloaded archives are kept: `<data_dir>/downloads/oxford_iiit_pet` (TFDS's
    default data_dir when empty)."""
    if not data_dir:
        from tensorflow_datasets.core import constants  # TFDS_DATA_DIR or ~/tensorflow_datasets

        data_dir = constants.DATA_DIR
    return epath.Path(data_dir) / "downloads" / "oxford_iiit_pet"


def archives_folder(archives: str, data_dir: str, download: bool, progress: bool) -> epath.Path:
    """The folder holding both archives: `archives` when given (the user's copies, used as they
    are), else the download folder, filled first from the Oxford VGG servers when `download`.

    Raises UserError when archives are missing and may not be fetched, EnvironmentFailure
    when a download fails (no network, a damaged transfer, an unwritable folder).
    """
    if archives:
        folder = epath.Path(archives)
        missing = [name for name in ARCHIVES if not (folder / name).is_file()]
        if missing:
            raise UserError(
                f"config field 'data.archives' must name a folder holding {IMAGES} and "
                f"{ANNOTATIONS}; '{archives}' lacks {' and '.join(missing)}"
            )
        return folder
    folder = download_dir(data_dir)
    for name, archive in ARCHIVES.items():
        path = folder / name
        if path.is_file() and path.stat().length == archive.size:
            continue
        if not download:
            raise UserError(
                f"{name} of Oxford-IIIT Pet is not in '{folder}' and data.download is False; "
                f"{_fetch_hint()}"
            )
        fetch(name, archive, path, progress)
    return folder


def _fetch_hint() -> str:
    return (
        f"fetch {IMAGES} and {ANNOTATIONS} from {HOMEPAGE} on a connected machine and pass "
        "their folder as --config.data.archives=DIR (data prepare: --archives DIR)"
    )


def fetch(name: str, archive: Archive, dest: epath.Path, progress: bool) -> None:
    """Downloads `archive` to `dest` (via a temporary name, renamed once size and sha256 match).

    Raises EnvironmentFailure in one line when no URL gives the right bytes or `dest`'s folder
    cannot be written; no file or folder is left behind then.
    """
    tmp = dest.parent / f".{dest.name}.{uuid.uuid4().hex[:8]}.part"
    failures = []
    try:
        for url in archive.urls:
            try:
                response = urllib.request.urlopen(url, timeout=60)
            except (OSError, http.client.HTTPException) as e:  # URLError, timeout, TLS
                failures.append(f"{url}: {_network_reason(e)}")
                continue
            try:
                with response:
                    size, digest = _copy(response, tmp, archive.size, progress, name)
            except _NetworkError as e:
                failures.append(f"{url}: {_network_reason(e.__cause__)}")
                continue
            if (size, digest) == (archive.size, archive.sha256):
                tmp.rename(dest)
                return
            failures.append(
                f"{url}: got {size} bytes with sha256 {digest[:12]}..., expected "
                f"{archive.size} bytes with sha256 {archive.sha256[:12]}..."
            )
    except OSError as e:  # writing: a read-only, full or forbidden folder, a file in the way
        where = e.filename or tmp.parent
        raise EnvironmentFailure(
            f"cannot download {name}: cannot write {where}: {e.strerror or e}"
        ) from e
    finally:
        if tmp.exists():
            tmp.unlink()
    raise EnvironmentFailure(f"cannot download {name} ({failures[0]}); {_fetch_hint()}")


class _NetworkError(Exception):
    """Reading the response failed (its cause says why)."""


def _network_reason(e: BaseException | None) -> str:
    reason = getattr(e, "reason", None) or e  # URLError wraps the socket error
    return " ".join(str(reason).split())[:200] or type(e).__name__


def _copy(response, tmp: epath.Path, total: int, progress: bool, name: str) -> tuple[int, str]:
    """Writes the body of an open HTTP response to `tmp`; returns (its bytes, their sha256).
    Raises _NetworkError when reading fails, OSError when writing does."""
    tmp.parent.mkdir(parents=True, exist_ok=True)
    digest, size = hashlib.sha256(), 0
    bar = tqdm(total=total, unit="B", unit_scale=True, disable=not progress, desc=name)
    with tmp.open("wb") as out, bar:
        while True:
            try:
                chunk = response.read(CHUNK)
            except (OSError, http.client.HTTPException) as e:  # reset, timeout, cut short
                raise _NetworkError from e
            if not chunk:
                return size, digest.hexdigest()
            out.write(chunk)
            digest.update(chunk)
            size += len(chunk)
            bar.update(len(chunk))


def fingerprint(folder: epath.Path) -> str:
    """12 hex digits of a hash of the archives' names and sizes (as a folder's fingerprint)."""
    h = hashlib.sha256()
    for name in ARCHIVES:
        h.update(f"{name}\0{(folder / name).stat().length}\n".encode())
    return h.hexdigest()[:12]


def sha256(path: epath.Path) -> str:
    """The sha256 of a file's contents."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


# Reading the archives ----------------------------------------------------------------------


def _members(
    path: epath.Path, wanted: Callable[[PurePosixPath], bool]
) -> Iterator[tuple[PurePosixPath, bytes | str]]:
    """(member path, its bytes or why not) of each regular file of a tar archive (compressed or
    not) that `wanted` picks, read in one pass; AppleDouble `._*` files are left out. A damaged
    archive is a UserError, and so is one cut short (Python's tarfile reads a tar that ends at a
    member's header as complete): one that is not the official file (by size) must end with
    the end-of-archive marker."""
    try:
        with path.open("rb") as f, tarfile.open(fileobj=f, mode="r|*") as tar:
            for member in tar:
                name = PurePosixPath(member.name)
                if member.isfile() and not name.name.startswith("._") and wanted(name):
                    yield name, _read(tar, member)
            rest = tar.fileobj.read(512)  # the marker's second zero block (the first is read)
        official = path.name in ARCHIVES and path.stat().length == ARCHIVES[path.name].size
        if not official and (len(rest) < 512 or any(rest)):
            raise tarfile.ReadError("it ends before its end-of-archive marker: a partial copy?")
    except (tarfile.TarError, EOFError, OSError) as e:
        reason = " ".join(str(e).split())[:200] or type(e).__name__
        raise UserError(f"'{path}' is not a readable tar archive ({reason})") from None


def _read(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes | str:
    """The member's bytes, or why not (larger than its kind's limit)."""
    limit = MAX_MEMBER_BYTES.get(PurePosixPath(member.name).suffix.lower(), 1 << 20)
    if member.size > limit:
        return f"too large ({member.size} bytes)"
    f = tar.extractfile(member)
    return f.read() if f else "unreadable"


def read_annotations(path: epath.Path) -> Annotations:
    """The cats and their head boxes from annotations.tar.gz. Raises UserError when it lists no
    image (no trainval.txt or test.txt) or holds no cat with a head box."""

    def wanted(name: PurePosixPath) -> bool:
        return name.name in LISTS or (name.parent.name == "xmls" and name.suffix == ".xml")

    species, xmls, skipped = {}, {}, []
    for name, data in _members(path, wanted):
        if name.name not in LISTS:
            xmls[name.stem] = (str(name), data)
        elif isinstance(data, str):
            raise UserError(f"{name} in '{path}' is {data}")
        else:
            species.update(_parse_list(data))
    if not species:
        raise UserError(f"'{path}' holds no annotations/{LISTS[0]} or {LISTS[1]} listing images")
    cats = sorted(name for name, s in species.items() if s == 1)
    faces = {}
    for name in cats:
        if name not in xmls:
            continue
        member, data = xmls[name]
        try:
            if isinstance(data, str):
                raise ValueError(data)
            faces[name] = parse_head_box(data)
        except (ET.ParseError, ValueError) as e:
            skipped.append((member, f"unreadable head box ({' '.join(str(e).split())[:200]})"))
    if not faces:
        raise UserError(f"'{path}' holds no head box of a cat ({len(cats)} cats listed)")
    return Annotations(faces, len(cats), len(cats) - len(faces) - len(skipped), skipped)


def _parse_list(data: bytes) -> dict[str, int]:
    """`<name> <class> <species> <breed>` lines → {name: species}; '#' lines and others skipped."""
    out = {}
    for line in data.decode("utf-8", "replace").splitlines():
        parts = line.split()
        if len(parts) >= 3 and not parts[0].startswith("#") and parts[2].isdigit():
            out[parts[0]] = int(parts[2])
    return out


def parse_head_box(data: bytes) -> Face:
    """A PASCAL VOC annotation → its first object's box. Raises ValueError (or ET.ParseError)
    for a missing, non-finite or empty box. (Python's expat refuses entity expansion bombs and
    ElementTree fetches no external entity.)"""
    root = ET.fromstring(data)
    box = root.find("object/bndbox")
    if box is None:
        raise ValueError("no <object><bndbox>")
    coords = tuple(float(box.findtext(k, "nan")) for k in ("xmin", "ymin", "xmax", "ymax"))
    if not all(math.isfinite(v) for v in coords) or coords[2] < coords[0] or coords[3] < coords[1]:
        raise ValueError(f"bad box {coords}")
    width, height = (root.findtext(f"size/{k}", "0") for k in ("width", "height"))
    size = (int(width), int(height)) if width.isdigit() and height.isdigit() else None
    return Face(coords, size if size and min(size) > 0 else None)


def face_square(face: Face, width: int, height: int, margin: float) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the face's square in a width × height photo (see module)."""
    xmin, ymin, xmax, ymax = face.box
    sx, sy = (width / face.size[0], height / face.size[1]) if face.size else (1.0, 1.0)
    left, top, right, bottom = (xmin - 1) * sx, (ymin - 1) * sy, xmax * sx, ymax * sy
    side = min(max(right - left, bottom - top) * (1 + 2 * margin), width, height)
    side = max(1, round(side))
    x = min(max(round((left + right - side) / 2), 0), width - side)
    y = min(max(round((top + bottom - side) / 2), 0), height - side)
    return x, y, x + side, y + side


def crop_face(data: bytes, face: Face, margin: float, size: int) -> np.ndarray:
    """An image file's bytes → its face as uint8 [size, size, 3]. Raises decode.Undecodable.

    The box refers to the stored pixels; when the annotated size matches the photo only after
    its EXIF rotation, the rotation is applied first.
    """
    with decode.decoding():
        img = decode.open_image(data)
        if face.size and face.size != img.size and face.size == img.size[::-1]:
            img = ImageOps.exif_transpose(img)
        img = img.crop(face_square(face, *img.size, margin))
        return np.asarray(decode.square_resize(decode.to_rgb(img), size), dtype=np.uint8)


def read_faces(
    path: epath.Path,
    faces: dict[str, Face],
    margin: float,
    size: int,
    progress: ProgressFn | None = None,
) -> tuple[dict[str, bytes], list[tuple[str, str]]]:
    """Crops every face of images.tar.gz (`images/<name>.jpg`) in parallel threads.

    Returns ({name: PNG bytes}, [(name, reason)] of the faces that could not be read, the ones
    missing from the archive too). Never raises for a bad image.
    """

    def one(name: str, data: bytes | str) -> bytes | str:
        if isinstance(data, str):
            return data
        try:
            return images.png_bytes(crop_face(data, faces[name], margin, size), compress_level=1)
        except decode.Undecodable as e:
            return str(e)
        except Exception as e:  # a decoder bug must not stop the build: skip and report it
            return f"cannot decode ({type(e).__name__}: {' '.join(str(e).split())[:200]})"

    def wanted(name: PurePosixPath) -> bool:
        return name.suffix.lower() == ".jpg" and name.stem in faces

    results, pending = {}, {}
    with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
        for path_in_tar, data in _members(path, wanted):
            name = path_in_tar.stem
            if name in results:  # a second copy: the first one counts
                continue
            results[name] = None
            pending[pool.submit(one, name, data)] = name
            if len(pending) >= 4 * THREADS:  # bounds the bytes held in memory
                pending = _collect(pending, results, progress, wait_all=False)
        _collect(pending, results, progress, wait_all=True)
    good = {n: r for n, r in results.items() if isinstance(r, bytes)}
    skipped = [(n, r) for n, r in results.items() if isinstance(r, str)]
    skipped += [(n, f"not in {IMAGES}") for n in faces if n not in results]
    return good, sorted(skipped)


def _collect(pending: dict, results: dict, progress: ProgressFn | None, wait_all: bool) -> dict:
    """Stores the finished futures' results; returns the ones still running."""
    how = concurrent.futures.ALL_COMPLETED if wait_all else concurrent.futures.FIRST_COMPLETED
    done, _ = concurrent.futures.wait(pending, return_when=how)
    for future in done:
        results[pending.pop(future)] = future.result()
        if progress:
            progress(1)
    return pending
