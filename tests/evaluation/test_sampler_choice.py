"""`auto` follows the sampler measured best (catvae_jax/evaluation/sampler_choice.py, stored by
catvae_jax/priors/choice.py): the statistics and the rule on known cases, the file's damage
and staleness checks, and the end-of-training and command paths on the tiny run."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import run_cli_cases

import catvae_jax
from catvae_jax import after_training, data
from catvae_jax.errors import UserError
from catvae_jax.evaluation import sampler_choice
from catvae_jax.priors import choice, stored
from catvae_jax.train import loop
from catvae_jax.train.checkpoint import Checkpoints


def test_pixel_statistics_on_known_cases():
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (20, 16, 16, 3), dtype=np.uint8)
    flat = np.full((20, 16, 16, 3), 128, np.uint8)
    h = sampler_choice.pixel_histograms(noise)
    assert h.shape == (4, sampler_choice.PIXEL_BINS)
    np.testing.assert_allclose(h.sum(axis=1), 1.0)
    assert sampler_choice.pixel_distance(h, h) == 0.0
    black, white = np.zeros_like(flat), np.full_like(flat, 255)
    # Colours entirely apart, both without edges: TV distance 1 in 3 of 4 histograms.
    far = sampler_choice.pixel_distance(
        sampler_choice.pixel_histograms(black), sampler_choice.pixel_histograms(white)
    )
    assert far == pytest.approx(0.75)
    # The flat grey image shares no edges with noise: its gradient histogram is all in bin 0.
    grad_only = sampler_choice.pixel_histograms(flat)[3]
    assert grad_only[0] == 1.0 and h[3][0] < 0.1


def test_the_rule_is_the_lowest_mean_rank_and_ties_keep_the_old_order():
    def fig(a, v, p):
        return {"kid_alexnet": a, "kid_vgg16": v, "pixels": p}

    best, ranks = sampler_choice.rank(
        {"flow": fig(0.1, 0.5, 0.3), "gmm": fig(0.2, 0.1, 0.1), "prior": fig(0.9, 0.9, 0.9)}
    )
    assert best == "gmm"  # first in two spaces of three, though the flow leads in AlexNet
    assert ranks["gmm"] == {"alexnet": 2, "vgg16": 1, "pixels": 1, "mean": pytest.approx(4 / 3)}
    best, ranks = sampler_choice.rank({"gmm": fig(0.1, 0.2, 0.5), "flow": fig(0.2, 0.1, 0.5)})
    assert ranks["gmm"]["mean"] == ranks["flow"]["mean"] == 1.5 and best == "flow"


def test_a_damaged_or_stale_choice_file_counts_as_absent(tmp_path, capsys):
    assert choice.read(tmp_path, 7) is None and capsys.readouterr().err == ""
    (tmp_path / "gmm_7.npz").write_bytes(b"mixture as measured")
    path = choice.write(tmp_path, 7, "abc", {"choice": "gmm", "figures": {}})
    assert choice.read(tmp_path, 7, "abc")["choice"] == "gmm"
    assert choice.read(tmp_path, 7, "other parameters") is None
    assert "measured on other parameters" in capsys.readouterr().err
    record = json.loads(path.read_text())
    cases = {
        "not JSON": "{",
        "its digest does not match": json.dumps({**record, "choice": "prior"}),
        "no digest": json.dumps({k: v for k, v in record.items() if k != "sha256"}),
        "not JSON (RecursionError)": "[" * 100_000,  # nested past the parser's depth
        f"it is larger than {choice.MAX_FILE_BYTES} bytes": " " * (choice.MAX_FILE_BYTES + 1),
        "not JSON (UnicodeDecodeError)": b"\xff\xfe{",
    }
    for why, text in cases.items():
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        assert choice.read(tmp_path, 7) is None
        err = capsys.readouterr().err  # one line, as for the sampler files (stored.read_or_none)
        assert err.startswith(f"warning: ignoring the sampler choice {path}: {why}"), err
        assert err.endswith("; auto uses flow, else gmm, else N(0, I)\n") and err.count("\n") == 1
    choice.write(tmp_path, 7, "abc", {"choice": "gmm"})
    assert "the choice of step 7" in _read_warning(tmp_path, 8, path)
    (tmp_path / "gmm_7.npz").write_bytes(b"refitted since")
    assert choice.read(tmp_path, 7) is None
    assert "gmm_7.npz has changed since it was measured" in capsys.readouterr().err
    with pytest.raises(ValueError):
        choice.write(tmp_path, 7, "abc", {"choice": "auto"})


def test_a_model_file_gets_no_choice(tmp_path):
    with pytest.raises(UserError, match="is a model file: choose_sampler writes into a training"):
        sampler_choice.choose_checkpoints("pretrained:quickstart", ["best"], 16)


def test_the_choice_of_a_checkpoint_rotated_away_goes_with_its_sampler_files(tmp_path):
    for name in ("sampler_7.json", "sampler_9.json", "flow_7.npz", "sampler_x.json"):
        (tmp_path / name).write_text("{}")
    removed = stored.remove_stale(tmp_path, kept=[9])
    assert sorted(p.name for p in removed) == ["flow_7.npz", "sampler_7.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sampler_9.json", "sampler_x.json"]


def _read_warning(workdir, step, path) -> str:
    """The warning of reading `path` as the choice of `step` (a copy of another step's file)."""
    import contextlib
    import io

    shutil.copy(path, choice.cache_path(workdir, step))
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert choice.read(workdir, step) is None
    return err.getvalue()


@pytest.fixture
def workdir_copy(trained_workdir, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(trained_workdir[0], dst)
    return dst


def test_training_end_stores_the_choice_and_auto_follows_it(workdir_copy, capsys):
    model = catvae_jax.load(workdir_copy, "latest")
    config = model.config.copy_and_resolve_references()
    config.flow_prior, config.choose_sampler = False, True  # the flow is fitted already
    config.choose_sampler_n = 8  # the fewest: VGG16 at 128² is most of the time
    originals = data.load_split(config, "validation")[:4]
    ckpts = Checkpoints(workdir_copy, read_only=True)
    run = loop.Finished(
        workdir_copy, config, model.graphdef, model._params, model.step, ckpts, originals
    )
    after_training.finish(run)
    first_out = capsys.readouterr().out
    after_training.finish(run)  # a re-run of the finished run keeps it
    ckpts.close()
    assert f"checkpoint {model.step}: sampler choice already in" in capsys.readouterr().out
    step = model.step
    record = json.loads((workdir_copy / f"sampler_{step}.json").read_text())
    assert set(record["figures"]) == {"flow", "gmm", "prior"} and record["n"] == 8
    for figures in record["figures"].values():
        assert set(figures) == {"kid_alexnet", "fd_alexnet", "kid_vgg16", "fd_vgg16", "pixels"}
    assert catvae_jax.load(workdir_copy, step).resolve_sampler() == record["choice"]
    assert f"checkpoint {step}: sampler figures on 8 validation images" in first_out

    # A choice other than the fixed order's first is followed too.
    digest = model.params_sha256
    choice.write(workdir_copy, step, digest, {**record, "choice": "prior"})
    loaded = catvae_jax.load(workdir_copy, step)
    assert loaded.resolve_sampler() == "prior"
    np.testing.assert_array_equal(
        loaded.generate(3, seed=1), loaded.generate(3, 1, sampler="prior")
    )
    # Damaged: the fixed order (the flow), with a warning.
    (workdir_copy / f"sampler_{step}.json").write_text("garbage")
    assert catvae_jax.load(workdir_copy, step).resolve_sampler() == "flow"
    assert "ignoring the sampler choice" in capsys.readouterr().err
    # A chosen flow that is no longer there: the fixed order, with a warning.
    choice.write(workdir_copy, step, digest, {**record, "choice": "flow"})
    (workdir_copy / f"flow_{step}.npz").unlink()
    assert catvae_jax.load(workdir_copy, step).resolve_sampler() == "gmm"
    assert "ignoring the sampler choice 'flow'" in capsys.readouterr().err


def test_the_choose_sampler_command(workdir_copy):
    command = ("catvae_jax.choose_sampler", "--workdir", str(workdir_copy))
    proc, bad = run_cli_cases(  # one interpreter, a forked child per case
        [(*command, "--step", "latest", "--num_samples", "200"), (*command, "--num_samples", "4")],
        measured=False,  # conftest.subprocess_env says why
        timeout=900,  # ~1 min on 2 idle cores (VGG16 on 4 × 16 images at 128²); 5 at load 10
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    step = catvae_jax.load(workdir_copy, "latest").step
    record = json.loads((workdir_copy / f"sampler_{step}.json").read_text())
    assert record["n"] == 16 and f"auto = {record['choice']}" in proc.stdout  # all 16 there are
    assert catvae_jax.load(workdir_copy, step).resolve_sampler() == record["choice"]
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0, bad.stderr
