"""The prepared measurements run on CPU with tiny settings, so they never rot:
benchmarks/accelerator.py --quick and benchmarks/loop_overhead.py."""

from __future__ import annotations

import json
import sys

from conftest import REPO, subprocess_env
from test_cli import TINY


def _run(*args: str, timeout: int = 400):
    import subprocess

    return subprocess.run([sys.executable, *args], cwd=REPO, env=subprocess_env(measured=False),
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def test_the_accelerator_check_runs_quick_on_cpu(tmp_path):
    out = tmp_path / "result.json"
    proc = _run("benchmarks/accelerator.py", "--quick", "--root", str(tmp_path / "runs"),
                "--out", str(out), "--budget", "360")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["quick"] and report["environment"]["backend"] == "cpu"
    steps = {s["name"]: s for s in report["steps"]}
    assert all(s["status"] == "ok" for s in steps.values()), steps
    for name in ("default", "exp1 k16 bf16"):
        run = steps[name]
        assert run["step"] == 8 and run["steady_img_per_s"] > 0
        assert run["timing"]["parts"]["compile"] > 0 and run["timing"]["compiles"] > 0
    assert steps["exp1 k16 bf16"]["timing"]["steps_per_call"] == 16
    assert "ssim" in steps["default evaluate"]["eval"]
    arms = [b["arm"] for b in steps["bench default model"]["bench"]]
    assert arms == ["tiny resvae 32² float32", "tiny resvae 32² bfloat16"]
    assert "| default |" in report["table"] and "| model |" in report["table"]


def test_loop_overhead_prints_a_runs_breakdown(tmp_path):
    out = tmp_path / "breakdown.json"
    proc = _run("benchmarks/loop_overhead.py", "--config", "configs/quickstart.py", "--out",
                str(out), *TINY, "--config.max_steps=3", "--config.flow_prior=False")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "time breakdown:" in proc.stdout and "outside train steps:" in proc.stdout
    summary = json.loads(out.read_text())
    assert summary == json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["counts"]["train_steps"] == 3 and summary["parts"]["startup"] > 0
    assert summary["process_s"] >= summary["wall_s"] > 0
