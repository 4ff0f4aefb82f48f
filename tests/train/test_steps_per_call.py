"""config.steps_per_call: k train steps per compiled call, between log/validation/checkpoint
steps; the run's steps, batches and resume are those of k = 1."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from conftest import tiny_config

import catvae_jax
from catvae_jax import data
from catvae_jax.train import loop


def _config(k: int):
    c = tiny_config()
    c.steps_per_call, c.num_epochs, c.flow_prior = k, 2, False  # 24 steps, validated at 12, 24
    c.log_every_steps = 5  # calls of 4, 1 (to 5), 4, 1 (to 10), 2 (to 12), ...
    return c


class _StopAt12(Exception):
    pass


def _stop_at_12(step, metrics):
    if step == 12:
        raise _StopAt12


def _steps_logged(workdir) -> list[int]:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [m["step"] for m in map(json.loads, lines) if "train_loss" in m]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """k = 4 uninterrupted; k = 4 stopped at its first validation and resumed; k = 1."""
    root = tmp_path_factory.mktemp("steps_per_call")
    whole = loop.train_and_evaluate(_config(4), str(root / "whole"))
    with pytest.raises(_StopAt12):
        loop.train_and_evaluate(_config(4), str(root / "resumed"), on_validation=_stop_at_12)
    resumed = loop.train_and_evaluate(_config(4), str(root / "resumed"))
    single = loop.train_and_evaluate(_config(1), str(root / "single"))
    return root, whole, resumed, single


def test_a_resumed_run_equals_an_uninterrupted_one(runs):
    root, whole, resumed, _ = runs
    assert whole["step"] == resumed["step"] == 24
    assert resumed["params_sha256"] == whole["params_sha256"]
    assert _steps_logged(root / "whole") == [5, 10, 12, 15, 20, 24]
    assert _steps_logged(root / "resumed") == [5, 10, 12, 15, 20, 24]


def test_k_steps_per_call_train_like_one(runs):
    """The same batches and steps; XLA compiles a loop body apart from a lone step, so the
    values agree to float rounding (amplified by Adam's normalised updates over 24 steps)."""
    root, whole, _, single = runs
    assert single["step"] == 24
    assert whole["val_loss"] == pytest.approx(single["val_loss"], rel=0.05)
    a = catvae_jax.load(root / "whole", "latest").params
    b = catvae_jax.load(root / "single", "latest").params
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=0.05)
    lines = {}
    for name in ("whole", "single"):
        rows = (root / name / "metrics.jsonl").read_text().splitlines()
        lines[name] = [m for m in map(json.loads, rows) if "train_loss" in m]
    first_k, first_1 = lines["whole"][0], lines["single"][0]  # the mean of steps 1–5
    assert first_k["train_loss"] == pytest.approx(first_1["train_loss"], rel=1e-4)


def test_one_program_per_job_and_no_recompilation(runs):
    root, *_ = runs
    for name, train in (("whole", "jit(multi_step)"), ("single", "jit(train_step)")):
        programs = json.loads((root / name / "timing.json").read_text())["programs"]
        assert programs[train]["count"] == 1, programs  # calls of 1, 2 and 4 steps: one program
        assert programs["jit(eval_step)"]["count"] == 1
        assert programs["jit(_draw)"]["count"] == 1


def test_stacked_batches_are_the_batch_plans():
    config = tiny_config()
    mesh = loop.make_mesh(config.batch_size)
    train = data.train_data(config, mesh)
    stacked = np.asarray(train.batches(10, 3, 4))  # steps 10, 11 | 12, 13: across an epoch
    one_by_one = np.stack([np.asarray(train.batch(10 + i)) for i in range(4)])
    np.testing.assert_array_equal(stacked, one_by_one)


def test_calls_end_at_every_log_validation_and_checkpoint_step():
    cadence = loop.Cadence(steps_per_epoch=12, total_steps=30, log_every=5, eval_every=12,
                           checkpoint_every=12)  # fmt: skip
    step, ends = 0, []
    while step < cadence.total_steps:
        step += cadence.call_length(step, 4)
        ends.append(step)
    assert ends == [4, 5, 9, 10, 12, 15, 19, 20, 24, 25, 29, 30]
    assert cadence.call_length(0, 1) == 1


def test_steps_per_call_must_be_a_positive_integer():
    from catvae_jax.config import validate
    from catvae_jax.errors import UserError

    config = tiny_config()
    for bad in (0, -2, True):
        config.steps_per_call = bad
        with pytest.raises(UserError, match="steps_per_call"):
            validate(config)
