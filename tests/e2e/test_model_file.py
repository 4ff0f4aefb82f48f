"""A trained model as one file (`export`, catvae_jax/model_file.py): the round trip, every reader
that takes a workdir takes the file, and a damaged or altered file is refused in one line."""

import hashlib
import io
import json
import zipfile

import numpy as np
import pytest
from conftest import run_cli_cases
from PIL import Image

import catvae_jax
from catvae_jax import model_file, sharing
from catvae_jax.errors import UserError
from catvae_jax.images import to_uint8


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
