"""Where the images come from: `load_split(config, split)` → uint8 NHWC, or random access.

* `synthetic` (the default) draws procedural cat faces in memory (see `synthetic.py`); every
  process of a multi-process run can make its own share without touching disk. Streamed with
  grain, it is read from the TFDS data set `synthetic_cats` (prepared on first use).
* `folder`: a folder of images (`data.path`), prepared once as the TFDS data set
  `cat_folder/<S>px_<fingerprint>` in `data.data_dir` (prepared on first use).
* `cats_vs_dogs` (label == cat), `oxford_iiit_pet` (species == cat): TFDS catalog data sets in
  array_record format in `data.data_dir`; their cats are split 80/10/10 by record id.
"""

from __future__ import annotations

import concurrent.futures
import functools
import os
from collections.abc import Sequence

import ml_collections
import numpy as np

from catvae_jax.data import synthetic
from catvae_jax.data.decode import square_resize_array
from catvae_jax.errors import UserError

SPLITS = ("train", "validation", "test")
# Catalog data set → (the class feature, its TFDS splits). Images whose class is "cat" are kept.
CATALOG = {"cats_vs_dogs": ("label", ("train",)), "oxford_iiit_pet": ("species", ("train", "test"))}
_THREADS = min(32, (os.cpu_count() or 1) + 2)


def split_size(config: ml_collections.ConfigDict, split: str) -> int:
    """Number of examples configured for `split` of a synthetic source."""
    return {
        "train": config.data.num_train,
        "validation": config.data.num_validation,
        "test": config.data.num_test,
    }[split]


def synthetic_name(image_size: int, seed: int, n_train: int, n_val: int, n_test: int) -> str:
    """The `synthetic_cats` config name: `<S>px_seed<seed>_n<train>-<validation>-<test>`."""
    return f"{image_size}px_seed{seed}_n{n_train}-{n_val}-{n_test}"


def synthetic_config_name(config: ml_collections.ConfigDict) -> str:
    """The `synthetic_cats` config name of a config's synthetic source."""
    d = config.data
    return synthetic_name(config.image_size, d.seed, d.num_train, d.num_validation, d.num_test)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise UserError(f"unknown split '{split}', expected one of {', '.join(SPLITS)}")


def load_split(config: ml_collections.ConfigDict, split: str) -> np.ndarray:
    """All images of `split` as uint8 [N, S, S, 3] with S = config.image_size."""
    _check_split(split)
    if config.data.source == "synthetic":
        n = split_size(config, split)
        return synthetic.make_split(split, n, config.image_size, config.data.seed)
    return read_all(random_access(config, split))


def read_all(source: Sequence[np.ndarray]) -> np.ndarray:
    """Every image of a random-access source, stacked: uint8 [N, S, S, 3] (parallel reads)."""
    with concurrent.futures.ThreadPoolExecutor(_THREADS) as pool:
        images = list(pool.map(source.__getitem__, range(len(source))))
    if not images:
        raise UserError("the data split is empty")
    return np.stack(images)


class TfdsImages:
    """The `image` feature of a TFDS data source as uint8 [S, S, 3] (resized when it differs)."""

    def __init__(self, data_source, image_size: int, indices: Sequence[int] | None = None):
        self.data_source = data_source
        self.image_size = image_size
        self.indices = None if indices is None else np.asarray(indices, np.int64)
        if len(self):
            from catvae_jax.data.builders import quiet

            with quiet():  # TFDS warns once, on the first image, that OpenCV is missing
                self[0]

    def __len__(self) -> int:
        return len(self.data_source) if self.indices is None else len(self.indices)

    def __getitem__(self, i: int) -> np.ndarray:
        j = int(i) if self.indices is None else int(self.indices[i])
        return square_resize_array(np.asarray(self.data_source[j]["image"]), self.image_size)


class Concat:
    """Several random-access sources read as one."""

    def __init__(self, parts: Sequence):
        self.parts = list(parts)
        self.starts = np.cumsum([0] + [len(p) for p in self.parts])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, i: int) -> np.ndarray:
        k = int(np.searchsorted(self.starts, i, side="right")) - 1
        return self.parts[k][int(i) - int(self.starts[k])]


def random_access(config: ml_collections.ConfigDict, split: str):
    """`split` as a random-access source: `len(src)`, `src[i]` → uint8 [S, S, 3].

    Folder and synthetic sources are prepared as TFDS data sets first if needed.
    """
    _check_split(split)
    import tensorflow_datasets as tfds

    source, size = config.data.source, config.image_size
    if source in ("synthetic", "folder"):
        prepared = prepare(config)
        if not prepared.splits.get(split):
            raise UserError(f"the {split} split of {prepared.name}/{prepared.config} is empty")
        builder = tfds.builder_from_directory(prepared.path)
        return TfdsImages(builder.as_data_source(split), size)
    if source in CATALOG:
        refs = catalog_cats(source, config.data.data_dir, config.data.download)[split]
        builder = _catalog_builder(source, config.data.data_dir, config.data.download)
        parts = []
        for tfds_split in CATALOG[source][1]:
            idx = [i for s, i in refs if s == tfds_split]
            if idx:
                parts.append(TfdsImages(builder.as_data_source(tfds_split), size, idx))
        return Concat(parts)
    raise UserError(f"data.source '{source}' is not a known source")  # validate() stops it first


def num_examples(config: ml_collections.ConfigDict, split: str) -> int:
    """Examples in `split` (prepares a folder if needed; reads no image of prepared sets)."""
    source = config.data.source
    if source == "synthetic":
        return split_size(config, split)
    if source == "folder":
        return prepare(config).splits.get(split, 0)
    return len(catalog_cats(source, config.data.data_dir, config.data.download)[split])


def pipeline(config: ml_collections.ConfigDict) -> str:
    """The input pipeline to use, "device" or "grain": `data.pipeline`, where "auto" means
    device when the uint8 train split fits `data.device_memory_mb` (each device holds it all)."""
    if config.data.pipeline != "auto":
        return config.data.pipeline
    nbytes = num_examples(config, "train") * config.image_size**2 * 3
    return "device" if nbytes <= config.data.device_memory_mb * 2**20 else "grain"


# Prepared TFDS data sets -----------------------------------------------------------------------


def prepare(config: ml_collections.ConfigDict):
    """Prepares the folder or synthetic source of `config` unless done; returns `Prepared`.

    In a multi-process run process 0 builds while the others wait, then all read it.
    """
    import jax

    from catvae_jax.data import builders

    d = config.data

    def build(progress: bool):
        if d.source == "folder":
            if not d.path:
                raise UserError(
                    "config field 'data.path' must name a folder when data.source is 'folder'"
                )
            return builders.prepare_folder(d.path, config.image_size, d.data_dir, progress)
        return builders.prepare_synthetic(
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
        from jax.experimental import multihost_utils

        prepared = build(progress) if is_main else None
        multihost_utils.sync_global_devices("catvae_jax: data prepared")
        prepared = prepared or build(False)
    else:
        prepared = build(progress)
    if not prepared.reused and is_main:
        print(builders.summary(prepared), flush=True)
    return prepared


# Catalog data sets -----------------------------------------------------------------------------


def _catalog_builder(name: str, data_dir: str, download: bool):
    import tensorflow_datasets as tfds

    hint = (
        f"build it where TensorFlow is installed with `tfds build {name} "
        f"--file_format=array_record{' --data_dir=' + data_dir if data_dir else ''}`"
    )
    builder = tfds.builder(name, data_dir=data_dir or None, file_format="array_record")
    if not builder.is_prepared():
        if not download:
            raise UserError(f"{name} is not in data_dir '{builder.data_dir_root}'; {hint}")
        try:
            builder.download_and_prepare(file_format="array_record")
        except Exception as e:
            first = " ".join(str(e).split())[:200] or type(e).__name__
            raise UserError(f"{name} could not be downloaded and prepared ({first}); {hint}") from e
    return builder


@functools.lru_cache(maxsize=4)
def catalog_cats(name: str, data_dir: str, download: bool) -> dict[str, list[tuple[str, int]]]:
    """(TFDS split, record index) of every cat of a catalog data set, per split of ours.

    Reads every record once (the class is stored with the image); undecodable records are left
    out. Our splits come from `folders.assign_splits` over "<tfds split>/<index>".
    """
    from catvae_jax.data.folders import assign_splits

    field, tfds_splits = CATALOG[name]
    builder = _catalog_builder(name, data_dir, download)
    names = [n.lower() for n in builder.info.features[field].names]
    cat = names.index("cat")
    refs = []
    for tfds_split in tfds_splits:
        try:
            ds = builder.as_data_source(tfds_split)
        except Exception as e:  # e.g. prepared as tfrecord: no random access
            first = " ".join(str(e).split())[:200]
            raise UserError(
                f"{name} in data_dir '{data_dir}' cannot be read by index ({first}); "
                f"it must be prepared with --file_format=array_record"
            ) from e

        def label(i: int, ds=ds) -> int:
            try:
                return int(ds[i][field])
            except Exception:  # an undecodable record: left out
                return -1

        with concurrent.futures.ThreadPoolExecutor(_THREADS) as pool:
            labels = list(pool.map(label, range(len(ds))))
        refs += [(tfds_split, i) for i, v in enumerate(labels) if v == cat]
    if len(refs) < 3:
        raise UserError(f"{name} holds {len(refs)} cat images; at least 3 are needed")
    parts = assign_splits([f"{s}/{i}" for s, i in refs])
    return {split: [refs[i] for i in idx] for split, idx in parts.items()}


def describe(config: ml_collections.ConfigDict) -> dict[str, str]:
    """Name, config and version of the data set, written into the run's config.json."""
    d = config.data
    if d.source == "synthetic":
        return {
            "name": "synthetic_cats",
            "version": synthetic.VERSION,
            "config": synthetic_config_name(config),
        }
    if d.source == "folder":
        from catvae_jax.data import folders

        listing = folders.list_folder(d.path)
        return {
            "name": "cat_folder",
            "version": folders.FOLDER_VERSION,
            "config": folders.folder_config_name(listing, config.image_size),
            "path": str(d.path),
        }
    builder = _catalog_builder(d.source, d.data_dir, d.download)
    field = CATALOG[d.source][0]
    return {
        "name": d.source,
        "version": str(builder.version),
        "config": builder.builder_config.name if builder.builder_config else "",
        "filter": f"{field} == cat",
    }
