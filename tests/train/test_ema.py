"""EMA of the parameters: the update, checkpointing, default use, and workdirs without one."""

from __future__ import annotations

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config

import catvae_jax
from catvae_jax.after_training import train_and_evaluate
from catvae_jax.train import steps
from catvae_jax.train.loop import make_mesh, validation_metrics


def _leaves(model) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(model.params)]


def test_update_ema_warms_up_then_uses_the_decay():
    ema, params = {"w": jnp.zeros(3)}, {"w": jnp.ones(3)}
    early = steps.update_ema(ema, params, jnp.int32(0), 0.999)  # d = min(0.999, 1/10)
    np.testing.assert_allclose(early["w"], 0.9, rtol=1e-6)
    late = steps.update_ema(ema, params, jnp.int32(10**6), 0.5)  # d = 0.5
    np.testing.assert_allclose(late["w"], 0.5, rtol=1e-6)


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory):
    config = tiny_config()
    config.ema_decay = 0.9
    config.num_epochs = 1
    workdir = tmp_path_factory.mktemp("ema") / "w"
    return workdir, config, train_and_evaluate(config, str(workdir))


def test_ema_is_checkpointed_and_used_by_default(ema_run):
    workdir, config, result = ema_run
    step = result["step"]
    assert (workdir / "checkpoints" / str(step) / "ema").is_dir()
    ema, raw = catvae_jax.load(workdir, "latest"), catvae_jax.load(workdir, "latest", ema=False)
    assert ema.step == raw.step == step
    assert any(not np.array_equal(a, b) for a, b in zip(_leaves(ema), _leaves(raw), strict=True))
    assert raw.workdir is None  # the workdir's cached samplers belong to the EMA
    # The run validated the EMA, not the raw parameters.
    from catvae_jax.data import load_split

    eval_step = jax.jit(steps.make_eval_step(ema.graphdef, config))
    key = jax.random.fold_in(jax.random.key(config.seed), 2)
    split = load_split(config, "validation")
    with jax.set_mesh(make_mesh()):
        on_ema, on_raw = (
            validation_metrics(eval_step, m.params, split, config.batch_size, make_mesh(), key)
            for m in (ema, raw)
        )
    assert result["val_loss"] == pytest.approx(on_ema["val_loss"], rel=1e-5)
    assert on_raw["val_loss"] != pytest.approx(on_ema["val_loss"], rel=1e-5)


def test_workdir_from_before_ema_loads_raw_and_resumes_with_ema(trained_workdir, tmp_path, capsys):
    workdir = tmp_path / "old"
    shutil.copytree(trained_workdir[0], workdir)
    path = workdir / "config.json"
    old = json.loads(path.read_text())
    del old["ema_decay"]  # as written before EMA existed
    path.write_text(json.dumps(old))
    default, raw = catvae_jax.load(workdir), catvae_jax.load(workdir, ema=False)
    for a, b in zip(_leaves(default), _leaves(raw), strict=True):
        assert np.array_equal(a, b)

    config = tiny_config()
    config.ema_decay = 0.9
    config.num_epochs = 4
    result = train_and_evaluate(config, str(workdir))
    assert result["step"] == 48
    assert "checkpoint 36 has no EMA: it starts from its parameters" in capsys.readouterr().out
    assert not list((workdir / "checkpoints").glob("unreadable-*"))  # not taken for damage
    assert (workdir / "checkpoints" / "48" / "ema").is_dir()
