"""Hostile conditions: one writer per workdir, readers that fall back past damaged checkpoints,
a full disk, Ctrl-C (once: save and exit 130; twice: abort at once)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import pytest
from conftest import REPO, main_cmd, run_cli, run_cli_cases, subprocess_env
from test_cli import TINY

import catvae_jax
from catvae_jax.errors import EnvironmentFailure, StorageError, UserError, storage_error
from catvae_jax.train.lock import WorkdirLock


def _start(workdir, *extra):
    """A tiny training run in the background; unmeasured (conftest.subprocess_env): the
    in-process and batched CLI tests cover the same lines, at less than coverage's cost."""
    return subprocess.Popen(
        main_cmd(workdir, *TINY, *extra),
        cwd=REPO,
        env=subprocess_env(measured=False),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(predicate, proc, timeout=240.0, every=0.02):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if predicate():
            return True
        time.sleep(every)
    return False


def _train_lines(workdir) -> int:
    path = workdir / "metrics.jsonl"
    return path.read_text().count('"train_loss"') if path.exists() else 0


def _steps(workdir) -> list[int]:
    ckpts = workdir / "checkpoints"
    return sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())


# One writer per workdir -----------------------------------------------------------------------


def test_a_second_writer_is_refused_and_ctrl_c_between_steps_saves_and_exits_130(tmp_path):
    workdir = tmp_path / "w"
    first = _start(workdir, "--config.num_epochs=500", "--config.log_every_steps=1")
    assert _wait_for(lambda: _train_lines(workdir) >= 2, first), first.stderr.read()[-2000:]

    second = run_cli("catvae_jax.main", *main_cmd(workdir, *TINY)[3:], measured=False)
    lines = second.stderr.strip().splitlines()
    assert second.returncode == 2 and len(lines) == 1, second.stderr[-2000:]
    assert lines[0].startswith("error: workdir") and f"pid {first.pid} " in lines[0]

    sent = time.time()
    first.send_signal(signal.SIGINT)
    out, err = first.communicate(timeout=120)
    assert first.returncode == 130, err[-2000:]
    assert time.time() - sent < 60  # seconds, not Orbax's 5-minute barrier timeout
    assert "Traceback" not in err
    last = out.strip().splitlines()[-1]
    assert last.startswith("stopped: interrupted at step") and "checkpoint saved" in last
    step = int(last.split("at step ")[1].split(";")[0])
    assert catvae_jax.load(workdir, step="latest").step == step
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    train = [json.loads(x)["step"] for x in lines if '"train_loss"' in x]
    assert train == list(range(1, step + 1))  # the refused run wrote no line


def test_lock_refuses_a_live_holder_and_frees_on_release(tmp_path):
    with WorkdirLock(tmp_path, "training"):
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
        with pytest.raises(UserError, match=rf"in use by training \(pid {os.getpid()} on host"):
            WorkdirLock(tmp_path).acquire()
    with WorkdirLock(tmp_path):  # released: the next writer gets in
        pass


def test_remote_lock_is_stale_after_its_heartbeat_stops(tmp_path, monkeypatch):
    from catvae_jax.train import lock as lock_lib

    monkeypatch.setattr(lock_lib, "_is_remote", lambda path: True)
    fresh = {"host": "elsewhere", "pid": 1, "started": "x", "heartbeat": time.time()}
    (tmp_path / ".lock").write_text(json.dumps(fresh))
    with pytest.raises(UserError, match="pid 1 on host elsewhere"):
        WorkdirLock(tmp_path).acquire()
    stale = {**fresh, "heartbeat": time.time() - lock_lib.STALE_S - 1}
    (tmp_path / ".lock").write_text(json.dumps(stale))
    lock = WorkdirLock(tmp_path)
    lock.acquire()  # taken over
    assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / ".lock").exists()


# Ctrl-C during a save ---------------------------------------------------------------------------


@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_during_a_save(tmp_path, presses):
    """A save at every step, so the signal lands while one is being written."""
    workdir = tmp_path / "w"
    proc = _start(workdir, "--config.num_epochs=500", "--config.checkpoint_every_steps=1")
    ckpts = workdir / "checkpoints"
    assert _wait_for(lambda: ckpts.exists() and len(_steps(ckpts.parent)) >= 2, proc)
    assert _wait_for(lambda: any(p.name.endswith("tmp") for p in ckpts.iterdir()), proc, every=0)
    sent = time.time()
    for _ in range(presses):
        proc.send_signal(signal.SIGINT)
        time.sleep(0.05)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert time.time() - sent < 60 and "Traceback" not in err
    if presses == 1:
        assert out.strip().splitlines()[-1].startswith("stopped: interrupted at step")
    else:
        assert err.strip().splitlines()[-1] == "stopped: interrupted twice; aborted at once"
    newest = _steps(workdir)[-1]
    assert catvae_jax.load(workdir, step=newest).step == newest  # complete and readable


# A full disk ----------------------------------------------------------------------------------


def _mount_tmpfs(path, size: str) -> None:
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)


def test_a_full_disk_is_one_line_exit_1_and_resumable(tmp_path):
    """A real full file system: a 0.8 MB tmpfs holds one tiny checkpoint (~0.5 MB), not two.
    (Needs root, as the CI machine runs.)"""
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, "800k")
    try:
        workdir = disk / "w"
        run = [*main_cmd(workdir, *TINY)[3:], "--config.num_epochs=3"]
        run += ["--config.checkpoint_every_steps=4", "--config.log_every_steps=1"]
        proc = run_cli("catvae_jax.main", *run)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and len(lines) == 1, proc.stderr[-3000:]
        assert lines[0].startswith("error: cannot write") and str(workdir) in lines[0]
        assert "No space left on device" in lines[0]
        assert _steps(workdir) == [4]  # the last complete checkpoint, intact
        assert catvae_jax.load(workdir, step="latest").step == 4

        subprocess.run(["mount", "-o", "remount,size=16m", str(disk)], check=True)
        proc = run_cli("catvae_jax.main", *run, measured=False)  # a resume: measured elsewhere
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "resumed from step 4" in proc.stdout
        lines = (workdir / "metrics.jsonl").read_text().splitlines()
        train = [json.loads(x)["step"] for x in lines if '"train_loss"' in x]
        assert train == list(range(1, 13))  # every step once: the failed attempt's 5..8 dropped
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_a_read_only_workdir_at_start_is_an_environment_failure(tmp_path):
    """Exit 1 as the README's table says (it was a UserError, exit 2), naming the lock file."""
    from conftest import tiny_config

    from catvae_jax.after_training import train_and_evaluate

    disk = tmp_path / "ro"
    _mount_tmpfs(disk, "1m")
    try:
        (disk / "w").mkdir()
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        with pytest.raises(EnvironmentFailure, match=r"cannot write .*/w/\.lock: Read-only file"):
            train_and_evaluate(tiny_config(), str(disk / "w"))
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_wrapped_storage_errors_are_recognised():
    orbax = ValueError(
        'RESOURCE_EXHAUSTED: Error writing local file "/w/checkpoints/8.orbax-checkpoint-tmp/'
        "state/_sharding\": Failed to write: No space left on device [os_error_code='28']"
    )
    wrapped = RuntimeError("save failed")
    wrapped.__cause__ = orbax
    failed = storage_error(wrapped)
    assert isinstance(failed, StorageError)
    assert str(failed).startswith("cannot write /w/checkpoints/8.orbax-checkpoint-tmp/state/")
    read_only = storage_error(OSError(30, "Read-only file system", "/w/metrics.jsonl"))
    assert str(read_only) == "cannot write /w/metrics.jsonl: Read-only file system"
    assert storage_error(ValueError("a bug")) is None


# Readers fall back past a damaged checkpoint --------------------------------------------------


def _damage(step_dir, kind: str) -> None:
    state = step_dir / "state"
    data = state / "ocdbt.process_0" / "d"
    biggest = max(data.iterdir(), key=lambda p: p.stat().st_size)
    if kind == "truncated":
        biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 2])
    elif kind == "deleted":
        biggest.unlink()
    else:
        (state / "_METADATA").unlink()


def _listing(workdir) -> list[str]:
    return sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*"))


def _damaged_copy(trained_workdir, tmp_path, kind: str):
    workdir = tmp_path / kind
    shutil.copytree(trained_workdir[0], workdir)
    newest = _steps(workdir)[-1]
    _damage(workdir / "checkpoints" / str(newest), kind)
    return workdir, newest


@pytest.fixture(params=["truncated", "deleted", "metadata"])
def damaged(request, trained_workdir, tmp_path):
    """A copy of the tiny workdir with its newest checkpoint damaged, and that step."""
    return _damaged_copy(trained_workdir, tmp_path, request.param)


def test_load_falls_back_past_a_damaged_checkpoint(damaged, capsys):
    workdir, newest = damaged
    before = _listing(workdir)
    older = _steps(workdir)[-2]
    assert catvae_jax.load(workdir, step="latest").step == older
    warning = capsys.readouterr().err.strip().splitlines()
    assert len(warning) == 1 and warning[0].startswith("warning: skipping unreadable checkpoint")
    assert str(workdir / "checkpoints" / str(newest)) in warning[0]
    with pytest.raises(UserError, match=f"checkpoint .*/{newest} is unreadable"):
        catvae_jax.load(workdir, step=newest)
    assert _listing(workdir) == before  # readers never move or delete anything


def test_best_falls_back_to_the_next_best(trained_workdir, tmp_path, capsys):
    from catvae_jax.train.checkpoint import Checkpoints

    workdir = tmp_path / "best"
    shutil.copytree(trained_workdir[0], workdir)
    ckpts = Checkpoints(workdir, read_only=True)
    ranked = ckpts.candidates("best")
    ckpts.close()
    assert sorted(ranked) == _steps(workdir) and len(ranked) >= 2
    _damage(workdir / "checkpoints" / str(ranked[0]), "truncated")
    assert catvae_jax.load(workdir).step == ranked[1]
    assert f"checkpoints/{ranked[0]} " in capsys.readouterr().err


@pytest.mark.parametrize(
    "command,args,kind",
    [  # every reader command goes through catvae_jax.load; each meets one kind of damage
        ("catvae_jax.generate", ["--n", "4"], "truncated"),
        ("catvae_jax.interpolate", ["--steps", "3", "--pairs", "2"], "deleted"),
        # --num_samples 0: the likelihood only (the default 1000 samples' metrics, LPIPS and
        # FD, take most of a minute and check nothing about the fallback)
        (
            "catvae_jax.evaluate",
            ["--iw_samples", "2", "--max_examples", "8", "--num_samples", "0"],
            "metadata",
        ),
    ],
)
def test_reader_commands_fall_back_and_refuse_an_unreadable_step(
    trained_workdir, tmp_path, command, args, kind
):
    workdir, newest = _damaged_copy(trained_workdir, tmp_path, kind)
    args = [*args, "--out", str(tmp_path / "out")]
    run = [command, "--workdir", str(workdir), "--step"]
    # unmeasured: catvae_jax.load's fallback is measured in process, the commands elsewhere
    proc, refused = run_cli_cases([(*run, "latest", *args), (*run, newest, *args)], measured=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    warnings = [x for x in proc.stderr.splitlines() if x.startswith("warning: skipping")]
    assert len(warnings) == 1 and "Traceback" not in proc.stderr
    proc = refused
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "is unreadable" in lines[0], proc.stderr


def test_serve_falls_back(damaged):
    from catvae_jax.serve.app import create_app

    workdir, newest = damaged
    assert create_app(str(workdir), step="latest") is not None
    with pytest.raises(UserError, match="is unreadable"):
        create_app(str(workdir), step=newest)
