"""What a user sees of a run: the start and validation lines, progress pictures, metrics.png,
W&B (one run id across resumes) and TensorBoard; lines never glued to the progress bar; a
finished run re-run keeps its prior and pictures; the data-prepare report's wording."""

from __future__ import annotations

import io
import json
import os
import shutil
import struct

import numpy as np
from conftest import tiny_config
from PIL import Image
from tqdm import tqdm

import catvae_jax
from catvae_jax import after_training, images
from catvae_jax.after_training import train_and_evaluate
from catvae_jax.cli import plural
from catvae_jax.data.__main__ import report as prepare_report
from catvae_jax.data.builders import Prepared
from catvae_jax.train import report
from catvae_jax.train.hooks import say
from catvae_jax.train.log import RUN_ID_FILE


def test_durations_and_plurals():
    assert [report.duration(s) for s in (0.4, 42, 190, 7500)] == [
        "0 s", "42 s", "3 min 10 s", "2 h 05 min",
    ]  # fmt: skip
    assert [plural(n, "file") for n in (0, 1, 2)] == ["0 files", "1 file", "2 files"]
    assert plural(1, "process", "processes") == "1 process"


def test_the_start_line_says_which_of_num_epochs_and_max_steps_ends_the_run():
    config = tiny_config()  # 3 epochs of 12 steps
    assert (
        report.length_line(config, 12, 36) == "training 36 steps of batch 8 (3 epochs of 12 steps)"
    )
    config.max_steps = 20
    assert "max_steps 20 stops the run before num_epochs 3 (36 steps" in report.length_line(
        config, 12, 20
    )
    config.max_steps = 100
    assert "num_epochs 3 × 12 steps ends the run before max_steps 100" in report.length_line(
        config, 12, 36
    )


def test_a_line_said_during_training_is_not_glued_to_the_progress_bar():
    """`say` clears the bar, prints its line, and redraws the bar below it (tqdm.write); a
    plain print would continue the bar's line."""
    out = io.StringIO()
    bar = tqdm(total=10, file=out, mininterval=0, ascii=True)
    bar.update(3)
    say("learned prior for checkpoint 3", file=out)
    bar.update(1)
    bar.close()
    before = out.getvalue().split("learned prior for checkpoint 3")[0]
    assert "3/10" in before and before[-1] == "\r"  # the bar's line was cleared first
    assert "4/10" in out.getvalue().split("learned prior for checkpoint 3\n")[1]


def test_metrics_png_draws_train_and_validation_curves():
    lines = [
        {
            "step": s,
            "train_loss": 600 - s,
            "train_ssim": 0.1,
            "train_kl": 2.0,
            "learning_rate": 1e-3,
        }
        for s in (4, 8, 12)
    ] + [{"step": 12, "val_loss": "nan", "val_ssim": 0.2, "val_kl": 2.1, "learning_rate": 1e-3}]
    png = Image.open(io.BytesIO(report.metrics_png(lines)))
    assert png.size == (800, 480)
    assert len(np.unique(np.asarray(png.convert("L")))) > 10  # drawn, not blank


def _prepared(**kwargs) -> Prepared:
    base = dict(
        name="synthetic_cats", config="16px", version="1.0.0", path="/d", splits={"train": 8},
        skipped=[], ignored=[], content_sha256="", reused=False, seconds=0.5,
    )  # fmt: skip
    return Prepared(**{**base, **kwargs})


def test_the_prepare_report_counts_files_only_for_a_folder():
    synthetic = prepare_report(_prepared())
    assert "prepared 8 images in 0.5 s (16 images/s)" in synthetic and "files" not in synthetic
    folder = prepare_report(
        _prepared(content_sha256="ab", skipped=[("x.png", "bad")], ignored=["notes.txt"])
    )
    assert "skipped 1 file:" in folder and "ignored 1 other file " in folder
    assert "prepared 8 images from 9 files in 0.5 s" in folder


def _events(folder) -> list[tuple[str, int, str]]:
    """(tag, step, "scalar" | "image") of every summary value in the TensorBoard event files
    of `folder` (TFRecord framing: length, its CRC, the Event proto, its CRC)."""
    from tensorboardX.proto import event_pb2

    found = []
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data, i = path.read_bytes(), 0
        while i < len(data):
            (length,) = struct.unpack("<Q", data[i : i + 8])
            event = event_pb2.Event.FromString(data[i + 12 : i + 12 + length])
            i += 12 + length + 4
            for v in event.summary.value:
                found.append((v.tag, event.step, "image" if v.HasField("image") else "scalar"))
    return found


def test_a_run_shows_each_validation_and_keeps_one_wandb_run_across_resumes(
    tmp_path, monkeypatch, capsys
):
    """Offline W&B and TensorBoard on: one epoch, then a resume for a second, then a re-run of
    the finished run. Each validation prints its line and writes the progress pictures and
    metrics.png; W&B and TensorBoard get its scalars and pictures at its step; the resume
    continues the same W&B run id, and the re-run opens no W&B run at all."""
    monkeypatch.setenv("WANDB_MODE", "offline")  # the tests' environment disables it
    workdir = tmp_path / "run"
    config = tiny_config()
    config.num_epochs, config.tensorboard, config.flow_prior = 1, True, False
    config.validation_pictures = True
    train_and_evaluate(config, str(workdir))
    out = capsys.readouterr().out
    assert "training 12 steps of batch 8 (1 epoch of 12 steps)" in out
    line = next(x for x in out.splitlines() if x.startswith("step 12/12 (epoch 1/1): val loss"))
    assert "val SSIM" in line and "KL" in line and "img/s" in line and "left" in line
    for name in ("samples", "reconstructions"):
        assert (workdir / report.PROGRESS_DIR / f"{name}.png").exists()
    samples = np.asarray(Image.open(workdir / report.PROGRESS_DIR / "samples.png"))
    assert samples.shape == (2 * 18 + 2, 8 * 18 + 2, 3)  # 16 samples of 16², 8 a row
    assert Image.open(workdir / "metrics.png").size == (800, 480)
    run_id = (workdir / RUN_ID_FILE).read_text().strip()

    config.num_epochs = 2  # resume: 12 more steps in the same W&B run
    train_and_evaluate(config, str(workdir))
    out = capsys.readouterr().out
    assert "training 24 steps of batch 8 (2 epochs of 12 steps); from step 12" in out
    assert "step 24/24 (epoch 2/2): val loss" in out
    offline = sorted(p.name for p in (workdir / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 and all(name.endswith(f"-{run_id}") for name in offline), offline
    media = {p.name.split("_")[0] + "@" + p.name.split("_")[1] for p in workdir.rglob("*.png")
             if "media" in p.parts}  # fmt: skip
    assert {"samples@12", "samples@24", "reconstructions@12", "reconstructions@24"} <= media
    events = set(_events(workdir / "tensorboard"))
    for step in (12, 24):
        assert ("val_loss", step, "scalar") in events
        assert ("progress/samples", step, "image") in events
        assert ("progress/reconstructions", step, "image") in events
    assert ("train_loss", 4, "scalar") in events

    train_and_evaluate(config, str(workdir))  # finished: nothing to train, nothing redone
    out = capsys.readouterr().out
    assert "nothing to train: step 24 of 24 is reached" in out
    assert f"samples.png and reconstructions.png of step 24 are already in {workdir}: kept" in out
    assert len(list((workdir / "wandb").glob("offline-run-*"))) == 2


def test_a_finished_run_run_again_keeps_its_prior_and_pictures(trained_workdir, tmp_path, capsys):
    workdir = tmp_path / "run"
    # tiny_config() has config.validation_pictures off: its run drew no progress pictures
    assert not (trained_workdir[0] / report.PROGRESS_DIR).exists()
    assert not (trained_workdir[0] / "metrics.png").exists()
    shutil.copytree(trained_workdir[0], workdir)
    step = trained_workdir[1]["step"]
    kept = ["samples.png", "reconstructions.png", f"flow_{step}.npz"]
    digest = catvae_jax.load(workdir, "latest").params_sha256
    for picture in kept[:2]:
        text = images.png_text(workdir / picture)
        assert text[after_training.STEP_KEY] == str(step)
        assert text[after_training.PARAMS_KEY] == digest
    before = {name: os.stat(workdir / name).st_mtime_ns for name in kept}
    train_and_evaluate(tiny_config(), str(workdir))
    out = capsys.readouterr().out
    assert f"checkpoint {step}: learned prior already in {workdir}/flow_{step}.npz: kept" in out
    assert "are already in" in out and "fitting" not in out
    assert {name: os.stat(workdir / name).st_mtime_ns for name in kept} == before
    json.loads((workdir / "config.json").read_text())  # still a workdir that reads back
