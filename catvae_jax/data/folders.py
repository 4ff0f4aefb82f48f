"""A folder of images: its listing and fingerprint, the split of each file, parallel decoding.

No TFDS here: `builders.CatFolder` turns the result into a data set.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import os
from collections.abc import Callable

from etils import epath

from catvae_jax import images
from catvae_jax.cli import plural
from catvae_jax.data import decode
from catvae_jax.errors import UserError

FOLDER_VERSION = "1.0.0"  # the cat_folder version: bump when decoding or splitting changes
SPLITS = ("train", "validation", "test")
_HOLDOUT_BUCKETS = {0: "validation", 1: "test"}  # of 10 hash buckets; the other 8 are train
ProgressFn = Callable[[int], None]
THREADS = min(32, (os.cpu_count() or 1) + 2)  # threads that read and decode files at once


@dataclasses.dataclass(frozen=True)
class FolderListing:
    """The candidate image files of a folder (relative POSIX paths, sorted) and their sizes."""

    root: epath.Path
    files: tuple[str, ...]
    sizes: tuple[int, ...]
    ignored: tuple[str, ...]  # hidden files and files without an image extension
    # (name, reason) of names with an image extension that are no regular file to read: a
    # dangling symlink, a FIFO, a socket or device, a file gone since the folder was listed
    unusable: tuple[tuple[str, str], ...] = ()

    @property
    def fingerprint(self) -> str:
        """12 hex digits of a hash of the candidates' names and sizes."""
        h = hashlib.sha256()
        for name, size in zip(self.files, self.sizes, strict=True):
            h.update(f"{name}\0{size}\n".encode("utf-8", "surrogateescape"))
        return h.hexdigest()[:12]


def list_folder(path: str | os.PathLike) -> FolderListing:
    """Lists a folder recursively. Raises UserError when it is missing or holds no image file.

    Only regular files (or symlinks to one) are candidates; other names with an image extension
    are listed in `unusable` with the reason, never opened.
    """
    root = epath.Path(path)
    if not str(path) or not root.exists():
        raise UserError(f"image folder '{path}' does not exist")
    if not root.is_dir():
        raise UserError(f"'{path}' is not a folder")
    files, sizes, ignored, unusable = [], [], [], []
    for dirpath, _, filenames in root.walk():
        for name in filenames:
            full = dirpath / name
            rel = full.relative_to(root).as_posix()
            if not decode.is_candidate(name):
                ignored.append(rel)
                continue
            try:
                sizes.append(decode.regular_file_size(full))
                files.append(rel)
            except decode.Undecodable as e:
                unusable.append((rel, str(e)))
    if not files:
        if unusable:
            name, why = min(unusable)
            raise UserError(
                f"no valid image in folder '{path}' ({plural(len(unusable), 'file')} skipped; "
                f"first: {printable(name)}: {why})"
            )
        raise UserError(
            f"no image files ({', '.join(decode.EXTENSIONS)}) in folder '{path}'"
            + (f" ({plural(len(ignored), 'other file')})" if ignored else "")
        )
    order = sorted(range(len(files)), key=files.__getitem__)
    return FolderListing(
        root,
        tuple(files[i] for i in order),
        tuple(sizes[i] for i in order),
        tuple(sorted(ignored)),
        tuple(sorted(unusable)),
    )


def folder_config_name(listing: FolderListing, image_size: int) -> str:
    """`<S>px_<fingerprint>`: the config name of a folder prepared at `image_size`."""
    return f"{image_size}px_{listing.fingerprint}"


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


def assign_splits(keys: list[str]) -> dict[str, list[int]]:
    """Positions of `keys` in each split, a pure function of the keys (file names).

    A key's hash bucket (of 10) puts it in validation (1), test (1) or train (8), so adding a
    file never moves another. When that leaves a split empty (small folders), keys are ranked by
    hash instead: one tenth (at least one) each to test and validation, the rest to train, so no
    split is empty from 3 keys on.
    """
    digests = [_digest(k) for k in keys]
    out = {s: [] for s in SPLITS}
    for i, d in enumerate(digests):
        out[_HOLDOUT_BUCKETS.get(int.from_bytes(d[:8]) % 10, "train")].append(i)
    if len(keys) >= 3 and not all(out.values()):
        ranked = sorted(range(len(keys)), key=lambda i: (digests[i], keys[i]))
        k = max(1, len(keys) // 10)
        out = {"test": ranked[:k], "validation": ranked[k : 2 * k], "train": ranked[2 * k :]}
        out = {s: sorted(v) for s, v in out.items()}
    return out


def decode_folder(
    listing: FolderListing, image_size: int, progress: ProgressFn | None = None
) -> tuple[dict[str, bytes], list[tuple[str, str]], str]:
    """Decodes every candidate in parallel threads.

    Returns ({name: PNG bytes} of the valid images, [(name, reason)] of the skipped files (the
    listing's `unusable` ones too, in name order), and the sha256 of the contents of all
    candidates). `progress(n)` is called as files finish. Never raises for a bad file.
    """

    def one(name: str) -> tuple[bytes | str, bytes]:
        try:
            content = decode.read_file(listing.root / name)
        except decode.Undecodable as e:
            return str(e), b""
        digest = hashlib.sha256(content).digest()
        try:
            image = decode.decode_image(content, image_size)
            return images.png_bytes(image, compress_level=1), digest
        except decode.Undecodable as e:
            return str(e), digest
        except Exception as e:  # a decoder bug must not stop the build: skip and report it
            return f"cannot decode ({type(e).__name__}: {' '.join(str(e).split())[:200]})", digest

    good, skipped, total = {}, [], hashlib.sha256()
    with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
        for name, (result, digest) in zip(listing.files, pool.map(one, listing.files), strict=True):
            total.update(_digest(name) + digest)
            if isinstance(result, bytes):
                good[name] = result
            else:
                skipped.append((name, result))
            if progress:
                progress(1)
    return good, sorted([*listing.unusable, *skipped]), total.hexdigest()


def printable(name: str) -> str:
    """A file name as valid UTF-8 (undecodable bytes shown as \\xNN)."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
