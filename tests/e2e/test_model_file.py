"""A trained model as one file (`export`, catvae_jax/model_file.py): the round trip, every reader
that takes a workdir takes the file, and a damaged or altered file is refused in one line."""

import hashlib
import io
import json
import shutil
import zipfile

import numpy as np
import pytest
from conftest import run_cli_cases
from PIL import Image

import catvae_jax
from catvae_jax import images, model_file, sharing
from catvae_jax.errors import UserError
from catvae_jax.images import to_uint8
from catvae_jax.priors import choice


@pytest.fixture(scope="module")
def exported(trained_workdir, tmp_path_factory):
    """The tiny run's best checkpoint exported as a .catvae zip (float32)."""
    out = tmp_path_factory.mktemp("export") / "tiny.catvae"
    done = sharing.export(trained_workdir[0], out)
    return out, done


def test_export_load_round_trip_gives_the_same_samples(trained_workdir, exported):
    path, done = exported
    workdir_model = catvae_jax.load(trained_workdir[0])
    file_model = catvae_jax.load(path)
    assert file_model.step == workdir_model.step == done.step
    for sampler in ("flow", "prior"):
        a = workdir_model.generate(6, seed=11, sampler=sampler)
        b = file_model.generate(6, seed=11, sampler=sampler)
        np.testing.assert_array_equal(a, b)
    x = np.random.default_rng(0).random((2, 16, 16, 3), np.float32)
    np.testing.assert_array_equal(workdir_model.reconstruct(x), file_model.reconstruct(x))
    assert file_model.bpd_range == workdir_model.bpd_range is not None
    assert file_model.workdir is None  # a model file is read-only: nothing is cached into it
    # No measured sampler choice in the workdir: none in the file, auto in the fixed order.
    assert "sampler_choice.json" not in done.members and file_model.choice is None
    assert file_model.resolve_sampler() == done.sampler == "flow"


def test_the_archive_holds_safetensors_a_manifest_and_a_model_card(exported):
    path, done = exported
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        files = {n: archive.read(n) for n in names}
    assert set(done.members) == names
    assert {"config.json", "model.safetensors", "prior.safetensors", "README.md"} <= names
    assert {"samples.png", "bpd_range.json", "catvae.json", "checksums.sha256"} <= names
    for line in files["checksums.sha256"].decode().splitlines():  # sha256sum -c format
        digest, name = line.split("  ")
        assert hashlib.sha256(files[name]).hexdigest() == digest
    from safetensors.numpy import load  # the parameters read without catvae_jax or pickle

    params = load(files["model.safetensors"])
    assert params["to_stats/kernel"].dtype == np.float32 and len(params) > 10
    card = files["README.md"].decode()
    assert "synthetic_cats" in card and "![64 samples" in card and "## Evaluation" in card
    assert "bits/dim" in card and "python -m catvae_jax.generate --workdir tiny.catvae" in card
    assert "uses the **flow** sampler: no measured choice was stored" in card
    assert Image.open(io.BytesIO(files["samples.png"])).size[0] > 16 * 8


def test_export_is_deterministic_and_float16_folder_loads(trained_workdir, exported, tmp_path):
    path, _ = exported
    again = sharing.export(trained_workdir[0], tmp_path / path.name)
    assert again.path.read_bytes() == path.read_bytes()  # fixed member times: the same bytes
    sharing.export(trained_workdir[0], tmp_path / "hf", dtype="float16")
    assert (tmp_path / "hf" / "config.json").is_file()  # the Hugging Face model layout
    full_params = zipfile.ZipFile(path).getinfo("model.safetensors").file_size
    assert (tmp_path / "hf" / "model.safetensors").stat().st_size < 0.55 * full_params
    a = catvae_jax.load(path).generate(8, seed=1)
    b = catvae_jax.load(tmp_path / "hf").generate(8, seed=1)
    assert np.abs(a - b).max() < 0.01  # float16 storage: the same pictures to the eye


def test_the_samplers_are_stored_in_the_file_dtype_and_drawn_as_stored(trained_workdir, tmp_path):
    """A 200-component mixture over 128 latents is 13 MB of float32 covariances: a model file
    stores each one's principal directions above its floor instead (a component fitted to n
    latents has n − 1), and the flow's couplings, both float16 in a float16 file. The export's
    samples are drawn from them as stored."""
    from safetensors.numpy import load

    workdir = tmp_path / "run"
    shutil.copytree(trained_workdir[0], workdir)
    model = catvae_jax.load(workdir)
    model.fit_gmm()  # the run's K (200; 4 on its 96 latents), cached for the export
    z = model.z_dim
    for dtype, tol in (("float32", 1e-5), ("float16", 2e-3)):
        out = tmp_path / f"{dtype}.catvae"
        done = sharing.export(workdir, out, dtype=dtype)
        with zipfile.ZipFile(out) as archive:
            mixture = load(archive.read("gmm.safetensors"))
            prior = load(archive.read("prior.safetensors"))
            png = archive.read("samples.png")
        assert "covariances" not in mixture and mixture["factors"].dtype == np.dtype(dtype)
        assert mixture["factors"].shape == (int(mixture["ranks"].sum()), z)
        assert mixture["ranks"].sum() <= 96 - 4  # n − 1 directions per component
        assert prior["w0_0"].dtype == prior["b2_2"].dtype == np.dtype(dtype)
        assert prior["loc"].dtype == np.float32
        loaded = catvae_jax.load(out)
        np.testing.assert_allclose(loaded.gmm.covariances, model.gmm.covariances, atol=tol)
        assert loaded.resolve_sampler("gmm") == "gmm"
        for sampler in ("gmm", "flow"):
            a = model.generate(8, seed=3, sampler=sampler)
            b = loaded.generate(8, seed=3, sampler=sampler)
            np.testing.assert_allclose(a, b, atol=1e-4 if dtype == "float32" else 0.02)
        seed = int(loaded.config.seed)
        drawn = loaded.generate(sharing.NUM_SAMPLES, seed=seed, sampler=done.sampler)
        assert png == images.png_bytes(images.grid(drawn, ncols=8))  # as a reader loads it


MEASURED = {  # a sampler choice as the choose_sampler command records it (figures made up)
    "choice": "prior",  # not the fixed order's first (the flow): a file that follows it shows
    "rule": "lowest mean rank (a test's figures)",
    "split": "validation",
    "n": 16,
    "figures": {
        "flow": {"kid_alexnet": 0.5, "kid_vgg16": 0.5, "pixels": 0.5},
        "prior": {"kid_alexnet": 0.25, "kid_vgg16": 0.125, "pixels": 0.0625},
    },
    "ranks": {"flow": {"mean": 2.0}, "prior": {"mean": 1.0}},
}


def _card(path) -> str:
    if path.is_dir():
        return (path / "README.md").read_text()
    return zipfile.ZipFile(path).read("README.md").decode()


@pytest.fixture(scope="module")
def chosen(trained_workdir, tmp_path_factory):
    """(workdir, its best model, the export): a copy of the tiny run with a sampler choice for
    its best checkpoint (MEASURED, written directly instead of measured), exported."""
    workdir = tmp_path_factory.mktemp("chosen") / "run"
    shutil.copytree(trained_workdir[0], workdir)
    model = catvae_jax.load(workdir)
    choice.write(workdir, model.step, model.params_sha256, MEASURED)
    return workdir, model, sharing.export(workdir, workdir.parent / "chosen.catvae")


def test_the_measured_sampler_choice_travels_in_the_file(chosen):
    """A workdir's sampler_<step>.json goes into the file, its auto follows it, its samples and
    card use it."""
    _, model, done = chosen
    assert done.sampler == "prior" and "sampler_choice.json" in done.members
    loaded = catvae_jax.load(done.path)
    assert loaded.resolve_sampler() == "prior" and loaded.choice["choice"] == "prior"
    np.testing.assert_array_equal(
        loaded.generate(3, seed=1), loaded.generate(3, 1, sampler="prior")
    )
    card = _card(done.path)
    assert "![64 samples, sampler prior" in card
    assert "uses the **prior** sampler, measured best for this checkpoint on 16" in card
    assert "| prior | 0.25 | 0.125 | 0.0625 | 1 |" in card
    assert "before they were stored" not in card
    member = loaded.choice
    assert member["params_sha256"] == member["measured_params_sha256"] == model.params_sha256


def test_a_float16_file_keeps_the_choice_keyed_to_its_parameters(chosen, tmp_path):
    workdir, model, _ = chosen
    half = sharing.export(workdir, tmp_path / "half", dtype="float16")
    member = json.loads((half.path / "sampler_choice.json").read_text())
    assert member["measured_params_sha256"] == model.params_sha256 != member["params_sha256"]
    assert member["stored_dtype"] == "float16" and "files" not in member
    half_model = catvae_jax.load(half.path)
    assert half_model.params_sha256 == member["params_sha256"]  # re-keyed to what is stored
    assert half_model.resolve_sampler() == half.sampler == "prior"
    assert "before they were stored as float16" in _card(half.path)


def test_a_choice_the_file_cannot_carry_is_left_out_with_a_warning(
    trained_workdir, tmp_path, capsys
):
    """A damaged workdir choice (ignored with its one line, as by load), or one of a sampler
    the file will not hold (the gmm, not cached): no member, auto in the fixed order."""
    workdir = tmp_path / "run"
    shutil.copytree(trained_workdir[0], workdir)
    model = catvae_jax.load(workdir)
    (workdir / f"sampler_{model.step}.json").write_text("{")
    plain = sharing.export(workdir, tmp_path / "plain.catvae")
    err = capsys.readouterr().err
    where = f"{workdir}/sampler_{model.step}.json"
    assert f"warning: ignoring the sampler choice {where}: not JSON" in err
    assert "sampler_choice.json" not in plain.members and plain.sampler == "flow"
    choice.write(workdir, model.step, model.params_sha256, {**MEASURED, "choice": "gmm"})
    plain = sharing.export(workdir, tmp_path / "plain.catvae")
    err = capsys.readouterr().err
    assert "warning: the model file gets no sampler choice: its chosen gmm sampler" in err
    assert "sampler_choice.json" not in plain.members and plain.sampler == "flow"


def _with_choice(change):
    """A change of a file's {name: bytes} that rewrites its sampler_choice.json as
    `change(record)` (a record, or bytes) and, as a careful forger would, the manifest."""

    def rewrite(files):
        record = change(json.loads(files["sampler_choice.json"]))
        data = record if isinstance(record, bytes) else json.dumps(record).encode()
        files["sampler_choice.json"] = data
        del files["checksums.sha256"]
        files["checksums.sha256"] = model_file.manifest(files)

    return rewrite


def _flip_choice(files):
    files["sampler_choice.json"] = files["sampler_choice.json"].replace(b"prior", b"flow_")


CHOICE_DAMAGES = {
    "flipped": (_flip_choice, "sampler_choice.json fails its checksum"),
    "foreign": (
        _with_choice(lambda r: choice.rekeyed(r, "0" * 64)),
        "sampler_choice.json is unusable (it was measured on other parameters",
    ),
    "not held": (
        _with_choice(lambda r: choice.rekeyed({**r, "choice": "gmm"}, r["params_sha256"])),
        "sampler_choice.json is unusable (it chooses the gmm sampler, which the file does not",
    ),
    "not JSON": (_with_choice(lambda r: b"[" * 100_000), "sampler_choice.json is not JSON"),
}


@pytest.mark.parametrize("damage", CHOICE_DAMAGES)
def test_a_damaged_sampler_choice_is_refused(chosen, tmp_path, damage):
    change, message = CHOICE_DAMAGES[damage]
    bad = tmp_path / "bad.catvae"
    _rewrite(chosen[2].path, bad, change)
    with pytest.raises(UserError, match=message.replace(".", r"\.").replace("(", r"\(")):
        catvae_jax.load(bad)


def _rewrite(src, dst, change):
    """Copies zip `src` to `dst` with `change(files)` applied to its {name: bytes}."""
    with zipfile.ZipFile(src) as archive:
        files = {n: archive.read(n) for n in archive.namelist()}
    change(files)
    with zipfile.ZipFile(dst, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)


def _flip_a_byte(files):
    data = bytearray(files["model.safetensors"])
    data[-3] ^= 0xFF
    files["model.safetensors"] = bytes(data)


DAMAGES = {
    "flipped": (_flip_a_byte, "model.safetensors fails its checksum"),
    "extra": (lambda f: f.update({"evil.py": b"import os"}), "evil.py is not in its"),
    "dropped": (lambda f: f.pop("prior.safetensors"), "has no prior.safetensors"),
    "no manifest": (lambda f: f.pop("checksums.sha256"), "no checksums.sha256"),
    "path": (lambda f: f.update({"../x": b""}), "unexpected member '../x'"),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_or_altered_file_is_refused(exported, tmp_path, damage):
    change, message = DAMAGES[damage]
    bad = tmp_path / "bad.catvae"
    _rewrite(exported[0], bad, change)
    with pytest.raises(UserError, match=message.replace(".", r"\.")):
        catvae_jax.load(bad)


def test_a_truncated_file_is_not_a_model_file(exported, tmp_path):
    bad = tmp_path / "cut.catvae"
    bad.write_bytes(exported[0].read_bytes()[:5000])
    with pytest.raises(UserError, match="not a catvae model file"):
        catvae_jax.load(bad)


def test_every_reader_takes_the_file(trained_workdir, exported, tmp_path):
    """generate, reconstruct, interpolate and evaluate with --workdir FILE; outputs go to the
    current folder by default; a damaged file and a bad export are one line, exit 2."""
    path = exported[0]
    image = tmp_path / "cat.png"
    Image.fromarray(to_uint8(catvae_jax.load(path).generate(1, seed=2)[0])).save(image)
    bad = tmp_path / "bad.catvae"
    _rewrite(path, bad, _flip_a_byte)
    cases = [
        ("catvae_jax.generate", "--workdir", path, "--n", "4"),
        ("catvae_jax.reconstruct", "--workdir", path, "--images", image),
        ("catvae_jax.interpolate", "--workdir", path, "--pairs", "1", "--steps", "3"),
        ("catvae_jax.evaluate", "--workdir", path, "--num_samples", "0", "--iw_samples", "2"),
        ("catvae_jax.generate", "--workdir", bad, "--n", "4"),
        ("catvae_jax.export", "--workdir", path, "--out", tmp_path / "x.catvae"),
        ("catvae_jax.export", "--workdir", trained_workdir[0], "--out", tmp_path / "no/x.catvae"),
        ("catvae_jax.generate", "--workdir", path, "--step", "3"),
        ("catvae_jax.export", "--workdir", trained_workdir[0], "--out", tmp_path / "m",
         "--dtype", "float16"),
    ]  # fmt: skip
    procs = run_cli_cases(cases, cwd=str(tmp_path))
    for proc in procs[:4]:
        assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("generated.png", "reconstructions_cli.png", "interpolations.png", "eval.json"):
        assert (tmp_path / name).is_file(), name
    assert json.loads((tmp_path / "eval.json").read_text())["checkpoint_step"] == exported[1].step
    wants = ["fails its checksum", "is a model file already", "does not exist", "checkpoint"]
    for proc, want in zip(procs[4:8], wants, strict=True):
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and want in lines[0], proc.stderr
    folder = procs[8]
    assert folder.returncode == 0, folder.stderr[-2000:]
    assert "parameters as float16" in folder.stdout and "checksums.sha256" in folder.stdout
    assert model_file.is_model_file(tmp_path / "m")
    assert catvae_jax.load(str(tmp_path / "m")).step == exported[1].step
