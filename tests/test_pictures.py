"""The pictures the commands write (catvae_jax/pictures.py): grid and interpolation-row shapes,
output names checked before any work, and pictures written whole or not at all. A stand-in
model draws the interpolation rows (the real one's are tested in tests/e2e/test_outputs.py)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import tiny_config
from PIL import Image

from catvae_jax import data, images, pictures
from catvae_jax.errors import EnvironmentFailure, UserError

PAD = 2  # images.grid's padding


def _cell(row: int, col: int, size: int = 16) -> tuple[slice, slice]:
    """Where grid cell (row, col) of `size`-pixel images lies."""
    y, x = PAD + row * (size + PAD), PAD + col * (size + PAD)
    return slice(y, y + size), slice(x, x + size)


class _LineModel:
    """Stands in for VaeModel: interpolates in pixel space, x_a [N, ...] → [N, steps, ...]."""

    def __init__(self):
        self.config = tiny_config()

    def interpolate(self, x_a: np.ndarray, x_b: np.ndarray, steps: int) -> np.ndarray:
        t = np.linspace(0.0, 1.0, steps, dtype=np.float32)[None, :, None, None, None]
        return (1.0 - t) * x_a[:, None] + t * x_b[:, None]


def test_a_comparison_grid_puts_each_row_of_originals_over_its_reconstructions():
    x = np.random.default_rng(0).random((5, 16, 16, 3)).astype(np.float32)
    grid = pictures.comparison_grid(x, 1.0 - x, ncols=3)  # rows: x0-2, r0-2, x3-4, r3-4
    assert grid.shape == (4 * 18 + PAD, 3 * 18 + PAD, 3) and grid.dtype == np.uint8
    np.testing.assert_array_equal(grid[_cell(0, 2)], images.to_uint8(x[2]))
    np.testing.assert_array_equal(grid[_cell(1, 2)], images.to_uint8(1.0 - x[2]))
    np.testing.assert_array_equal(grid[_cell(3, 1)], images.to_uint8(1.0 - x[4]))
    assert np.all(grid[_cell(2, 2)] == 255) and np.all(grid[_cell(3, 2)] == 255)  # blanks
    assert pictures.comparison_grid(x[:2], x[:2], ncols=8).shape == (2 * 18 + PAD, 2 * 18 + PAD, 3)
    with pytest.raises(UserError, match=r"^ncols must be positive, got 0$"):
        pictures.comparison_grid(x, x, ncols=0)


def test_interpolation_rows_frame_the_path_between_a_seeded_pair():
    model = _LineModel()
    rows = pictures.interpolation_rows(model, pairs=3, steps=4, seed=7)
    assert rows.shape == (3, 6, 16, 16, 3) and rows.dtype == np.float32
    split = images.to_unit(data.load_split(model.config, "validation"))
    order = np.random.default_rng(7).permutation(len(split))[:6]
    np.testing.assert_array_equal(rows[:, 0], split[order[:3]])  # image A
    np.testing.assert_array_equal(rows[:, -1], split[order[3:]])  # image B
    np.testing.assert_allclose(rows[:, 1], rows[:, 0], atol=1e-6)  # the path starts at A
    np.testing.assert_allclose(rows[:, 3], (rows[:, 0] + 2 * rows[:, -1]) / 3, atol=1e-6)
    np.testing.assert_array_equal(pictures.interpolation_rows(model, 3, 4, seed=7), rows)
    assert not np.array_equal(pictures.interpolation_rows(model, 3, 4, seed=8), rows)


@pytest.mark.parametrize(
    ("pairs", "steps", "message"),
    [
        (0, 8, "pairs must be between 1 and 64, got 0"),
        (65, 8, "pairs must be between 1 and 64, got 65"),
        (2, 1, "steps must be between 2 and 256, got 1"),
        (2, 257, "steps must be between 2 and 256, got 257"),
        (9, 8, "9 pairs need 18 validation images, the split has 16"),
    ],
)
def test_interpolation_rows_refuse_bad_counts_in_one_line(pairs, steps, message):
    with pytest.raises(UserError) as refused:
        pictures.interpolation_rows(_LineModel(), pairs=pairs, steps=steps)
    assert str(refused.value) == message


def test_check_out_refuses_an_unknown_suffix_in_one_line(tmp_path):
    with pytest.raises(UserError) as refused:
        pictures.check_out(tmp_path / "grid.gif")
    assert str(refused.value) == (
        f"cannot write {tmp_path / 'grid.gif'}: a picture's name must end in one of "
        ".png, .jpg, .jpeg, .webp"
    )
    for name in ("grid.png", "GRID.JPG", "grid.webp", "grid"):  # any case; no suffix = PNG
        assert pictures.check_out(tmp_path / name) == tmp_path / name
    with pytest.raises(UserError, match=r"it is a folder; give a file name such as .*/grid\.png$"):
        pictures.check_out(tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="it is a file, not a folder"):
        pictures.check_out(tmp_path / "file", folder=True)
    assert pictures.check_out(tmp_path / "new", folder=True) == tmp_path / "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # checking writes nothing


def test_write_image_makes_its_folder_and_writes_the_named_format(tmp_path):
    image = np.random.default_rng(1).integers(0, 256, (10, 12, 3), dtype=np.uint8)
    path = pictures.write_image(tmp_path / "a" / "b" / "pic.WEBP", image)
    with Image.open(path) as written:
        assert written.format == "WEBP"
        np.testing.assert_array_equal(np.asarray(written.convert("RGB")), image)  # lossless
    assert [p.name for p in path.parent.iterdir()] == ["pic.WEBP"]


def test_a_full_disk_is_one_line_and_keeps_the_old_picture(tmp_path, disk_fills_up):
    old = tmp_path / "grid.png"
    old.write_bytes(b"the previous picture")
    with pytest.raises(EnvironmentFailure) as failed:  # the machine's failure: exit 1
        pictures.write_image(old, np.zeros((8, 8, 3), np.uint8))
    assert str(failed.value) == f"cannot write {old}: No space left on device"
    assert old.read_bytes() == b"the previous picture"
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]  # no partial temporary file


def test_a_picture_under_a_file_is_the_users_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError) as failed:  # a mistake in --out: exit 2
        pictures.write_image(tmp_path / "file" / "grid.png", np.zeros((8, 8, 3), np.uint8))
    assert str(failed.value) == f"cannot write {tmp_path / 'file' / 'grid.png'}: File exists"


def test_write_samples_as_one_grid_or_one_file_each(tmp_path):
    samples = np.random.default_rng(2).random((5, 16, 16, 3))
    (grid,) = pictures.write_samples(samples, tmp_path / "grid.png")
    with Image.open(grid) as written:
        assert written.size == (3 * 18 + PAD, 2 * 18 + PAD)  # ⌈√5⌉ = 3 columns, 2 rows
    paths = pictures.write_samples(samples, tmp_path / "each", individual=True)
    assert [p.name for p in paths] == [f"sample_{i:04d}.png" for i in range(5)]
    with Image.open(paths[3]) as written:
        np.testing.assert_array_equal(np.asarray(written), images.to_uint8(samples[3]))
