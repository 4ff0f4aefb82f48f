"""Where the images come from: `load_split(config, split)` → uint8 NHWC, or random access.

* `synthetic` (the default) draws procedural cat faces in memory (see `synthetic.py`); every
  process of a multi-process run can make its own share without touching disk. Streamed with
  grain, it is read from the TFDS data set `synthetic_cats` (prepared on first use).
* `folder`: a folder of images (`data.path`), prepared once as the TFDS data set
  `cat_folder/<S>px_<fingerprint>` in `data.data_dir` (prepared on first use).
* `oxford_cat_faces`: Oxford-IIIT Pet's cats cut to their head boxes (`oxford.py`), prepared
  once from the data set's archives (`data.archives`, or downloaded) as
  `oxford_cat_faces/<S>px_m<margin>_<fingerprint>` in `data.data_dir`.
* `cats_vs_dogs` (label == cat), `oxford_iiit_pet` (species == cat): TFDS catalog data sets in
  array_record format in `data.data_dir`; their cats are split 80/10/10 by record id
  (`catalog.py`).

Preparing the TFDS data sets is `builders.py`'s job; this module only chooses and reads them.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Sequence

import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from jax.sharding import Mesh

from catvae_jax.data import folders, synthetic
from catvae_jax.data.batching import DeviceData
from catvae_jax.data.builders import prepare_source, quiet
from catvae_jax.data.catalog import CATALOG, catalog_builder, catalog_cats, describe_catalog
from catvae_jax.data.decode import square_resize_array
from catvae_jax.data.folders import SPLITS, THREADS
from catvae_jax.errors import UserError

PREPARED = ("synthetic", "folder", "oxford_cat_faces")  # prepared by builders.prepare_source


def split_size(config: ml_collections.ConfigDict, split: str) -> int:
    """Number of examples configured for `split` of a synthetic source."""
    return {
        "train": config.data.num_train,
        "validation": config.data.num_validation,
        "test": config.data.num_test,
    }[split]


def synthetic_config_name(config: ml_collections.ConfigDict) -> str:
    """The `synthetic_cats` config name of a config's synthetic source."""
    d, size = config.data, config.image_size
    return synthetic.config_name(size, d.seed, d.num_train, d.num_validation, d.num_test)


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
    with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
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

    Folder, oxford_cat_faces and synthetic sources are prepared as TFDS data sets first if
    needed.
    """
    _check_split(split)
    source, size = config.data.source, config.image_size
    if source in PREPARED:
        prepared = prepare_source(config)
        if not prepared.splits.get(split):
            raise UserError(f"the {split} split of {prepared.name}/{prepared.config} is empty")
        builder = tfds.builder_from_directory(prepared.path)
        return TfdsImages(builder.as_data_source(split), size)
    if source in CATALOG:
        refs = catalog_cats(source, config.data.data_dir, config.data.download)[split]
        builder = catalog_builder(source, config.data.data_dir, config.data.download)
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
    if source in PREPARED:
        return prepare_source(config).splits.get(split, 0)
    return len(catalog_cats(source, config.data.data_dir, config.data.download)[split])


def pipeline(config: ml_collections.ConfigDict) -> str:
    """The input pipeline to use, "device" or "grain": `data.pipeline`, where "auto" means
    device when the uint8 train split fits `data.device_memory_mb` (each device holds it all)."""
    if config.data.pipeline != "auto":
        return config.data.pipeline
    nbytes = num_examples(config, "train") * config.image_size**2 * 3
    return "device" if nbytes <= config.data.device_memory_mb * 2**20 else "grain"


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
        listing = folders.list_folder(d.path)
        return {
            "name": "cat_folder",
            "version": folders.FOLDER_VERSION,
            "config": folders.folder_config_name(listing, config.image_size),
            "path": str(d.path),
        }
    if d.source == "oxford_cat_faces":
        p = prepare_source(config)
        return {"name": p.name, "version": p.version, "config": p.config}
    return describe_catalog(d.source, d.data_dir, d.download)


def train_data(config: ml_collections.ConfigDict, mesh: Mesh):
    """The training batches for `config`: an object with `steps_per_epoch` and `batch(step)`.

    `batch(step)` returns the uint8 batch [B, S, S, 3] of global step `step`, sharded over the
    mesh axis `data`; which images and flips it holds is decided by `batch_plan`. The split is
    held on the devices (`DeviceData`) or streamed with grain (`StreamingData`) as
    `data.pipeline` says ("auto": on the devices when it fits `data.device_memory_mb`).
    """
    if pipeline(config) == "device":
        images = load_split(config, "train")
        return DeviceData(images, mesh, config.batch_size, config.seed, config.data.flip)
    from catvae_jax.data.streaming import StreamingData  # imports grain: only when streaming

    d = config.data
    return StreamingData(
        random_access(config, "train"),
        mesh,
        config.batch_size,
        config.seed,
        d.flip,
        threads=d.grain_threads,
        prefetch=d.prefetch_batches,
    )
