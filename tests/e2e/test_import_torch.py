"""Importing the original PyTorch model: parity with PyTorch, shape errors, weights-only loading."""

from __future__ import annotations

import importlib.util
import os
import pickle
import sys
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")  # the `torch` extra; `make test` installs it

from conftest import REPO, run_cli, run_cli_cases  # noqa: E402

sys.path.insert(0, os.path.join(REPO, "benchmarks"))
from torch_original import Model, lightning_checkpoint  # noqa: E402

import catvae_jax  # noqa: E402
from catvae_jax.errors import UserError  # noqa: E402
from catvae_jax.import_torch import import_checkpoint, read_state_dict  # noqa: E402


def _exp1():
    spec = importlib.util.spec_from_file_location("exp1", os.path.join(REPO, "configs", "exp1.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    c.wandb.mode = "disabled"
    return c


def _rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.fixture(scope="module")
def torch_model():
    torch.manual_seed(3)
    model = Model(h_dim=1024, z_dim=32).eval()
    with torch.no_grad():  # larger weights than the default init: a sharper test of the layout
        for p in model.parameters():
            p.mul_(3.0)
    return model


def test_imported_checkpoint_matches_pytorch(torch_model, tmp_path) -> None:
    ckpt = tmp_path / "model.ckpt"
    torch.save(lightning_checkpoint(torch_model, epoch=4, global_step=135), ckpt)
    workdir = tmp_path / "imported"
    proc = run_cli(
        "catvae_jax.import_torch", "--ckpt", str(ckpt), "--workdir", str(workdir),
        "--config", "configs/exp1.py", "--config.wandb.mode=disabled",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "step 135" in proc.stdout

    vae = catvae_jax.load(workdir)
    assert vae.step == 135 and vae.z_dim == 32 and vae.image_shape == (128, 128, 3)
    x = np.random.default_rng(0).uniform(size=(3, 128, 128, 3)).astype(np.float32)
    z = np.random.default_rng(1).standard_normal((3, 32)).astype(np.float32)
    with torch.no_grad():
        mu_t, logvar_t = torch_model.encoder(torch.from_numpy(x.transpose(0, 3, 1, 2)))
        x_hat_t = torch_model.decoder(torch.from_numpy(z)).numpy().transpose(0, 2, 3, 1)
    mu, logvar = vae.encode(x)
    x_hat = vae.decode(z)
    assert _rel_err(mu, mu_t.numpy()) < 1e-5
    assert _rel_err(logvar, logvar_t.numpy()) < 1e-5
    # the sigmoid output must be non-trivial for the decoder comparison to mean something
    assert x_hat_t.std() > 0.05 and x_hat.shape == x_hat_t.shape
    assert _rel_err(x_hat, x_hat_t) < 1e-5
    assert vae.generate(2, seed=0, sampler="prior").shape == (2, 128, 128, 3)  # auto: fits a gmm


def test_bare_state_dict_with_prefix(torch_model, tmp_path) -> None:
    path = tmp_path / "weights.pt"
    torch.save({f"model.{k}": v for k, v in torch_model.state_dict().items()}, path)
    state_dict, step = read_state_dict(path)
    assert step == 0 and state_dict["model.fc.weight"].shape == (1024, 32)
    assert import_checkpoint(path, tmp_path / "w", _exp1()) == 0
    mu, _ = catvae_jax.load(tmp_path / "w").encode(np.zeros((1, 128, 128, 3), np.float32))
    with torch.no_grad():
        mu_t, _ = torch_model.encoder(torch.zeros(1, 3, 128, 128))
    assert _rel_err(mu, mu_t.numpy()) < 1e-5


def test_shape_mismatch_names_the_key(tmp_path) -> None:
    ckpt = tmp_path / "z16.ckpt"
    torch.save(lightning_checkpoint(Model(h_dim=1024, z_dim=16)), ckpt)
    proc = run_cli("catvae_jax.import_torch", "--ckpt", str(ckpt), "--workdir", str(tmp_path / "w"))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "'FC_mean.weight'" in lines[0] and "(16, 1024)" in lines[0]
    assert not (tmp_path / "w" / "checkpoints").exists()


class _Evil:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def test_pickled_code_is_never_run(tmp_path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {}, "payload": _Evil(str(marker))}, f, protocol=2)
    with pytest.raises(UserError, match="weights-only"):
        read_state_dict(path)
    torch.save({"state_dict": {"x": _Evil(str(marker))}}, tmp_path / "evil2.ckpt")
    with pytest.raises(UserError, match="weights-only"):
        read_state_dict(tmp_path / "evil2.ckpt")
    assert not marker.exists()


def test_missing_and_wrong_files(tmp_path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        read_state_dict(tmp_path / "nope.ckpt")
    with pytest.raises(UserError, match="is a folder, not a file"):
        read_state_dict(tmp_path)
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match=r"weights-only.*: Unsupported operand \d+ \(not the zip"):
        read_state_dict(tmp_path / "junk.ckpt")
    with open(tmp_path / "plain.pkl", "wb") as f:  # protocol 4: torch warns before it fails
        pickle.dump({"a": 1}, f, protocol=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(UserError, match="weights-only"):
            read_state_dict(tmp_path / "plain.pkl")
    assert caught == []  # the one error line, no torch warning above it
    torch.save({"state_dict": {"encode.0.weight": torch.zeros(32, 3, 4, 4)}}, tmp_path / "p.ckpt")
    with pytest.raises(UserError, match=r"has no 'encode\.0\.bias'"):
        import_checkpoint(tmp_path / "p.ckpt", tmp_path / "w", _exp1())
    c = _exp1()
    c.model.name = "resvae"
    with pytest.raises(UserError, match="vae_cats_v1"):
        import_checkpoint(tmp_path / "p.ckpt", tmp_path / "w2", c)


def test_a_bad_global_step_or_non_finite_weights_are_refused(torch_model, tmp_path) -> None:
    """Step −5 was imported (exit 0) and left a workdir no reader could use; 2**31 overflowed
    the int32 step; NaN weights became a model that draws grey noise."""
    cases, workdirs = [], []
    nan = lightning_checkpoint(torch_model)
    nan["state_dict"]["fc.bias"] = nan["state_dict"]["fc.bias"].clone().fill_(float("nan"))
    for name, ckpt in (
        ("negative", lightning_checkpoint(torch_model, global_step=-5)),
        ("too_big", lightning_checkpoint(torch_model, global_step=2**31)),
        ("nan", nan),
    ):
        torch.save(ckpt, tmp_path / f"{name}.ckpt")
        workdirs.append(tmp_path / name)
        cases.append(
            ("catvae_jax.import_torch", "--ckpt", tmp_path / f"{name}.ckpt",
             "--workdir", workdirs[-1], "--config.wandb.mode=disabled")
        )  # fmt: skip
    negative, too_big, not_finite = run_cli_cases(cases, measured=False)
    for proc, workdir in zip((negative, too_big, not_finite), workdirs, strict=True):
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
        assert not (workdir / "checkpoints").exists()
    assert "has global_step -5; a step must be in [0, 2147483647]" in negative.stderr
    assert "has global_step 2147483648" in too_big.stderr
    assert "state_dict entry 'fc.bias'" in not_finite.stderr
    assert "holds NaN or inf values" in not_finite.stderr
