"""The models shipped in the package (`pretrained:<name>`, catvae_jax/pretrained/): each loads
offline with its checksum verified, draws samples whose FD matches the shipped figure, fits the
size budget, and works wherever a workdir does."""

import json
import shutil

import numpy as np
import pytest
from conftest import run_cli_cases

import catvae_jax
from catvae_jax import model_file
from catvae_jax.errors import UserError
from catvae_jax.evaluation import sample_quality

BUDGET_BYTES = 5 * 10**6  # each shipped .catvae; the repository's checks flag files over 5 MB
EVALUATE_KEYS = ("fd", "kid", "precision", "recall", "diversity", "fd_recon", "fd_floor")


def test_quickstart_and_default_are_shipped_with_their_descriptions():
    assert {"quickstart", "default"} <= set(model_file.pretrained_names())
    for name in model_file.pretrained_names():
        info = model_file.pretrained_info(name)
        path = model_file.PRETRAINED_DIR / f"{name}.catvae"
        assert path.stat().st_size == info["bytes"] <= BUDGET_BYTES
        assert info["commands"] and info["commands"][-1].startswith("python -m catvae_jax.main")
        assert all(isinstance(info["evaluate"][k], float) for k in EVALUATE_KEYS)


@pytest.mark.parametrize("name", model_file.pretrained_names())
def test_a_shipped_model_draws_cats_of_its_shipped_fd(name):
    """FD of n samples (seed, sampler auto) against the first n test images: the same figure as
    at export (1 %: a float summed in another order on another CPU)."""
    check = model_file.pretrained_info(name)["fd_check"]
    model = catvae_jax.load(f"pretrained:{name}")
    assert model.resolve_sampler("auto") == check["sampler"]  # the measured choice, if shipped
    assert model.bpd_range is not None
    fd = sample_quality.sample_fd(model, check["n"], check["seed"], check["split"])
    assert fd == pytest.approx(check["fd"], rel=0.01)


def test_pretrained_works_as_a_workdir_and_a_damaged_one_is_refused(tmp_path, monkeypatch):
    procs = run_cli_cases(
        [
            ("catvae_jax.generate", "--workdir", "pretrained:quickstart", "--n", "4"),
            ("catvae_jax.generate", "--workdir", "pretrained:nope", "--n", "4"),
        ],
        cwd=str(tmp_path),
    )
    assert procs[0].returncode == 0 and (tmp_path / "generated.png").is_file(), procs[0].stderr
    assert procs[1].returncode == 2 and "no pretrained model 'nope'" in procs[1].stderr
    folder = tmp_path / "pretrained"
    shutil.copytree(model_file.PRETRAINED_DIR, folder)
    data = bytearray((folder / "quickstart.catvae").read_bytes())
    data[len(data) // 2] ^= 0x01
    (folder / "quickstart.catvae").write_bytes(bytes(data))
    monkeypatch.setattr(model_file, "PRETRAINED_DIR", folder)
    with pytest.raises(UserError, match="pretrained model 'quickstart' is damaged"):
        catvae_jax.load("pretrained:quickstart")
    info = json.loads((folder / "quickstart.json").read_text())
    assert np.isfinite(info["fd_check"]["fd"])


def test_the_service_serves_a_shipped_model():
    import time

    from fastapi.testclient import TestClient

    from catvae_jax.serve.app import create_app

    with TestClient(create_app("pretrained:quickstart", max_n=4, default_n=4)) as client:
        deadline = time.monotonic() + 120
        while client.get("/healthz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        health = client.get("/healthz").json()
        grid = client.get("/grid.png?n=4&seed=1")
    shipped = model_file.pretrained_info("quickstart")["fd_check"]["sampler"]  # its measured auto
    assert health["step"] == 768 and health["checks_inputs"] and health["auto"] == shipped == "gmm"
    assert grid.status_code == 200 and grid.headers["content-type"] == "image/png"
