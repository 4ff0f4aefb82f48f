"""Saying when an input is far from what the model knows: the bits/dim range stored at the end of
training (catvae_jax/bpd_range.py), and its verdicts in reconstruct and the service."""

import json
import shutil
import time

import numpy as np
import pytest
from conftest import run_cli_cases
from PIL import Image

import catvae_jax
from catvae_jax import bpd_range, data
from catvae_jax.evaluation import typicality
from catvae_jax.images import to_uint8


def _range(values) -> bpd_range.BpdRange:
    return bpd_range.BpdRange.of(
        np.asarray(values), sigma=0.1, iw_samples=8, seed=0, split="validation", step=3
    )


def test_judge_places_an_image_in_the_range():
    r = _range(np.linspace(2.0, 3.0, 101))
    assert r.percentile(2.5) == pytest.approx(50.0) and r.percentile(1.0) == 0.0
    inside, above, below = r.judge(2.2), r.judge(4.0), r.judge(1.5)
    assert not inside.far and "percentile 20" in inside.sentence
    assert (
        above.far
        and above.percentile == 100.0
        and "far from what this model knows" in (above.sentence)
    )
    assert below.far and "unusually simple" in below.sentence
    headers = above.headers()
    assert headers["X-Far-From-Training"] == "true" and headers["X-Bits-Per-Dim"] == "4.0000"
    for value in headers.values():
        value.encode("latin-1")  # HTTP header values


def test_a_range_is_stored_as_json_and_a_bad_one_is_ignored(tmp_path, capsys):
    r = _range([2.0, 2.5, 3.0])
    bpd_range.save(r, bpd_range.path(tmp_path, 3))
    assert bpd_range.read(tmp_path / "bpd_3.json") == r
    assert bpd_range.read(tmp_path / "bpd_4.json") is None
    broken = dict(r.to_dict(), quantiles=[3.0, 2.0] * 50 + [1.0])
    (tmp_path / "bpd_5.json").write_text(json.dumps(broken))
    assert bpd_range.read(tmp_path / "bpd_5.json") is None
    assert "ignoring unreadable bits/dim range" in capsys.readouterr().err


def _checkerboard(size: int = 16) -> np.ndarray:
    """A pixel-level 0.1/0.9 checkerboard [1, S, S, 3]: no cat, and no decoder draws it."""
    yy, xx = np.mgrid[:size, :size]
    board = np.where((yy + xx) % 2 == 0, 0.1, 0.9).astype(np.float32)
    return np.repeat(board[None, :, :, None], 3, axis=-1)


def test_training_stores_the_range_and_a_far_input_is_flagged(trained_workdir):
    workdir, _ = trained_workdir
    model = catvae_jax.load(workdir)
    stored = json.loads((workdir / f"bpd_{model.step}.json").read_text())
    assert stored["split"] == "validation" and stored["num_images"] == 16
    assert model.bpd_range == bpd_range.BpdRange.from_dict(stored)
    validation = data.load_split(model.config, "validation")
    assert not any(v.far for v in typicality.check(model, validation))
    far = typicality.check(model, _checkerboard())[0]
    assert far.far and far.bits_per_dim > model.bpd_range.quantiles[-1]
    blank = typicality.check(model, np.zeros((1, 16, 16, 3), np.float32))[0]
    assert blank.far and "unusually simple" in blank.sentence


def test_reconstruct_warns_of_a_far_input(trained_workdir, tmp_path):
    workdir, _ = trained_workdir
    model = catvae_jax.load(workdir)
    cat, board = tmp_path / "cat.png", tmp_path / "board.png"
    Image.fromarray(data.load_split(model.config, "validation")[0]).save(cat)
    Image.fromarray(to_uint8(_checkerboard()[0])).save(board)
    old = tmp_path / "old"  # a workdir from before ranges were stored
    shutil.copytree(workdir, old)
    for path in old.glob("bpd_*.json"):
        path.unlink()
    recon = "catvae_jax.reconstruct"
    flagged, plain, unchecked = run_cli_cases(
        [
            (
                recon,
                "--workdir",
                workdir,
                "--images",
                f"{cat},{board}",
                "--out",
                tmp_path / "a.png",
            ),
            (recon, "--workdir", workdir, "--images", cat, "--out", tmp_path / "b.png"),
            (recon, "--workdir", old, "--images", board, "--out", tmp_path / "c.png"),
        ]
    )
    assert flagged.returncode == 0, flagged.stderr[-2000:]
    warnings = [line for line in flagged.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "board.png" in warnings[0] and "far from" in warnings[0]
    assert "1 far from what the model knows" in flagged.stdout
    assert plain.returncode == 0 and "warning" not in plain.stderr, plain.stderr
    assert unchecked.returncode == 0 and "no bits/dim range" in unchecked.stderr


def test_the_service_says_when_an_upload_is_far(trained_workdir, tmp_path):
    """An exported model file served in-process: the headers of a far and a near upload, the
    page's note element and /healthz's `checks_inputs`."""
    import io

    from fastapi.testclient import TestClient

    from catvae_jax import sharing
    from catvae_jax.serve.app import create_app

    path = tmp_path / "m.catvae"
    sharing.export(trained_workdir[0], path)
    model = catvae_jax.load(path)
    validation = data.load_split(model.config, "validation")
    values = typicality.bits_per_dim(model, validation, model.bpd_range.sigma)
    near = validation[[np.argmin(np.abs(values - model.bpd_range.quantiles[50]))]]  # a median cat

    def png(x) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(to_uint8(x[0])).save(buf, format="PNG")
        return buf.getvalue()

    with TestClient(create_app(str(path))) as client:
        deadline = time.monotonic() + 120
        while client.get("/healthz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert client.get("/healthz").json()["checks_inputs"] is True
        assert 'id="recon-note"' in client.get("/").text
        far = client.post("/reconstruct", files={"file": ("b.png", png(_checkerboard()))})
        ok = client.post("/reconstruct", files={"file": ("c.png", png(near))})
    assert far.status_code == ok.status_code == 200
    assert far.headers["X-Far-From-Training"] == "true"
    assert "far from what this model knows" in far.headers["X-Input-Note"]
    assert float(far.headers["X-Bits-Per-Dim"]) > model.bpd_range.quantiles[-1]
    assert ok.headers["X-Far-From-Training"] == "false"
    assert 0 <= float(ok.headers["X-Bits-Per-Dim-Percentile"]) <= 100


def test_a_range_of_other_parameters_is_ignored_and_a_stale_one_removed(
    trained_workdir, tmp_path, capsys
):
    """Like the sampler files (priors/stored.py): a range records its parameters' digest, and
    the ranges of checkpoints rotated away are deleted with their sampler files."""
    from catvae_jax.priors import stored

    workdir = tmp_path / "w"
    shutil.copytree(trained_workdir[0], workdir)
    step = catvae_jax.load(workdir).step
    path = workdir / f"bpd_{step}.json"
    saved = json.loads(path.read_text())
    assert saved["params_sha256"] == catvae_jax.load(workdir).params_sha256
    path.write_text(json.dumps(dict(saved, params_sha256="0" * 64)))
    assert catvae_jax.load(workdir).bpd_range is None
    assert "measured with other parameters" in capsys.readouterr().err
    (workdir / "bpd_999.json").write_text(json.dumps(saved))
    removed = stored.remove_stale(workdir, {step})
    assert [p.name for p in removed] == ["bpd_999.json"] and path.exists()
