"""Tests for the procedurally drawn cat-face data set (catvae_jax.data.synthetic)."""

import itertools

import numpy as np
import pytest

from catvae_jax.data.synthetic import SPLIT_OFFSETS, make_cats, make_split


@pytest.mark.parametrize("size", [16, 32, 64, 128])
def test_shape_and_dtype(size):
    images = make_cats(np.arange(3), size, seed=0)
    assert images.shape == (3, size, size, 3)
    assert images.dtype == np.uint8


def test_accepts_sequences_and_empty():
    assert make_cats([0, 1], 16, seed=0).shape == (2, 16, 16, 3)
    assert make_cats(range(2), 16, seed=0).shape == (2, 16, 16, 3)
    assert make_cats([], 16, seed=0).shape == (0, 16, 16, 3)


def test_values_span_a_range():
    images = make_cats(np.arange(8), 32, seed=0).astype(np.float64)
    per_image_range = images.max(axis=(1, 2, 3)) - images.min(axis=(1, 2, 3))
    assert per_image_range.min() > 100
    assert images.std(axis=(1, 2, 3)).min() > 10


def test_deterministic():
    a = make_cats(np.arange(6), 32, seed=3)
    b = make_cats(np.arange(6), 32, seed=3)
    assert a.tobytes() == b.tobytes()


def test_image_depends_only_on_seed_index_and_size():
    full = make_cats(np.arange(10), 32, seed=1)
    np.testing.assert_array_equal(make_cats([5], 32, seed=1)[0], full[5])
    # 16 px draws 256 images per batch: cross a batch boundary and permute the order.
    many = make_cats(np.arange(300), 16, seed=1)
    picked = [290, 5, 257, 255, 0]
    np.testing.assert_array_equal(make_cats(picked, 16, seed=1), many[picked])


def test_different_indices_give_different_images():
    images = make_cats(np.arange(20), 16, seed=0).reshape(20, -1)
    assert len({row.tobytes() for row in images}) == 20


def test_different_seeds_differ():
    a = make_cats(np.arange(4), 32, seed=0).astype(np.int16)
    b = make_cats(np.arange(4), 32, seed=1).astype(np.int16)
    per_image_diff = np.abs(a - b).mean(axis=(1, 2, 3))
    assert (per_image_diff > 5).all()


def test_splits_are_disjoint_index_ranges():
    n = 4
    splits = {s: make_split(s, n, 16, seed=0) for s in ("train", "validation", "test")}
    for name, images in splits.items():
        assert images.shape == (n, 16, 16, 3)
        expected = make_cats(SPLIT_OFFSETS[name] + np.arange(n), 16, seed=0)
        np.testing.assert_array_equal(images, expected)
    seen = [img.tobytes() for images in splits.values() for img in images]
    assert len(set(seen)) == 3 * n
    offsets = sorted(SPLIT_OFFSETS.values())
    assert all(b - a >= 1_000_000 for a, b in itertools.pairwise(offsets))


@pytest.mark.parametrize("split", ["valid", "Train", "", "eval"])
def test_bad_split_raises(split):
    with pytest.raises(ValueError):
        make_split(split, 2, 16, seed=0)


def test_bad_arguments_raise():
    with pytest.raises(ValueError):
        make_split("train", -1, 16, seed=0)
    with pytest.raises(ValueError):
        make_cats([0], 0, seed=0)
    with pytest.raises(ValueError):
        make_cats([-1], 16, seed=0)


def test_images_are_varied():
    images = make_cats(np.arange(50), 32, seed=0).astype(np.float64)
    mean_colours = images.mean(axis=(1, 2))  # [50, 3]
    assert mean_colours.std(axis=0).min() > 15
    # The faces themselves (not just the backgrounds) vary: fur colour around the nose.
    face_colours = images[:, 12:20, 8:24].mean(axis=(1, 2))
    assert face_colours.std(axis=0).min() > 25
    # ... and so do the backgrounds (top-left corner).
    assert images[:, :3, :3].mean(axis=(1, 2)).std(axis=0).min() > 15


def test_face_differs_from_background():
    size = 32
    images = make_cats(np.arange(40), size, seed=2).astype(np.float64)
    c, k = size // 8, size // 8
    centre = images[:, size // 2 - c : size // 2 + c, size // 2 - c : size // 2 + c]
    corners = np.concatenate(
        [images[:, :k, :k], images[:, :k, -k:], images[:, -k:, :k], images[:, -k:, -k:]], axis=1
    )
    diff = np.abs(centre.mean(axis=(1, 2)) - corners.mean(axis=(1, 2))).sum(axis=-1)
    assert diff.mean() > 80
    assert (diff > 30).mean() >= 0.9


def test_eyes_are_dark_spots_in_the_face():
    # Each face has near-black eye rims/pupils in its middle band, whatever the fur colour.
    images = make_cats(np.arange(16), 64, seed=0).astype(np.float64)
    band = images[:, 16:48, 12:52].mean(axis=-1)
    assert (band.min(axis=(1, 2)) < 40).all()
