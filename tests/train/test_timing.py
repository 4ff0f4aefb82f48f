"""Where a run's time goes (catvae_jax/train/timing.py): exclusive parts, compilation taken out,
timing.json of a tiny run; where the persistent compilation cache lives (compile_cache.py; a
second run that compiles nothing: tests/e2e/test_compile_cache.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import pytest
from conftest import REPO

from catvae_jax.train import timing


def _check_sums(summary: dict) -> None:
    parts = summary["parts"]
    assert set(parts) == set(timing.PARTS)
    assert all(v >= 0 for v in parts.values()), parts
    assert sum(parts.values()) <= summary["wall_s"] + 0.01  # rounding of 12 rows


def test_parts_are_exclusive_and_compilation_is_taken_out_of_them():
    breakdown = timing.Breakdown()
    try:
        with breakdown.part("validation"):
            time.sleep(0.05)
            with breakdown.part("checkpoint"):  # pauses validation
                time.sleep(0.1)
            f = jax.jit(lambda x: jnp.sin(x) * 3.0 + time.time_ns() % 1)  # a new program
            f(jnp.ones(7)).block_until_ready()
    finally:
        breakdown.close()
    summary = breakdown.summary()
    _check_sums(summary)
    parts = summary["parts"]
    assert 0.1 <= parts["checkpoint"] < 0.3
    assert 0.05 <= parts["validation"] < 0.1 + parts["compile"]
    assert parts["compile"] > 0 and summary["programs"]["jit(<lambda>)"]["count"] == 1
    assert summary["compile_phases"]["trace"] > 0
    assert "validation" in timing.table(summary)


def test_a_run_writes_its_time_breakdown(trained_workdir):
    """The session's tiny run (3 epochs × 12 steps, flow prior and pictures at the end)."""
    workdir, _ = trained_workdir
    summary = json.loads((workdir / "timing.json").read_text())
    _check_sums(summary)
    parts = summary["parts"]
    for name in ("data", "model_init", "train_steps", "validation", "checkpoint", "prior_fit"):
        assert parts[name] > 0, name
    assert parts["pictures"] > 0 and parts["startup"] == 0  # a library call: no start-up row
    assert summary["counts"]["train_steps"] == 36 and summary["steps_per_call"] == 1
    programs = summary["programs"]
    assert programs["jit(train_step)"]["count"] == 1  # no recompilation after the first step
    assert programs["jit(eval_step)"]["count"] == 1
    assert 0 < summary["outside_train_steps"] < 1


def _env_without_cache_settings(tmp_path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    env.pop("COVERAGE_PROCESS_CONFIG", None)  # two compile-bound runs: unmeasured
    return {**env, "XDG_CACHE_HOME": str(tmp_path / "xdg")}


@pytest.mark.parametrize(
    "env,expected",
    [
        ({}, "xdg/catvae_jax/jax"),
        ({"CATVAE_COMPILATION_CACHE": "0"}, "None"),
        ({"JAX_COMPILATION_CACHE_DIR": "/somewhere/else"}, "/somewhere/else"),
    ],
)
def test_the_cache_directory_and_its_switches(tmp_path, env, expected):
    code = """
import jax
from catvae_jax import compile_cache
print(compile_cache.enable(), jax.config.jax_persistent_cache_min_compile_time_secs)
"""
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**_env_without_cache_settings(tmp_path), **env},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    where, min_time = proc.stdout.split()
    assert where.endswith(expected) if expected != "None" else where == "None"
    assert float(min_time) == (0.0 if expected.startswith("xdg") else 1.0)
