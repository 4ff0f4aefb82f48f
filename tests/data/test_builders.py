"""TFDS without TensorFlow: the synthetic_cats builder, catalog cats (mocked), every source."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import run_cli

from catvae_jax import data
from catvae_jax.config import get_config, validate
from catvae_jax.data import builders, sources, synthetic
from catvae_jax.errors import UserError


def test_tensorflow_is_not_installed_and_never_imported(tmp_path):
    with pytest.raises(ImportError):
        import tensorflow  # noqa: F401
    builders.prepare_synthetic(16, 1, 6, 2, 2, str(tmp_path), progress=False)
    assert "tensorflow" not in sys.modules


def test_synthetic_cats_on_disk_equal_the_in_memory_cats(tmp_path):
    p = builders.prepare_synthetic(16, 1, 10, 3, 2, str(tmp_path), progress=False)
    assert (p.name, p.config, p.version) == ("synthetic_cats", "16px_seed1_n10-3-2", "1.0.0")
    assert p.splits == {"train": 10, "validation": 3, "test": 2} and not p.reused
    builder = tfds.builder_from_directory(p.path)
    for split, n in p.splits.items():
        ds = builder.as_data_source(split)
        got = np.stack([ds[i]["image"] for i in range(len(ds))])
        assert got.dtype == np.uint8 and got.shape == (n, 16, 16, 3)
        assert np.array_equal(got, synthetic.make_split(split, n, 16, 1))
    again = builders.prepare_synthetic(16, 1, 10, 3, 2, str(tmp_path), progress=False)
    assert again.reused and again.path == p.path


def test_prepare_cli_synthetic_reports_what_it_built(tmp_path):
    args = ["prepare", "--source", "synthetic", "--data_dir", str(tmp_path), "--image_size"]
    proc = run_cli(
        "catvae_jax.data", *args, "16", "--num_train", "8", "--num_validation", "2",
        "--num_test", "2",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "synthetic_cats/16px_seed0_n8-2-2, version 1.0.0" in out
    assert "train 8, validation 2, test 2" in out
    assert (tmp_path / "synthetic_cats" / "16px_seed0_n8-2-2" / "1.0.0").is_dir()


def _cats_in_mock(name: str, field: str, tfds_splits, n: int) -> int:
    cat = [c.lower() for c in tfds.builder(name).info.features[field].names].index("cat")
    total = 0
    for s in tfds_splits:
        ds = tfds.data_source(name, split=s)
        total += sum(int(ds[i][field]) == cat for i in range(n))
    return total


@pytest.mark.parametrize("name", ["cats_vs_dogs", "oxford_iiit_pet"])
def test_catalog_sources_keep_only_cats(name, tmp_path):
    c = get_config()
    c.image_size, c.data.source, c.data.data_dir = 16, name, str(tmp_path)
    field, tfds_splits = sources.CATALOG[name]
    sources.catalog_cats.cache_clear()
    with tfds.testing.mock_data(num_examples=24):
        expected = _cats_in_mock(name, field, tfds_splits, 24)
        splits = {s: data.load_split(c, s) for s in sources.SPLITS}
        refs = sources.catalog_cats(name, str(tmp_path), True)
        info = data.describe(c)
    sources.catalog_cats.cache_clear()
    assert 3 <= expected < 24 * len(tfds_splits)  # the mock holds cats and dogs
    assert sum(len(v) for v in splits.values()) == expected
    for images in splits.values():  # the original's data test: count, shape, range
        assert len(images) >= 1 and images.shape[1:] == (16, 16, 3) and images.dtype == np.uint8
        unit = images / 255.0
        assert unit.min() >= 0.0 and unit.max() <= 1.0
    keys = [set(v) for v in refs.values()]
    assert not (keys[0] & keys[1]) and not (keys[0] & keys[2]) and not (keys[1] & keys[2])
    assert info["name"] == name and info["version"] and info["filter"] == f"{field} == cat"


def test_missing_catalog_data_set_is_a_user_error(tmp_path):
    sources.catalog_cats.cache_clear()
    with pytest.raises(UserError, match="tfds build cats_vs_dogs --file_format=array_record"):
        sources.catalog_cats("cats_vs_dogs", str(tmp_path), False)


@pytest.mark.parametrize(
    "field,value,named",
    [
        ("pipeline", "fast", "data.pipeline"),
        ("device_memory_mb", -1, "data.device_memory_mb"),
        ("grain_threads", 0, "data.grain_threads"),
    ],
)
def test_new_data_fields_are_validated(field, value, named):
    c = get_config()
    c.data[field] = value
    with pytest.raises(UserError, match=named):
        validate(c)


def test_folder_source_needs_a_path():
    c = get_config()
    c.data.source = "folder"
    with pytest.raises(UserError, match=r"data\.path"):
        validate(c)
