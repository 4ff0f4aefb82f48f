"""Sampler files (WORKDIR/flow_<step>.npz, gmm_<step>.npz) are as trustworthy as checkpoints:
tied to the parameters they were fitted on, and any damage makes them absent (one warning
line), never a traceback: `load()`, the gmm's refit, every reader command and fit_prior."""

from __future__ import annotations

import io
import shutil
import zipfile

import numpy as np
import pytest
from conftest import run_cli_cases, tiny_config

import catvae_jax
from catvae_jax import after_training, images
from catvae_jax.priors import gmm, stored

KINDS = (
    "truncated",  # half the file: today EOFError / BadZipFile
    "garbage",  # not a zip at all
    "no_digest",  # written before sampler files recorded their checkpoint's digest
    "other_digest",  # fitted on other parameters (another run, another seed)
    "other_z",  # latents of another z_dim: today a shape error deep in jax
    "non_finite",  # a NaN inside
    "absurd",  # a header declaring 2**40 elements: must not be allocated
    "pickled",  # an object array: never unpickled
    "missing_key",  # an array left out: today KeyError
)


@pytest.fixture(scope="module")
def good(trained_workdir, tmp_path_factory):
    """(workdir copy, model, good flow arrays, good gmm arrays), the gmm fitted once."""
    workdir = tmp_path_factory.mktemp("samplers") / "run"
    shutil.copytree(trained_workdir[0], workdir)
    model = catvae_jax.load(workdir)
    assert model.flow is not None  # the file training wrote carries the right digest
    model.fit_gmm()
    arrays = {}
    for name in ("flow", "gmm"):
        with np.load(workdir / f"{name}_{model.step}.npz", allow_pickle=False) as d:
            arrays[name] = {k: d[k] for k in d.files}
    return workdir, model, arrays["flow"], arrays["gmm"]


def _npz(arrays: dict, absurd: str | None = None) -> bytes:
    """An uncompressed .npz of `arrays`; the member `absurd` gets a header that declares
    2**40 float32 elements (and 16 bytes of data)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as archive:
        for name, value in arrays.items():
            member = io.BytesIO()
            if name == absurd:
                header = {"descr": "<f4", "fortran_order": False, "shape": (2**40,)}
                np.lib.format.write_array_header_1_0(member, header)
                member.write(b"\0" * 16)
            else:
                np.lib.format.write_array(member, np.asarray(value), allow_pickle=True)
            archive.writestr(f"{name}.npy", member.getvalue())
    return buf.getvalue()


def damaged(kind: str, arrays: dict) -> bytes:
    """The bytes of a sampler file (its good `arrays`) with damage `kind`."""
    arrays = dict(arrays)
    first = "loc" if "loc" in arrays else "means"  # an array whose last axis is z
    if kind == "truncated":
        good = _npz(arrays)
        return good[: len(good) // 2]
    if kind == "garbage":
        return b"this is not an npz file\n" * 10
    if kind == "no_digest":
        del arrays[stored.DIGEST_KEY]
    elif kind == "other_digest":
        arrays[stored.DIGEST_KEY] = np.array("0" * 64)
    elif kind == "other_z":
        value = arrays[first]
        arrays[first] = np.concatenate([value, value[..., :2]], axis=-1)
    elif kind == "non_finite":
        value = arrays[first].copy()
        value.flat[0] = np.nan
        arrays[first] = value
    elif kind == "pickled":
        arrays[first] = np.array([{"x": 1}], dtype=object)
    elif kind == "missing_key":
        del arrays[first]
    return _npz(arrays, absurd=first if kind == "absurd" else None)


def _warnings(err: str, path) -> list[str]:
    return [x for x in err.splitlines() if x.startswith("warning: ignoring") and str(path) in x]


@pytest.mark.parametrize("kind", KINDS)
def test_load_treats_a_damaged_flow_as_absent(good, kind, capsys):
    workdir, model, flow_arrays, gmm_arrays = good
    path = workdir / f"flow_{model.step}.npz"
    path.write_bytes(damaged(kind, flow_arrays))
    (workdir / f"gmm_{model.step}.npz").write_bytes(_npz(gmm_arrays))
    capsys.readouterr()
    loaded = catvae_jax.load(workdir)
    err = capsys.readouterr().err
    assert loaded.flow is None and "Traceback" not in err
    assert len(_warnings(err, path)) == 1 and len(err.strip().splitlines()) == 1, err
    assert loaded.resolve_sampler("auto") == "gmm"  # the next sampler in auto's order
    if kind == "other_z":  # the mixture of the right size draws the samples
        assert loaded.generate(2, seed=0).shape == (2, *loaded.image_shape)


@pytest.mark.parametrize("kind", [*KINDS, "singular"])
def test_a_damaged_gmm_is_refitted_and_replaced(good, kind, capsys):
    workdir, model, _, gmm_arrays = good
    path = workdir / f"gmm_{model.step}.npz"
    if kind == "singular":  # today LinAlgError in cholesky
        gmm_arrays = {**gmm_arrays, "covariances": np.zeros_like(gmm_arrays["covariances"])}
        path.write_bytes(_npz(gmm_arrays))
    else:
        path.write_bytes(damaged(kind, gmm_arrays))
    capsys.readouterr()
    model.gmm = None  # as a fresh load(): read from the file on first use
    out = model.generate(2, seed=0, sampler="gmm")
    err = capsys.readouterr().err
    assert out.shape == (2, *model.image_shape) and len(_warnings(err, path)) == 1, err
    assert "refitting it" in err
    refitted = gmm.GaussianMixture.read(path, model.z_dim, model.params_sha256)
    np.testing.assert_array_equal(refitted.means, gmm_arrays["means"])  # the same fit again


def test_an_old_file_without_a_digest_says_so(good, capsys):
    workdir, model, flow_arrays, _ = good
    path = workdir / f"flow_{model.step}.npz"
    path.write_bytes(damaged("no_digest", flow_arrays))
    assert catvae_jax.load(workdir).flow is None
    line = capsys.readouterr().err.strip()
    assert line == (
        f"warning: ignoring the learned prior {path}: it was written before sampler files "
        f"recorded their checkpoint's digest; refit it with python -m catvae_jax.fit_prior "
        f"--workdir {workdir}"
    )


def test_an_absurd_header_is_refused_before_reading(tmp_path):
    path = tmp_path / "f.npz"
    path.write_bytes(_npz({"loc": np.zeros(3, np.float32)}, absurd="loc"))
    with pytest.raises(stored.Unusable, match=r"'loc' declares shape \(1099511627776,\)"):
        stored.read_npz(path)


def _copy(good, tmp_path, name: str, flow_kind: str | None = None, gmm_kind: str | None = None):
    workdir, model, flow_arrays, gmm_arrays = good
    dst = tmp_path / name
    shutil.copytree(workdir, dst)
    for kind, arrays, prefix in ((flow_kind, flow_arrays, "flow"), (gmm_kind, gmm_arrays, "gmm")):
        data = damaged(kind, arrays) if kind else _npz(arrays)
        (dst / f"{prefix}_{model.step}.npz").write_bytes(data)
    return dst


def test_reader_commands_ignore_damaged_sampler_files(good, tmp_path):
    """Each reader command meets some kinds of damage (together they meet every kind): one
    warning line per damaged file, the next sampler (or a refit), exit 0, no traceback."""
    step = good[1].step
    cases = [  # (command, flags, flow damage, gmm damage)
        ("catvae_jax.generate", ["--n", "2"], "truncated", "absurd"),
        ("catvae_jax.generate", ["--n", "2", "--sampler", "gmm"], None, "other_z"),
        ("catvae_jax.generate", ["--n", "2", "--sampler", "gmm"], None, "garbage"),
        ("catvae_jax.interpolate", ["--pairs", "1", "--steps", "2"], "other_digest", None),
        ("catvae_jax.interpolate", ["--pairs", "1", "--steps", "2"], "pickled", None),
        (
            "catvae_jax.evaluate",
            ["--nolikelihood", "--novgg", "--num_samples", "8", "--split", "validation"],
            "non_finite",
            "missing_key",
        ),
        ("catvae_jax.fit_prior", ["--step", str(step)], "absurd", None),
        ("catvae_jax.fit_prior", ["--step", str(step)], "no_digest", None),
    ]
    runs, workdirs = [], []
    for i, (command, flags, flow_kind, gmm_kind) in enumerate(cases):
        workdir = _copy(good, tmp_path, f"c{i}", flow_kind, gmm_kind)
        workdirs.append(workdir)
        out = ["--out", str(tmp_path / f"out{i}.png")] if "fit_prior" not in command else []
        if "evaluate" in command:
            out = ["--out", str(tmp_path / f"eval{i}.json")]
        runs.append((command, "--workdir", str(workdir), *flags, *out))
    for (command, _, flow_kind, gmm_kind), workdir, proc in zip(
        cases,
        workdirs,
        run_cli_cases(runs, measured=False, preload=("sklearn.mixture",)),
        strict=True,
    ):
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, (command, proc.stderr)
        damaged_files = [
            f"{p}_{step}.npz" for p, k in (("flow", flow_kind), ("gmm", gmm_kind)) if k
        ]
        for name in damaged_files:
            assert len(_warnings(proc.stderr, workdir / name)) == 1, (command, proc.stderr)
        if "fit_prior" in command:  # the repair tool replaced the damaged file
            assert f"wrote {workdir}/flow_{step}.npz" in proc.stdout
            model = catvae_jax.load(workdir)
            assert model.flow is not None and model.flow.params_sha256 == model.params_sha256
        if gmm_kind and command != "catvae_jax.interpolate":
            model = catvae_jax.load(workdir)
            gmm.GaussianMixture.read(workdir / f"gmm_{step}.npz", 8, model.params_sha256)
    assert (tmp_path / "out1.png").exists() and (tmp_path / "eval5.json").exists()


def test_an_explicit_flow_that_is_damaged_is_one_error_line(good, tmp_path):
    workdir = _copy(good, tmp_path, "f", flow_kind="truncated")
    (proc,) = run_cli_cases(
        [("catvae_jax.generate", "--workdir", workdir, "--n", "2", "--sampler", "flow")],
        measured=False,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 2, proc.stderr
    assert lines[0].startswith("warning: ignoring the learned prior")
    assert lines[1].startswith("error: no learned prior for checkpoint")


def _train(workdir, seed: int) -> None:
    config = tiny_config()
    config.seed, config.max_steps, config.flow_prior = seed, 4, False
    catvae_jax.train_and_evaluate(config, str(workdir))


def test_a_workdir_retrained_with_another_seed_does_not_reuse_the_old_gmm(tmp_path, capsys):
    """Retrained in place (checkpoints deleted, another seed): the new run fits its own gmm and
    draws its own pictures (they were the old run's: same step); then the old run's gmm_4.npz
    put back (as a server of the old model would write it): the new model refits its own."""
    workdir = tmp_path / "w"
    _train(workdir, seed=0)  # samples.png draws from the gmm: gmm_4.npz is cached
    path = workdir / "gmm_4.npz"
    old_bytes = path.read_bytes()
    old = gmm.GaussianMixture.read(path)
    shutil.rmtree(workdir / "checkpoints")
    _train(workdir, seed=1)
    model = catvae_jax.load(workdir)
    for picture in after_training.PICTURES:  # drawn again, not the old run's of step 4
        assert images.png_text(workdir / picture)[after_training.PARAMS_KEY] == model.params_sha256
    new = gmm.GaussianMixture.read(path, model.z_dim, model.params_sha256)
    assert new.params_sha256 != old.params_sha256
    assert not np.allclose(new.means, old.means)
    path.write_bytes(old_bytes)
    capsys.readouterr()
    refit = model.fit_gmm()
    assert "fitted on other parameters" in capsys.readouterr().err
    np.testing.assert_array_equal(refit.means, new.means)
    assert gmm.GaussianMixture.read(path).params_sha256 == model.params_sha256


def test_sampler_files_of_rotated_checkpoints_are_removed(trained_workdir, tmp_path):
    """A resumed run deletes the sampler files of the checkpoints it rotates away and of the
    steps it writes anew; those of kept checkpoints stay."""
    workdir = tmp_path / "w"
    shutil.copytree(trained_workdir[0], workdir)
    kept = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    for name in ("flow_4.npz", "gmm_4.npz", "flow_48.npz", "gmm_60.npz"):
        (workdir / name).write_bytes(b"stale")
    config = tiny_config()
    config.num_epochs, config.flow_prior = 5, False  # 36 -> 60, saving 48 and 60
    catvae_jax.train_and_evaluate(config, str(workdir))
    now = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    names = {p.name for p in workdir.glob("*_*.npz")}
    assert names <= {f"{p}_{s}.npz" for p in ("flow", "gmm") for s in now}, (names, now)
    for step in set(kept) & set(now):  # a kept checkpoint keeps its flow
        assert (trained_workdir[0] / f"flow_{step}.npz").exists() <= (f"flow_{step}.npz" in names)
    assert now[-1] == 60 and (workdir / "gmm_60.npz").read_bytes() != b"stale"  # refitted
