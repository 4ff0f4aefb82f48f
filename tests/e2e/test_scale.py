"""Scale and faults across processes: 2-process training, and exact resume after SIGKILL."""

import json
import random
import signal
import socket
import subprocess
import time

import numpy as np
from conftest import REPO, main_cmd, subprocess_env
from test_cli import TINY

import catvae_jax

# 32 training images, batch 8: 4 steps an epoch; 4 epochs = 16 steps, a checkpoint every 4.
RUN = [
    *TINY,
    "--config.num_epochs=4",
    "--config.checkpoint_every_steps=4",
    "--config.log_every_steps=1",
]


UNMEASURED = subprocess_env(measured=False)  # conftest.subprocess_env says why


def _cmd(workdir, *extra):
    return main_cmd(workdir, *RUN, *extra)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _params(workdir, ema: bool = True):
    model = catvae_jax.load(workdir, step="latest", ema=ema)
    return model.step, [np.asarray(x) for x in __import__("jax").tree.leaves(model._params)]


def test_two_processes_train_identical_parameters_and_checkpoint(tmp_path):
    workdir, port = tmp_path / "mp", _free_port()
    procs = [
        subprocess.Popen(
            _cmd(
                workdir, f"--coordinator=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"
            ),
            cwd=REPO,
            env=UNMEASURED,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=400) for p in procs]
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    digests = [out.split("params sha256 ")[1].split()[0] for out, _ in outs]
    assert digests[0] == digests[1]
    assert "devices: 2 × cpu (2 processes)" in outs[0][0]
    assert "done: step 16" in outs[0][0] and "done:" not in outs[1][0]  # only process 0 reports
    step, _ = _params(workdir)
    assert step == 16


EMA = "--config.ema_decay=0.9"  # the EMA of the parameters is part of the state resumed


def test_sigkill_then_rerun_gives_bit_identical_parameters(tmp_path):
    straight = tmp_path / "straight"
    proc = subprocess.run(
        _cmd(straight, EMA), cwd=REPO, env=UNMEASURED, capture_output=True, text=True, timeout=400
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    killed = tmp_path / "killed"
    kill_after = random.Random().randint(5, 11)  # a step after the first checkpoint (step 4)
    proc = subprocess.Popen(
        _cmd(killed, EMA),
        cwd=REPO,
        env=UNMEASURED,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics, first_ckpt = killed / "metrics.jsonl", killed / "checkpoints" / "4"
    deadline, trained = time.time() + 300, 0
    while time.time() < deadline and proc.poll() is None:
        lines = metrics.read_text().splitlines() if metrics.exists() else []
        trained = sum('"train_loss"' in line for line in lines)
        if trained >= kill_after and first_ckpt.exists():  # the step-4 checkpoint is committed
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    print(f"killed at step {trained} of 16 (aimed at {kill_after})")
    assert 4 < trained < 16
    assert f'"pid": {proc.pid}' in (killed / ".lock").read_text()  # the dead run's lock is left
    rerun = subprocess.run(
        _cmd(killed, EMA), cwd=REPO, env=UNMEASURED, capture_output=True, text=True, timeout=400
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]  # ... and does not block
    assert "resumed from step" in rerun.stdout
    # metrics.jsonl tells one history: the killed attempt's lines after its checkpoint dropped
    lines = [json.loads(x) for x in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines if "train_loss" in m] == list(range(1, 17))
    assert [m["step"] for m in lines if "val_loss" in m] == [4, 8, 12, 16]

    assert (killed / "checkpoints" / "16" / "ema").is_dir()
    for ema in (True, False):  # the EMA and the raw parameters, each bit-identical
        step_a, params_a = _params(straight, ema)
        step_b, params_b = _params(killed, ema)
        assert step_a == step_b == 16
        for a, b in zip(params_a, params_b, strict=True):
            assert np.array_equal(a, b)
