"""Outputs of a trained model: generate / reconstruct / interpolate, the GMM sampler, their CLIs."""

from __future__ import annotations

import json
import math
import os
import shutil
import stat
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO, bomb_png, run_cli, run_cli_cases, subprocess_env, tiny_config
from PIL import Image

import catvae_jax
from catvae_jax import atomic, data, images, pictures, sharing
from catvae_jax.data import decode
from catvae_jax.errors import UserError
from catvae_jax.model.ssim import ssim
from catvae_jax.priors import gmm


@pytest.fixture(scope="module")
def model(trained_workdir):
    return catvae_jax.load(trained_workdir[0])


@pytest.fixture
def workdir_copy(trained_workdir, tmp_path):
    """A private copy of the session's trained workdir (the gmm cache and PNGs land there)."""
    dst = tmp_path / "run"
    shutil.copytree(trained_workdir[0], dst)
    return dst


def _one_error_line(proc) -> str:
    """The single `error:` line of a failed CLI; nothing else that looks like a failure."""
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr
    return errors[0]


# --- library API ---------------------------------------------------------------------------------


def test_generate_same_seed_same_images_other_seed_other_images(model):
    a = model.generate(6, seed=3)
    assert a.shape == (6, 16, 16, 3) and a.dtype == np.float32
    assert a.min() >= 0.0 and a.max() <= 1.0
    np.testing.assert_array_equal(a, model.generate(6, seed=3))
    assert np.abs(a - model.generate(6, seed=4)).max() > 0.05
    assert np.abs(a - model.generate(6, seed=3, temperature=0.3)).max() > 1e-3
    model.generate(7, seed=3)  # other calls in between change nothing: no hidden state
    np.testing.assert_array_equal(a, model.generate(6, seed=3))


@pytest.mark.parametrize(
    "kwargs,named",
    [
        ({"n": 0}, "n must be"),
        ({"n": 10**6}, "n must be"),
        ({"n": 4, "temperature": 0.0}, "temperature"),
        ({"n": 4, "temperature": -1.0}, "temperature"),
        ({"n": 4, "sampler": "vampire"}, "sampler"),
    ],
)
def test_generate_rejects_bad_arguments(model, kwargs, named):
    with pytest.raises(UserError, match=named):
        model.generate(**kwargs)


def test_reconstruct_and_interpolate(model):
    x = data.load_split(model.config, "validation")[:2].astype(np.float32) / 255.0
    recon = model.reconstruct(x)
    assert recon.shape == x.shape
    path = model.interpolate(x[:1], x[1:], steps=5)
    assert path.shape == (1, 5, 16, 16, 3)
    np.testing.assert_allclose(path[0, 0], recon[0], atol=1e-5)  # the ends are reconstructions
    np.testing.assert_allclose(path[0, -1], recon[1], atol=1e-5)
    mu, _ = model.encode(x)
    mid = model.decode(np.stack([mu.mean(0), mu[0]]))[0]  # t = 0.5 decodes the mean of the mus
    np.testing.assert_allclose(path[0, 2], mid, atol=1e-5)
    single = model.interpolate(x[0], x[1], steps=5)  # HWC in, [steps, H, W, C] out
    np.testing.assert_array_equal(single, path[0])
    with pytest.raises(UserError, match="steps"):
        model.interpolate(x[:1], x[1:], steps=1)
    with pytest.raises(UserError, match="images must be"):
        model.interpolate(x[:1, :8], x[1:, :8], steps=4)


@pytest.fixture(scope="module")
def well_trained(tmp_path_factory):
    """The tiny model of conftest trained longer with a lighter KL (β = 0.1): 192 steps. No
    learned prior is fitted at the end: the test reads the encoder and decoder only."""
    from catvae_jax.after_training import train_and_evaluate

    config = tiny_config()
    config.num_epochs = 16
    config.loss.beta = 0.1
    config.flow_prior = False
    workdir = tmp_path_factory.mktemp("well") / "run"
    train_and_evaluate(config, str(workdir))
    return catvae_jax.load(workdir)


def test_decoded_means_beat_the_mean_image(well_trained):
    x = data.load_split(well_trained.config, "validation").astype(np.float32) / 255.0
    mean_image = data.load_split(well_trained.config, "train").astype(np.float32).mean(0) / 255.0
    mu, _ = well_trained.encode(x)
    ours = np.asarray(ssim(jnp.asarray(x), jnp.asarray(well_trained.decode(mu))))
    baseline = np.asarray(ssim(jnp.asarray(x), jnp.asarray(np.broadcast_to(mean_image, x.shape))))
    assert ours.mean() > baseline.mean() + 0.05, (ours.mean(), baseline.mean())
    assert (ours > baseline).mean() > 0.5


def test_interpolation_rows_frame_each_path_with_its_images(model):
    from catvae_jax.pictures import interpolation_rows

    rows = interpolation_rows(model, pairs=2, steps=4, seed=1)
    assert rows.shape == (2, 6, 16, 16, 3)
    val = data.load_split(model.config, "validation").astype(np.float32) / 255.0
    order = np.random.default_rng(1).permutation(len(val))
    np.testing.assert_array_equal(rows[:, 0], val[order[:2]])
    np.testing.assert_array_equal(rows[:, -1], val[order[2:4]])
    with pytest.raises(UserError, match="need 40 validation images"):
        interpolation_rows(model, pairs=20)


def test_read_images_policy_and_comparison_grid(tmp_path):
    from catvae_jax.pictures import comparison_grid, image_files, read_images

    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 255
    rgba[0, 1] = 0  # a transparent pixel: on white, as training composites it
    Image.fromarray(rgba).save(tmp_path / "a.png")
    Image.fromarray(np.full((16, 16), 7, np.uint8)).save(tmp_path / "b.jpg", quality=100)
    noise = np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "c.png")
    (tmp_path / "d.png").write_text("broken")
    (tmp_path / "e.PNG").write_bytes(bomb_png())  # 30000×30000: skipped, never decoded
    (tmp_path / "f.png").write_bytes(bomb_png(8000, 8000))  # 64 M: over the one limit too
    files = image_files([str(tmp_path)])
    assert [f.name for f in files] == ["a.png", "b.jpg", "c.png", "d.png", "e.PNG", "f.png"]
    with pytest.raises(UserError, match=r"c.png is 48×32 pixels .* --resize"):
        read_images(files, 16)
    x, kept, skipped = read_images(files, 16, resize=True)
    assert x.shape == (3, 16, 16, 3) and x.dtype == np.float32
    assert [f.name for f in kept] == ["a.png", "b.jpg", "c.png"] and "d.png" in skipped[0]
    assert "e.PNG (too large: 900000000 pixels is over the limit" in skipped[1]
    assert "f.png (too large: 64000000 pixels is over the limit" in skipped[2]
    with pytest.raises(decode.TooLarge):  # the same reader and limit as the data pipeline
        decode.decode_image(bomb_png(), 16)
    np.testing.assert_allclose(x[0, 0, 0], [200 / 255, 0, 0])  # RGBA → RGB, grey → 3 channels
    np.testing.assert_allclose(x[0, 0, 1], [1, 1, 1])
    # A resized image has exactly the pixels the training data pipeline gives the same file.
    np.testing.assert_array_equal(
        images.to_uint8(x[2]), decode.decode_image((tmp_path / "c.png").read_bytes(), 16)
    )
    assert np.abs(x[1] - 7 / 255).max() < 2 / 255
    with pytest.raises(UserError, match="no such file"):
        image_files([str(tmp_path / "nope")])
    grid = comparison_grid(x, 1.0 - x, ncols=2)  # 2 columns: originals row, recon row, twice
    assert grid.shape == (4 * 18 + 2, 2 * 18 + 2, 3)
    np.testing.assert_array_equal(grid[20:36, 2:18], images.to_uint8(1.0 - x[0]))
    assert np.all(grid[38:54, 20:36] == 255)  # the missing third original is blank


# --- GMM sampler -------------------------------------------------------------------------------


def test_sample_latents_follow_the_mixture():
    weights = np.array([0.25, 0.75], np.float32)
    means = np.array([[-4.0, 0.0], [4.0, 1.0]], np.float32)
    covs = np.array([[[1.0, 0.0], [0.0, 1.0]], [[0.5, 0.3], [0.3, 0.4]]], np.float32)
    mixture = gmm.GaussianMixture(weights, means, covs, num_images=0, max_images=0)
    z = np.asarray(gmm.sample_latents(jax.random.key(0), *mixture.arrays(), 40_000, 1.0))
    second = z[:, 0] > 0
    assert abs(second.mean() - 0.75) < 0.01
    np.testing.assert_allclose(z[second].mean(0), means[1], atol=0.03)
    np.testing.assert_allclose(np.cov(z[second].T), covs[1], atol=0.03)
    np.testing.assert_allclose(np.cov(z[~second].T), covs[0], atol=0.05)
    cold = np.asarray(gmm.sample_latents(jax.random.key(0), *mixture.arrays(), 40_000, 0.5))
    np.testing.assert_allclose(np.cov(cold[cold[:, 0] > 0].T), 0.25 * covs[1], atol=0.02)


def test_gmm_is_fitted_once_cached_and_sampled(workdir_copy, monkeypatch):
    model = catvae_jax.load(workdir_copy)
    samples = model.generate(8, seed=0, sampler="gmm")
    assert samples.shape == (8, 16, 16, 3)
    cache = workdir_copy / f"gmm_{model.step}.npz"
    assert cache.exists()
    mixture = model.gmm
    # the config's 200 components, capped at one per 20 of the run's 96 training latents
    assert mixture.n_components == 4 and mixture.num_images == 96
    np.testing.assert_allclose(mixture.weights.sum(), 1.0, atol=1e-5)
    # the mixture's mean is the mean of the training latents it was fitted to
    latents = model.encode_means(data.load_split(model.config, "train"))
    np.testing.assert_allclose(mixture.weights @ mixture.means, latents.mean(0), atol=1e-3)
    assert not np.allclose(samples, model.generate(8, seed=0, sampler="prior"))
    assert not np.allclose(samples, model.generate(8, seed=1, sampler="gmm"))

    def no_fit(*args, **kwargs):
        raise AssertionError("the cached mixture should have been used")

    monkeypatch.setattr(gmm, "fit", no_fit)
    again = catvae_jax.load(workdir_copy)  # a new process would read the cache the same way
    np.testing.assert_array_equal(again.generate(8, seed=0, sampler="gmm"), samples)
    monkeypatch.undo()
    assert again.fit_gmm(n_components=3).n_components == 3  # another K: refitted, re-cached
    assert gmm.GaussianMixture.read(cache).n_components == 3


def test_the_runs_config_sets_the_mixtures_components(workdir_copy, monkeypatch):
    """config.gmm_components is K when no caller names one: fitted, cached, and read again
    without a refit (the run's config.json is where readers find it)."""
    saved = json.loads((workdir_copy / "config.json").read_text())
    (workdir_copy / "config.json").write_text(json.dumps({**saved, "gmm_components": 2}))
    model = catvae_jax.load(workdir_copy)
    assert model.config.gmm_components == 2 and model.fit_gmm().n_components == 2
    cache = workdir_copy / f"gmm_{model.step}.npz"
    assert gmm.GaussianMixture.read(cache).n_components == 2
    monkeypatch.setattr(gmm, "fit", lambda *a, **kw: pytest.fail("the cached mixture is K = 2"))
    assert catvae_jax.load(workdir_copy).fit_gmm().n_components == 2
    assert sharing._cached_mixture(model).n_components == 2  # what an export ships


# --- CLIs --------------------------------------------------------------------------------------


def test_generate_cli_writes_the_api_grid(trained_workdir, model, tmp_path):
    out = tmp_path / "grid.png"
    proc = run_cli(
        "catvae_jax.generate", "--workdir", str(trained_workdir[0]), "--n", "10", "--seed", "5",
        "--out", str(out), measured=False,  # its lines: the other generate runs'
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "wrote 10 samples" in proc.stdout
    got = np.asarray(Image.open(out))
    want = images.grid(model.generate(10, seed=5), ncols=math.ceil(math.sqrt(10)))
    assert got.shape == want.shape == (3 * 18 + 2, 4 * 18 + 2, 3)
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1


def test_generate_cli_individual_gmm(workdir_copy, tmp_path):
    out = tmp_path / "samples"
    proc = run_cli(
        "catvae_jax.generate", "--workdir", str(workdir_copy), "--n", "5", "--sampler", "gmm",
        "--gmm_components", "3", "--individual", "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()  # the first gmm fit says what it fits, its time and cache
    assert (
        "fitting a Gaussian mixture of up to 3 components to the latents of up to 10000" in lines[0]
    )
    assert " gmm of 3 components fitted to 96 latents in " in lines[1] and "cached in " in lines[1]
    assert lines[2].startswith("wrote 5 samples")
    files = sorted(out.iterdir())
    assert [f.name for f in files] == [f"sample_{i:04d}.png" for i in range(5)]
    assert all(Image.open(f).size == (16, 16) for f in files)
    assert gmm.GaussianMixture.read(next(workdir_copy.glob("gmm_*.npz"))).n_components == 3


def test_two_readers_fitting_one_cache_at_once_both_succeed(workdir_copy, tmp_path):
    """Two generate processes fit and cache the same mixture at the same time: both exit 0,
    the cache is one complete file and no temporary file is left (issue 15: readers' caches)."""
    cmd = [sys.executable, "-m", "catvae_jax.generate", "--workdir", str(workdir_copy)]
    args = ["--n", "4", "--sampler", "gmm", "--out"]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    pipes["env"] = subprocess_env(measured=False)  # the gmm lines: test_generate_cli_individual_gmm
    procs = [
        subprocess.Popen([*cmd, *args, str(tmp_path / f"g{i}.png")], cwd=REPO, **pipes)
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-2000:]
    (cache,) = workdir_copy.glob("gmm_*.npz")
    assert gmm.GaussianMixture.read(cache).num_images == 96
    assert not [f for f in workdir_copy.iterdir() if f.name.endswith(".tmp")]
    same = [np.asarray(Image.open(tmp_path / f"g{i}.png")) for i in range(2)]
    np.testing.assert_array_equal(*same)  # both fitted the same mixture from the same data


def test_concurrent_atomic_writes_to_one_path_all_succeed(tmp_path):
    path = tmp_path / "cache.bin"
    payloads = [bytes([i]) * 200_000 for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda b: atomic.write_atomic(path, b), payloads * 4))
    assert path.read_bytes() in payloads
    assert [f.name for f in tmp_path.iterdir()] == ["cache.bin"]


def test_pictures_are_written_in_the_format_their_name_says(tmp_path):
    samples = np.random.default_rng(0).random((4, 16, 16, 3))
    for suffix, fmt in [*pictures.OUTPUT_FORMATS.items(), ("", "PNG")]:
        (path,) = pictures.write_samples(samples, tmp_path / f"grid{suffix.upper()}")
        with Image.open(path) as image:
            assert (image.format, image.size) == (fmt, (38, 38))
            if fmt != "JPEG":  # lossless: the grid's pixels come back exactly
                grid = images.to_uint8(images.grid(samples, ncols=2))
                assert np.array_equal(np.asarray(image.convert("RGB")), grid)


def test_a_failed_atomic_write_leaves_nothing_behind(tmp_path):
    (tmp_path / "taken").mkdir()  # the rename onto a folder fails after the temp file is written
    with pytest.raises(OSError):
        atomic.write_atomic(tmp_path / "taken", b"data")
    assert [f.name for f in tmp_path.iterdir()] == ["taken"]


def test_reconstruct_cli_folder_with_bad_files_and_resize(trained_workdir, model, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    x = data.load_split(model.config, "validation")[:4]
    for i, image in enumerate(x):
        Image.fromarray(image).save(folder / f"{i}.png")
    (folder / "broken.png").write_bytes(b"not a png")
    (folder / "notes.txt").write_text("ignored: not an image suffix")
    Image.fromarray(np.zeros((40, 30, 3), np.uint8)).save(folder / "z_big.png")
    (folder / "bomb.png").write_bytes(bomb_png())  # 30000×30000 declared: skipped and listed
    out = tmp_path / "recon.png"
    proc = run_cli(
        "catvae_jax.reconstruct", "--workdir", str(trained_workdir[0]), "--images", str(folder),
        "--resize", "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "skipped: " in proc.stderr and "broken.png" in proc.stderr
    assert "bomb.png (too large: 900000000 pixels is over the limit" in proc.stderr
    assert "skipped 2 unreadable files" in proc.stdout
    assert "warning: " in proc.stderr and "z_big.png is 30×40" in proc.stderr
    assert "wrote 5 reconstructions" in proc.stdout
    got = np.asarray(Image.open(out))
    assert got.shape == (2 * 18 + 2, 5 * 18 + 2, 3)  # originals above reconstructions
    np.testing.assert_array_equal(got[2:18, 2:18], x[0])
    recon = images.to_uint8(model.reconstruct(x[:1].astype(np.float32) / 255.0))[0]
    assert np.abs(got[20:36, 2:18].astype(int) - recon.astype(int)).max() <= 1


def test_interpolate_cli(trained_workdir, tmp_path):
    out = tmp_path / "interp.png"
    proc = run_cli(
        "catvae_jax.interpolate", "--workdir", str(trained_workdir[0]), "--pairs", "2",
        "--steps", "4", "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert np.asarray(Image.open(out)).shape == (2 * 18 + 2, 6 * 18 + 2, 3)


GENERATE_ERRORS = [
    ("n", ["--n", "100000"], "n must be between 1 and 4096, got 100000"),
    ("temperature", ["--temperature", "0"], "temperature must be in (0, 10]"),
    ("no checkpoint", [], "no checkpoint in"),
    ("other config", [], "does not match its config"),
]


BAD_OUTS = [  # (case, command, --out under the fixture's outs/ folder)
    ("gif", "generate", "grid.gif"),
    ("bmp", "interpolate", "interp.bmp"),
    ("folder", "reconstruct", "."),
    ("pipe", "generate", "pipe"),  # a FIFO (as /dev/null is a device): never replaced
]


@pytest.fixture(scope="module")
def cli_errors(trained_workdir, tmp_path_factory) -> dict:
    """generate's and reconstruct's error-path runs, in one batch (conftest.run_cli_cases)."""
    import json

    tmp, trained = tmp_path_factory.mktemp("output_errors"), trained_workdir[0]
    empty, other = tmp / "empty", tmp / "other"  # no checkpoint; a config that does not match
    empty.mkdir()
    shutil.copy(trained / "config.json", empty / "config.json")
    shutil.copytree(trained, other)
    config = json.loads((other / "config.json").read_text())
    config["model"]["z_dim"] = 12
    (other / "config.json").write_text(json.dumps(config))
    workdirs = {"no checkpoint": empty, "other config": other}
    cases = {
        name: ("catvae_jax.generate", "--workdir", workdirs.get(name, trained), *args)
        for name, args, _ in GENERATE_ERRORS
    }
    big = tmp / "big.png"
    Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(big)
    for name, image in (("too big", big), ("missing", tmp / "missing.png")):
        cases[name] = ("catvae_jax.reconstruct", "--workdir", trained, "--images", image)
    outs = tmp / "outs"  # bad --out values: refused before any work, nothing written
    outs.mkdir()
    os.mkfifo(outs / "pipe")
    for name, command, out in BAD_OUTS:
        extra = ["--images", big] if command == "reconstruct" else []
        cases[name] = (f"catvae_jax.{command}", "--workdir", trained, *extra, "--out", outs / out)
    return dict(zip(cases, run_cli_cases(list(cases.values())), strict=True)) | {"outs": outs}


@pytest.mark.parametrize("name,args,named", GENERATE_ERRORS, ids=[c[0] for c in GENERATE_ERRORS])
def test_generate_cli_errors(cli_errors, name, args, named):
    assert named in _one_error_line(cli_errors[name])


def test_a_bad_out_is_one_line_and_writes_nothing(cli_errors):
    for name in ("gif", "bmp"):
        assert "a picture's name must end in one of .png, .jpg" in _one_error_line(cli_errors[name])
    assert "it is a folder; give a file name" in _one_error_line(cli_errors["folder"])
    assert "it is not a regular file (a device, pipe" in _one_error_line(cli_errors["pipe"])
    pipe = cli_errors["outs"] / "pipe"
    assert list(cli_errors["outs"].iterdir()) == [pipe]  # no picture, no temporary file
    assert stat.S_ISFIFO(os.stat(pipe).st_mode)


def test_reconstruct_cli_refuses_wrong_size_and_missing_files(cli_errors):
    line = _one_error_line(cli_errors["too big"])
    assert "is 24×20 pixels but the model takes 16×16" in line and "--resize" in line
    assert "no such file or folder" in _one_error_line(cli_errors["missing"])
