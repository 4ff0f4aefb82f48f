"""The grain pipeline yields exactly the batches of the on-device pipeline, from any step."""

from __future__ import annotations

import numpy as np

from catvae_jax import data
from catvae_jax.data import sources
from catvae_jax.data.streaming import StreamingData, epoch_plan
from catvae_jax.train.loop import make_mesh


def _both(images, source, batch_size=4, seed=3, flip=True, **kw):
    mesh = make_mesh()
    device = data.DeviceData(images, mesh, batch_size, seed, flip)
    stream = StreamingData(source, mesh, batch_size, seed, flip, threads=3, prefetch=2, **kw)
    return device, stream


def test_epoch_plan_is_batch_plan_at_every_position():
    idx, flips = (
        np.asarray(a)
        for a in epoch_plan(np.int32(7), np.int32(2), num_examples=23, batch_size=5, steps=4)
    )
    for pos in range(4):
        i, f = data.batch_plan(np.int32(7), np.int32(2), np.int32(pos), 23, 5)
        assert np.array_equal(idx[pos], np.asarray(i)) and np.array_equal(flips[pos], np.asarray(f))


def test_grain_and_device_batches_are_identical_across_epochs_and_jumps():
    images = np.random.default_rng(0).integers(0, 256, (22, 8, 8, 3), dtype=np.uint8)
    device, stream = _both(images, images)  # a numpy array is a random-access source
    assert stream.steps_per_epoch == device.steps_per_epoch == 5
    order = [*range(12), 3, 4, 11]  # two epochs and a bit, then a resume-like jump back and on
    for step in order:
        a, b = device.batch(step), stream.batch(step)
        assert np.array_equal(np.asarray(a), np.asarray(b)), step
        assert b.sharding.is_equivalent_to(device.batch_sharding, 4)
    flipped = np.asarray(stream.batch(0))
    assert any(
        not np.array_equal(flipped[i], images[j])
        for i, j in enumerate(
            np.asarray(data.batch_plan(np.int32(3), np.int32(0), np.int32(0), 22, 4)[0])
        )
    )
    stream.close()


def test_pipeline_auto_follows_the_memory_budget(config):
    config.data.pipeline = "auto"
    config.data.device_memory_mb = 1  # 96 × 16 × 16 × 3 bytes = 72 KiB: fits
    assert sources.pipeline(config) == "device"
    config.data.num_train = 2000  # 1.5 MB: does not fit
    assert sources.pipeline(config) == "grain"
    config.data.pipeline = "device"
    assert sources.pipeline(config) == "device"


def test_synthetic_streamed_from_tfds_matches_in_memory_batches(config, tmp_path):
    config.data.data_dir = str(tmp_path / "tfds")
    config.data.num_train, config.data.num_validation, config.data.num_test = 20, 4, 0
    config.data.pipeline = "grain"
    stream = data.train_data(config, make_mesh())
    assert isinstance(stream, StreamingData)
    config.data.pipeline = "device"
    device = data.train_data(config, make_mesh())
    assert isinstance(device, data.DeviceData)
    for step in (0, 1, 2, 5, 6, 2):
        assert np.array_equal(np.asarray(device.batch(step)), np.asarray(stream.batch(step)))
    stream.close()
