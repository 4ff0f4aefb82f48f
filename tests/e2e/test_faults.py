"""Faults: SIGTERM saves a checkpoint, a corrupt newest checkpoint is skipped, profiling."""

import shutil
import signal
import subprocess
import time

from conftest import REPO, main_cmd, subprocess_env
from test_cli import TINY

import catvae_jax


def _start(workdir, *extra, measured=True):
    cmd = main_cmd(workdir, *TINY, *extra)
    env = subprocess_env(measured=measured)
    return subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_sigterm_saves_a_checkpoint_and_resume_finishes(tmp_path):
    workdir = tmp_path / "w"
    # unmeasured: SIGTERM takes the lines of Ctrl-C (test_reliability) and of train/loop.py's tests
    proc = _start(workdir, "--config.num_epochs=200", "--config.log_every_steps=1", measured=False)
    metrics = workdir / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") > 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 143, err[-2000:]
    assert "preempted at step" in out.strip().splitlines()[-1]
    step = int(out.strip().split("preempted at step ")[1].split(";")[0])
    assert catvae_jax.load(workdir, step="latest").step == step


def test_corrupt_newest_checkpoint_is_skipped(tmp_path, trained_workdir, capsys):
    from conftest import tiny_config

    from catvae_jax.after_training import train_and_evaluate

    workdir = tmp_path / "corrupt"
    shutil.copytree(trained_workdir[0], workdir)
    ckpts = workdir / "checkpoints"
    newest = max(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())
    garbled = 0
    for path in (ckpts / str(newest)).rglob("*"):
        if path.is_file() and path.stat().st_size > 0 and "state" in str(path):
            path.write_bytes(b"\0garbage")
            garbled += 1
    assert garbled, "no state files found to corrupt: has Orbax's layout changed?"
    config = tiny_config()
    config.num_epochs = 4
    result = train_and_evaluate(config, str(workdir))
    assert f"skipping unreadable checkpoint at step {newest}" in capsys.readouterr().out
    assert len(list(ckpts.glob(f"unreadable-{newest}-*"))) == 1  # moved aside, kept
    assert result["step"] == 48  # resumed from the older checkpoint and trained to the end
    assert catvae_jax.load(workdir, step="latest").step == 48


def test_profile_writes_a_trace(tmp_path):
    workdir = tmp_path / "p"
    proc = _start(workdir, "--config.profile=True")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    traces = list((workdir / "profile").rglob("*.xplane.pb"))
    assert traces and traces[0].stat().st_size > 0
    # 4 steps, fewer than the 5 traced: the trace ends with the loop, before the learned prior
    assert out.index("profile trace written") < out.index("fitting the learned prior")


def test_nonfinite_cli_exits_1_naming_the_step(tmp_path):
    proc = _start(tmp_path / "nan", "--config.learning_rate=1e30", "--config.grad_clip_norm=0")
    out, _err = proc.communicate(timeout=300)
    assert proc.returncode == 1
    last = out.strip().splitlines()[-1]
    assert last.startswith("stopped: non-finite loss at step")
