"""TFDS builders of cat images that run without TensorFlow: `synthetic_cats`, `cat_folder` and
`oxford_cat_faces`.

All write array_record files whose every example holds an `image` feature (uint8 [S, S, 3],
stored as lossless PNG). Images are handed to TFDS as PNG bytes, so TensorFlow is never
imported. The prepared data sets are plain TFDS data sets: `tfds.builder_from_directory(path)`
reads them back without catvae_jax.

* `synthetic_cats/<S>px_seed<seed>_n<train>-<validation>-<test>`: the procedural cats of
  `synthetic.py`, bit-identical to `synthetic.make_split`.
* `cat_folder/<S>px_<fingerprint>`: a user's folder of images, read from `manual_dir`
  (recursively; .jpg .jpeg .png .webp .bmp in any case). The fingerprint hashes the files'
  names and sizes, so a changed folder gets a new config instead of stale data. Undecodable
  files are skipped and listed, with their reasons, in the data set's `metadata.json`.
* `oxford_cat_faces/<S>px_m<margin %>_<fingerprint>`: Oxford-IIIT Pet's cats cut to their head
  boxes (`oxford.py`), read from the data set's two archives in `manual_dir`; the fingerprint
  hashes the archives' names and sizes. Split 80/10/10 by image name, as folders are.

`prepare_folder` / `prepare_synthetic` / `prepare_oxford` build one unless it is already there
and return a `Prepared` record of what it holds (the `prepare` CLI prints it);
`prepare_source(config)` does it for a training config's source.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Iterator

import jax
import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from catvae_jax import images
from catvae_jax.cli import plural
from catvae_jax.data import oxford, synthetic
from catvae_jax.data.folders import (
    FOLDER_VERSION,
    SPLITS,
    FolderListing,
    ProgressFn,
    assign_splits,
    decode_folder,
    folder_config_name,
    list_folder,
    printable,
)
from catvae_jax.errors import EnvironmentFailure, UserError, storage_error


@dataclasses.dataclass(eq=False)
class SyntheticCatsConfig(tfds.core.BuilderConfig):
    """Image size, seed and split sizes of the synthetic cats written to disk."""

    image_size: int = 64
    seed: int = 0
    num_train: int = 4096
    num_validation: int = 256
    num_test: int = 256


def synthetic_config(
    image_size: int, seed: int, num_train: int, num_validation: int, num_test: int
) -> SyntheticCatsConfig:
    """The `synthetic_cats` builder config for these settings (its name encodes all of them)."""
    return SyntheticCatsConfig(
        name=synthetic.config_name(image_size, seed, num_train, num_validation, num_test),
        version=synthetic.VERSION,
        description="Procedurally drawn cat faces (catvae_jax.data.synthetic).",
        image_size=image_size,
        seed=seed,
        num_train=num_train,
        num_validation=num_validation,
        num_test=num_test,
    )


class _Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Our builders print nothing themselves: `prepare()` reports what was built."""

    progress: ProgressFn | None = None  # called with the number of examples just done

    def _log_download_bytes(self) -> None:
        pass

    def _log_download_done(self) -> None:
        pass


class _ImageFiles(_Builder):
    """A builder whose examples are named images: `image` (uint8 [S, S, 3], PNG) and
    `file_name`, in name order, split 80/10/10 by `folders.assign_splits` over the names."""

    DESCRIPTION = ""
    HOMEPAGE = None

    def _info(self) -> tfds.core.DatasetInfo:
        s = self.builder_config.image_size
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(s, s, 3), encoding_format="png"),
                    "file_name": tfds.features.Text(),
                }
            ),
            description=self.DESCRIPTION,
            homepage=self.HOMEPAGE,
            metadata=tfds.core.MetadataDict(),
            disable_shuffling=True,  # records in name order
        )

    def _splits(self, good: dict[str, bytes]) -> dict:
        """The split generators of the images `good` ({file name: PNG bytes})."""
        names = sorted(good)
        return {
            split: self._generate_examples([names[i] for i in idx], good)
            for split, idx in assign_splits(names).items()
            if idx
        }

    def _generate_examples(self, names: list[str], good: dict[str, bytes]) -> Iterator:
        for i, name in enumerate(names):  # int keys: kept in this (sorted name) order
            yield i, {"image": good[name], "file_name": printable(name)}


class SyntheticCats(_Builder):
    """Procedurally drawn cat faces; example `i` of a split is `synthetic.make_split(...)[i]`."""

    VERSION = tfds.core.Version(synthetic.VERSION)
    RELEASE_NOTES = {synthetic.VERSION: "Procedural cat faces."}  # noqa: RUF012 (TFDS API)
    BUILDER_CONFIGS = []  # noqa: RUF012 (configs are made per setting: `synthetic_config`)

    def _info(self) -> tfds.core.DatasetInfo:
        s = self.builder_config.image_size
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(s, s, 3), encoding_format="png"),
                    "index": tfds.features.Scalar(np.int64),
                }
            ),
            description="Procedurally drawn cat faces, RGB, centred, on plain backgrounds.",
            disable_shuffling=True,  # record i of a split is image i of `make_split`
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        c = self.builder_config
        sizes = {"train": c.num_train, "validation": c.num_validation, "test": c.num_test}
        return {split: self._generate_examples(split, n) for split, n in sizes.items() if n > 0}

    def _generate_examples(self, split: str, num_examples: int):
        c = self.builder_config
        offset, chunk = synthetic.SPLIT_OFFSETS[split], 256
        for start in range(0, num_examples, chunk):
            stop = min(num_examples, start + chunk)
            cats = synthetic.make_cats(offset + np.arange(start, stop), c.image_size, c.seed)
            for i, image in zip(range(start, stop), cats, strict=True):
                yield i, {"image": images.png_bytes(image, compress_level=1), "index": i}
                if self.progress:
                    self.progress(1)


# Folders ---------------------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class CatFolderConfig(tfds.core.BuilderConfig):
    """A folder prepared at one image size; `fingerprint` identifies the folder's contents."""

    image_size: int = 128
    fingerprint: str = ""


def folder_config(listing: FolderListing, image_size: int) -> CatFolderConfig:
    """The `cat_folder` builder config of this folder listing at `image_size`."""
    return CatFolderConfig(
        name=folder_config_name(listing, image_size),
        version=FOLDER_VERSION,
        description=f"Images of a folder at {image_size}×{image_size}.",
        image_size=image_size,
        fingerprint=listing.fingerprint,
    )


class CatFolder(_ImageFiles):
    """A user's folder of cat images (`manual_dir`), converted to RGB, centre-cropped, resized."""

    VERSION = tfds.core.Version(FOLDER_VERSION)
    RELEASE_NOTES = {FOLDER_VERSION: "RGB, centre square, resized; 80/10/10 by hash."}  # noqa: RUF012
    BUILDER_CONFIGS = []  # noqa: RUF012 (configs are made per folder: `folder_config`)
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Pass the folder of images as manual_dir, or run "
        "`python -m catvae_jax.data prepare --source folder --path DIR`."
    )
    DESCRIPTION = "A folder of images: RGB, centre-cropped square, resized."
    listing: FolderListing | None = None  # the listing the config was made from (folder_builder)

    def _split_generators(self, dl_manager):
        # The listing the config's fingerprint came from, so a file removed since is a skipped
        # file, not a changed folder; listed anew only when built from manual_dir alone.
        listing = self.listing or list_folder(dl_manager.manual_dir)
        c = self.builder_config
        if listing.fingerprint != c.fingerprint:
            raise UserError(
                f"folder '{listing.root}' changed while preparing (fingerprint "
                f"{listing.fingerprint}, expected {c.fingerprint}); run prepare again"
            )
        good, skipped, content_sha256 = decode_folder(listing, c.image_size, self.progress)
        if not good:
            raise UserError(
                f"no valid image in folder '{listing.root}' ({plural(len(skipped), 'file')} "
                "skipped; "
                f"first: {printable(skipped[0][0])}: {skipped[0][1]})"
            )
        self.info.metadata.update(
            {
                "source_path": os.fspath(listing.root),
                "image_size": c.image_size,
                "fingerprint": c.fingerprint,
                "content_sha256": content_sha256,  # of every candidate file's bytes, in order
                "num_files": len(listing.files),
                "skipped": [[printable(n), r] for n, r in skipped],
                "ignored": [printable(n) for n in listing.ignored],
            }
        )
        return self._splits(good)


# Oxford-IIIT Pet's cat faces --------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class OxfordCatFacesConfig(tfds.core.BuilderConfig):
    """Face size and margin; `fingerprint` identifies the archives the faces are cut from."""

    image_size: int = 128
    margin: float = oxford.DEFAULT_MARGIN
    fingerprint: str = ""


def oxford_config(fingerprint: str, image_size: int, margin: float) -> OxfordCatFacesConfig:
    """The `oxford_cat_faces` builder config: `<S>px_m<margin in %>_<fingerprint>`."""
    percent = f"{margin * 100:g}".replace(".", "p")  # 0.125 → m12p5
    return OxfordCatFacesConfig(
        name=f"{image_size}px_m{percent}_{fingerprint}",
        version=oxford.VERSION,
        description=f"Oxford-IIIT Pet cat heads, margin {margin:g}, at {image_size}×{image_size}.",
        image_size=image_size,
        margin=margin,
        fingerprint=fingerprint,
    )


class OxfordCatFaces(_ImageFiles):
    """Oxford-IIIT Pet's cat photos cut to their head boxes (`oxford.py`); the data set's
    archives images.tar.gz and annotations.tar.gz in `manual_dir`."""

    VERSION = tfds.core.Version(oxford.VERSION)
    RELEASE_NOTES = {oxford.VERSION: "Head box squares with a margin; 80/10/10 by name."}  # noqa: RUF012
    BUILDER_CONFIGS = []  # noqa: RUF012 (configs are made per archive and size: `oxford_config`)
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        f"Pass the folder holding {oxford.IMAGES} and {oxford.ANNOTATIONS} as manual_dir, or run "
        "`python -m catvae_jax.data prepare --source oxford_cat_faces`."
    )
    DESCRIPTION = "Oxford-IIIT Pet's cats, cut to a square around the annotated head box."
    HOMEPAGE = oxford.HOMEPAGE
    annotations: oxford.Annotations | None = None  # read by prepare_oxford, else from manual_dir

    def _split_generators(self, dl_manager):
        folder, c = epath.Path(dl_manager.manual_dir), self.builder_config
        if oxford.fingerprint(folder) != c.fingerprint:
            raise UserError(f"the archives in '{folder}' changed while preparing; run it again")
        notes = self.annotations or oxford.read_annotations(folder / oxford.ANNOTATIONS)
        images_tar = folder / oxford.IMAGES
        good, skipped = oxford.read_faces(
            images_tar, notes.faces, c.margin, c.image_size, self.progress
        )
        skipped = sorted([*notes.skipped, *skipped])
        if not good:
            raise UserError(
                f"no cat face could be read from '{images_tar}' ({len(skipped)} skipped; "
                f"first: {skipped[0][0]}: {skipped[0][1]})"
            )
        self.info.metadata.update(
            {
                "source_path": os.fspath(folder),
                "image_size": c.image_size,
                "margin": c.margin,
                "fingerprint": c.fingerprint,
                "archives_sha256": {n: oxford.sha256(folder / n) for n in oxford.ARCHIVES},
                "counts": {
                    "cat images listed": notes.cats,
                    "with a head box": len(notes.faces),
                    "without a head box (left out)": notes.without_box,
                },
                "skipped": [[n, r] for n, r in skipped],
            }
        )
        return self._splits({f"{name}.jpg": png for name, png in good.items()})


# Preparing -------------------------------------------------------------------------------------


@dataclasses.dataclass
class Prepared:
    """What `prepare` built (or found already built) and where."""

    name: str  # TFDS name, e.g. "cat_folder"
    config: str  # builder config name, e.g. "128px_3fa9c01b2e77"
    version: str
    path: str  # the folder holding the array_record files and dataset_info.json
    splits: dict[str, int]  # examples per split
    skipped: list[tuple[str, str]]  # (file, reason) of files that were not images
    ignored: list[str]  # hidden files and files without an image extension
    content_sha256: str  # folders: sha256 of the source files' contents ("" otherwise)
    reused: bool  # True when the data set was already prepared
    seconds: float
    counts: dict[str, int] = dataclasses.field(default_factory=dict)  # what the source held

    @property
    def num_examples(self) -> int:
        return sum(self.splits.values())

    @property
    def from_files(self) -> bool:
        """Whether it was read from a folder of files (synthetic cats are drawn: no files)."""
        return bool(self.content_sha256)


@contextlib.contextmanager
def quiet():
    """Hides TFDS's absl warnings (custom config in use, OpenCV missing) while active."""
    level = logging.get_verbosity()
    logging.set_verbosity(logging.ERROR)
    try:
        yield
    finally:
        logging.set_verbosity(level)


def _data_dir(data_dir: str | os.PathLike | None) -> str | None:
    return os.fspath(data_dir) if data_dir else None  # empty: TFDS's default data_dir


def folder_builder(path: str | FolderListing, image_size: int, data_dir: str | None) -> CatFolder:
    """The `cat_folder` builder of a folder (a path, listed here, or its listing)."""
    listing = path if isinstance(path, FolderListing) else list_folder(path)
    with quiet():
        builder = CatFolder(
            config=folder_config(listing, image_size),
            data_dir=_data_dir(data_dir),
            file_format="array_record",
        )
    builder.listing = listing
    return builder


def synthetic_builder(
    image_size: int, seed: int, num_train: int, num_validation: int, num_test: int, data_dir
) -> SyntheticCats:
    """The `synthetic_cats` builder for these settings."""
    config = synthetic_config(image_size, seed, num_train, num_validation, num_test)
    with quiet():
        return SyntheticCats(
            config=config, data_dir=_data_dir(data_dir), file_format="array_record"
        )


def prepare(
    builder: _Builder, manual_dir: str | None = None, progress: bool = True, total: int = 0
) -> Prepared:
    """Builds the data set of `builder` unless it is already there; returns what it holds.

    TFDS writes into an `incomplete.*` folder and renames it only on success, so a failure
    (or Ctrl-C) never leaves a data set that looks complete. A data_dir that cannot be written
    (read-only, full, no permission) raises EnvironmentFailure naming the path. `total` sizes
    the progress bar.
    """
    start = time.perf_counter()
    with quiet():
        reused = builder.is_prepared()
    if not reused:
        tfds.display_progress_bar(False)  # (for the process) our one bar, not TFDS's several
        bar = tqdm(total=total or None, unit="img", disable=not progress, desc="preparing")
        with bar, quiet():
            builder.progress = bar.update
            try:
                builder.download_and_prepare(
                    download_config=tfds.download.DownloadConfig(manual_dir=manual_dir)
                )
            except BaseException as e:
                _remove_empty(epath.Path(builder.data_path).parent)  # left empty by TFDS
                failed = storage_error(e, where=str(builder.data_dir_root))
                if failed is not None:
                    raise EnvironmentFailure(f"cannot prepare the data set: {failed}") from e
                raise
            finally:
                builder.progress = None
    info = builder.info
    meta = dict(info.metadata or {})
    return Prepared(
        name=builder.name,
        config=builder.builder_config.name,
        version=str(builder.version),
        path=os.fspath(builder.data_dir),
        splits={s: info.splits[s].num_examples for s in SPLITS if s in info.splits},
        skipped=[(n, r) for n, r in meta.get("skipped", [])],
        ignored=list(meta.get("ignored", [])),
        content_sha256=meta.get("content_sha256", ""),
        reused=reused,
        seconds=time.perf_counter() - start,
        counts=dict(meta.get("counts", {})),
    )


def _remove_empty(folder: epath.Path) -> None:
    """Removes `folder` if it is an empty folder; never fails (its disk may be read-only)."""
    with contextlib.suppress(OSError):
        if folder.exists() and not any(folder.iterdir()):
            folder.rmdir()


def prepare_folder(
    path: str, image_size: int, data_dir: str | None = None, progress: bool = True
) -> Prepared:
    """Prepares the folder `path` as `cat_folder/<S>px_<fingerprint>` in `data_dir`.

    Raises UserError for a missing folder, or one with no image file or no valid image.
    """
    listing = list_folder(path)
    builder = folder_builder(listing, image_size, data_dir)
    return prepare(builder, os.fspath(path), progress, total=len(listing.files))


def prepare_synthetic(
    image_size: int,
    seed: int,
    num_train: int,
    num_validation: int,
    num_test: int,
    data_dir: str | None = None,
    progress: bool = True,
) -> Prepared:
    """Writes the synthetic cats as `synthetic_cats/<S>px_seed<seed>_n<...>` in `data_dir`."""
    builder = synthetic_builder(image_size, seed, num_train, num_validation, num_test, data_dir)
    return prepare(builder, None, progress, total=num_train + num_validation + num_test)


def oxford_builder(
    folder: epath.Path, image_size: int, margin: float, data_dir: str | None
) -> OxfordCatFaces:
    """The `oxford_cat_faces` builder of the archives in `folder`."""
    with quiet():
        return OxfordCatFaces(
            config=oxford_config(oxford.fingerprint(folder), image_size, margin),
            data_dir=_data_dir(data_dir),
            file_format="array_record",
        )


def prepare_oxford(
    image_size: int,
    margin: float = oxford.DEFAULT_MARGIN,
    archives: str = "",
    data_dir: str | None = None,
    download: bool = True,
    progress: bool = True,
) -> Prepared:
    """Prepares Oxford-IIIT Pet's cat faces as `oxford_cat_faces/<S>px_m<margin>_<fingerprint>`.

    The archives come from the folder `archives`, or are downloaded once (when `download`) to
    `<data_dir>/downloads/oxford_iiit_pet`. Raises UserError for missing or unusable archives,
    EnvironmentFailure when a download fails.
    """
    folder = oxford.archives_folder(archives, data_dir or "", download, progress)
    builder = oxford_builder(folder, image_size, margin, data_dir)
    with quiet():
        if builder.is_prepared():
            return prepare(builder, os.fspath(folder), progress)
    builder.annotations = oxford.read_annotations(folder / oxford.ANNOTATIONS)
    return prepare(builder, os.fspath(folder), progress, total=len(builder.annotations.faces))


def prepare_source(config: ml_collections.ConfigDict) -> Prepared:
    """Prepares the folder, oxford_cat_faces or synthetic source of `config` unless done;
    returns `Prepared`.

    In a multi-process run process 0 builds while the others wait, then all read it.
    """
    d = config.data

    def build(progress: bool) -> Prepared:
        if d.source == "folder":
            if not d.path:
                raise UserError(
                    "config field 'data.path' must name a folder when data.source is 'folder'"
                )
            return prepare_folder(d.path, config.image_size, d.data_dir, progress)
        if d.source == "oxford_cat_faces":
            margin = d.get("face_margin", oxford.DEFAULT_MARGIN)
            archives = d.get("archives", "")
            return prepare_oxford(
                config.image_size, margin, archives, d.data_dir, d.download, progress
            )
        return prepare_synthetic(
            config.image_size,
            d.seed,
            d.num_train,
            d.num_validation,
            d.num_test,
            d.data_dir,
            progress,
        )

    is_main = jax.process_index() == 0
    progress = bool(config.progress_bar) and is_main
    if jax.process_count() > 1:
        prepared = build(progress) if is_main else None
        multihost_utils.sync_global_devices("catvae_jax: data prepared")
        prepared = prepared or build(False)
    else:
        prepared = build(progress)
    if not prepared.reused and is_main:
        print(summary(prepared), flush=True)
    return prepared


def summary(p: Prepared) -> str:
    """One line: what was prepared, where, how many per split, how many files skipped."""
    counts = ", ".join(f"{s} {n}" for s, n in p.splits.items())
    verb = "found" if p.reused else f"prepared in {p.seconds:.1f} s:"
    skipped = f"; {plural(len(p.skipped), 'file')} skipped" if p.skipped else ""
    return f"{verb} {p.name}/{p.config}/{p.version} ({counts}{skipped}) in {p.path}"
