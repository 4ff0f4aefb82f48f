"""TFDS catalog data sets filtered to their cats: `cats_vs_dogs` (label == cat) and
`oxford_iiit_pet` (species == cat), read in array_record format from `data.data_dir`.

`catalog_cats` lists the (TFDS split, record index) of every cat once and splits them 80/10/10
by `folders.assign_splits` over "<tfds split>/<index>", so adding records never moves another.
"""

from __future__ import annotations

import concurrent.futures
import functools

import tensorflow_datasets as tfds

from catvae_jax.data.folders import THREADS, assign_splits
from catvae_jax.errors import UserError

# Catalog data set → (the class feature, its TFDS splits). Images whose class is "cat" are kept.
CATALOG = {"cats_vs_dogs": ("label", ("train",)), "oxford_iiit_pet": ("species", ("train", "test"))}


def catalog_builder(name: str, data_dir: str, download: bool) -> tfds.core.DatasetBuilder:
    """The TFDS builder of catalog data set `name`, built first when missing and `download`."""
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
    field, tfds_splits = CATALOG[name]
    builder = catalog_builder(name, data_dir, download)
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

        with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
            labels = list(pool.map(label, range(len(ds))))
        refs += [(tfds_split, i) for i, v in enumerate(labels) if v == cat]
    if len(refs) < 3:
        raise UserError(f"{name} holds {len(refs)} cat images; at least 3 are needed")
    parts = assign_splits([f"{s}/{i}" for s, i in refs])
    return {split: [refs[i] for i in idx] for split, idx in parts.items()}


def describe_catalog(name: str, data_dir: str, download: bool) -> dict[str, str]:
    """Name, version, config and the filter of a catalog data set (for the run's config.json)."""
    builder = catalog_builder(name, data_dir, download)
    return {
        "name": name,
        "version": str(builder.version),
        "config": builder.builder_config.name if builder.builder_config else "",
        "filter": f"{CATALOG[name][0]} == cat",
    }
