"""Data: the original's data tests for the synthetic source, and the batch plan."""

import numpy as np
import pytest

from catvae_jax import data
from catvae_jax.config import get_config
from catvae_jax.errors import UserError
from catvae_jax.train.loop import make_mesh


def test_synthetic_split_count_shape_and_range():
    c = get_config()
    c.image_size, c.data.num_validation = 32, 40
    images = data.load_split(c, "validation")
    assert images.shape == (40, 32, 32, 3) and images.dtype == np.uint8
    unit = images / 255.0
    assert unit.min() >= 0.0 and unit.max() <= 1.0 and unit.std() > 0.05


def test_unknown_split_and_source_are_user_errors():
    c = get_config()
    with pytest.raises(UserError):
        data.load_split(c, "holdout")
    c.data.source = "folder"
    with pytest.raises(UserError):
        data.load_split(c, "train")


def test_batch_plan_is_a_function_of_seed_epoch_step():
    a = data.batch_plan(np.int32(0), np.int32(3), np.int32(2), 50, 8)
    b = data.batch_plan(np.int32(0), np.int32(3), np.int32(2), 50, 8)
    c = data.batch_plan(np.int32(0), np.int32(4), np.int32(2), 50, 8)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_an_epoch_visits_each_example_at_most_once():
    idx = np.concatenate(
        [
            np.asarray(data.batch_plan(np.int32(1), np.int32(0), np.int32(p), 50, 8)[0])
            for p in range(6)
        ]
    )
    assert len(set(idx.tolist())) == 48 and idx.max() < 50


def test_device_data_draws_the_planned_flipped_batch():
    images = np.random.default_rng(0).integers(0, 256, (20, 16, 16, 3), dtype=np.uint8)
    dd = data.DeviceData(images, make_mesh(), batch_size=4, seed=5, flip=True)
    assert dd.steps_per_epoch == 5
    device_batch = dd.batch(7)  # epoch 1, position 2
    batch = np.asarray(device_batch)
    idx, flips = (
        np.asarray(v) for v in data.batch_plan(np.int32(5), np.int32(1), np.int32(2), 20, 4)
    )
    expected = np.where(flips[:, None, None, None], images[idx][:, :, ::-1], images[idx])
    assert np.array_equal(batch, expected)
    assert device_batch.sharding.is_equivalent_to(dd.batch_sharding, 4)


def test_eval_batches_cover_every_image_once():
    images = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1) * np.ones((1, 2, 2, 3), np.uint8)
    seen = []
    for batch, mask in data.eval_batches(images, 4, make_mesh()):
        seen += [
            int(b[0, 0, 0]) for b, m in zip(np.asarray(batch), np.asarray(mask), strict=True) if m
        ]
    assert seen == list(range(10))
