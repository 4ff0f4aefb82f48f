"""The whole train_and_evaluate loop on a tiny config: learning, outputs, resume, loading."""

import json
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config

import catvae_jax
from catvae_jax.after_training import train_and_evaluate
from catvae_jax.errors import UserError
from catvae_jax.train import state as state_lib
from catvae_jax.train import steps


def _lines(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_training_lowers_the_loss_and_writes_outputs(trained_workdir):
    workdir, result = trained_workdir
    lines = _lines(workdir)
    train = [m for m in lines if "train_loss" in m]
    val = [m for m in lines if "val_loss" in m]
    assert train[-1]["train_loss"] < 0.9 * train[0]["train_loss"]
    assert val[-1]["val_loss"] < val[0]["val_loss"]
    assert result["step"] == 36 and len(val) == 3  # 3 epochs × 12 steps, one validation each
    for m in train:
        assert {"step", "epoch", "grad_norm", "learning_rate", "img_per_s"} <= set(m)
    lrs = np.array([m["learning_rate"] for m in train])  # cosine over the run's 36 steps
    assert np.all(np.diff(lrs) < 0) and lrs[-1] < 0.05 * lrs[0]  # (means of 4 steps)
    for name in ("samples.png", "reconstructions.png", "config.json"):
        assert (workdir / name).stat().st_size > 0
    config = json.loads((workdir / "config.json").read_text())
    assert config["image_size"] == 16 and config["dataset"]["name"] == "synthetic_cats"


def test_lr_schedules():
    config = tiny_config()
    cosine = [float(steps.lr_multiplier(config, s, 10)) for s in (0, 5, 10, 12)]
    assert cosine == pytest.approx([1.0, 0.5, 0.0, 0.0], abs=1e-6)  # 0 after the horizon
    traced = jax.jit(lambda s, t: steps.lr_multiplier(config, s, t))  # as in the step
    assert float(traced(np.int32(5), np.int32(10))) == pytest.approx(0.5, abs=1e-6)
    config.lr_schedule = "constant"
    assert float(steps.lr_multiplier(config, 7, 10)) == 1.0


def test_checkpoints_keep_best_and_two_latest(trained_workdir):
    workdir, _ = trained_workdir
    saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert saved[-1] == 36 and 2 <= len(saved) <= 3


def test_load_generates_deterministically(trained_workdir):
    workdir, _ = trained_workdir
    model = catvae_jax.load(workdir, step="latest")
    assert model.step == 36
    a, b = model.generate(4, seed=3), model.generate(4, seed=3)
    c = model.generate(4, seed=4)
    assert a.shape == (4, 16, 16, 3) and a.dtype == np.float32
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    x = np.random.default_rng(0).uniform(size=(2, 16, 16, 3)).astype(np.float32)
    mu, _ = model.encode(x)
    assert mu.shape == (2, 8) and model.decode(mu).shape == (2, 16, 16, 3)
    with pytest.raises(UserError):
        model.encode(np.zeros((2, 8, 8, 3)))


def test_load_errors_are_user_errors(tmp_path, trained_workdir):
    with pytest.raises(UserError, match="does not exist"):
        catvae_jax.load(tmp_path / "missing")
    with pytest.raises(UserError, match="no checkpoint at step"):
        catvae_jax.load(trained_workdir[0], step=5)


def test_a_moved_workdir_still_loads(tmp_path, trained_workdir):
    import shutil

    moved = tmp_path / "moved"
    shutil.copytree(trained_workdir[0], moved)
    assert catvae_jax.load(moved).generate(2).shape == (2, 16, 16, 3)


def test_resume_continues_from_the_saved_step(tmp_path, trained_workdir):
    import shutil

    workdir = tmp_path / "resume"
    shutil.copytree(trained_workdir[0], workdir)
    config = tiny_config()
    config.num_epochs = 4
    result = train_and_evaluate(config, str(workdir))
    assert result["step"] == 48
    logged = [m["step"] for m in _lines(workdir) if "train_loss" in m]
    assert logged[-1] == 48 and logged.count(40) == 1  # steps 37..48 trained once, after 36


def test_resume_refuses_a_changed_model_shape(tmp_path, trained_workdir):
    import shutil

    workdir = tmp_path / "changed"
    shutil.copytree(trained_workdir[0], workdir)
    config = tiny_config()
    config.model.z_dim = 4
    with pytest.raises(UserError, match=r"model\.z_dim"):
        train_and_evaluate(config, str(workdir))


def test_max_steps_stops_and_still_checkpoints(tmp_path):
    config = tiny_config()
    config.max_steps = 5
    result = train_and_evaluate(config, str(tmp_path / "short"))
    assert result["step"] == 5
    assert catvae_jax.load(tmp_path / "short", step="latest").step == 5


def test_nonfinite_loss_stops_at_the_step(tmp_path):
    from catvae_jax.train.loop import NonFiniteError

    config = tiny_config()
    config.learning_rate = 1e30
    config.grad_clip_norm = 0.0
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(NonFiniteError) as err:
        train_and_evaluate(config, str(tmp_path / "nan"))
    assert 1 <= err.value.step <= 36
    # A library caller gets its SIGTERM handler back (the run's finally also closes W&B, Orbax).
    assert signal.getsignal(signal.SIGTERM) is before


def test_the_lpips_term_trains_in_the_loop(tmp_path):
    config = tiny_config()
    config.image_size, config.max_steps, config.flow_prior = 32, 6, False
    config.loss.lpips_weight, config.loss.lpips_size = 1.0, 0  # LPIPS on the 32² images
    result = train_and_evaluate(config, str(tmp_path / "lpips"))
    assert result["step"] == 6 and np.isfinite(result["val_loss"])
    val = [r for r in _lines(tmp_path / "lpips") if "val_recon" in r][-1]
    pixels = 32 * 32 * 3
    lpips_part = val["val_recon"] - (1.0 - val["val_ssim"]) * pixels  # mean LPIPS × H·W·C
    assert 0.01 * pixels < lpips_part < pixels, val


def test_runs_of_another_lr_schedule_or_warmup_share_one_compiled_step():
    config = tiny_config()
    graphdef, state = state_lib.init_state(config, catvae_jax.model.networks.init_compiled(config))
    batch = np.zeros((config.batch_size, 16, 16, 3), np.uint8)
    other = config.copy_and_resolve_references()
    other.learning_rate, other.num_epochs, other.lr_schedule = 1e-5, 40, "constant"
    other.loss.kl_warmup_steps = 0
    programs = {  # each config's own step function, as each run builds it
        jax.jit(steps.make_train_step(graphdef, c, jax.random.key(0)), donate_argnums=0)
        .lower(state, batch, steps.schedule(c, total))
        .as_text()
        for c, total in ((config, 36), (other, 480))
    }
    assert len(programs) == 1  # lr, schedule, horizon and warm-up are arguments, not constants


def test_the_schedule_arguments_give_the_configs_lr_and_beta():
    """One compiled step, given each config's Schedule, uses that config's lr and β: at step 5
    a cosine over 36 steps and β warmed up over 10 (β/2), then a constant lr and full β."""
    config = tiny_config()
    graphdef, state = state_lib.init_state(config, catvae_jax.model.networks.init_compiled(config))
    step = jax.jit(steps.make_train_step(graphdef, config, jax.random.key(0)))
    batch = np.random.default_rng(0).integers(0, 256, (config.batch_size, 16, 16, 3), np.uint8)
    at = state.replace(step=jnp.int32(5))
    out = {}
    for kind, warmup in (("cosine", 10), ("constant", 0)):
        config.lr_schedule, config.loss.kl_warmup_steps = kind, warmup
        _, out[kind] = step(at, batch, steps.schedule(config, 36))
        want = config.learning_rate * float(steps.lr_multiplier(config, 5, 36))
        assert float(out[kind]["learning_rate"]) == pytest.approx(want, rel=1e-6)
    assert float(out["cosine"]["learning_rate"]) < float(out["constant"]["learning_rate"])
    kl = float(out["cosine"]["train_kl"])  # the same params, noise and batch: the same KL
    assert float(out["constant"]["train_kl"]) == pytest.approx(kl, rel=1e-6) and kl > 0
    added = float(out["constant"]["train_loss"]) - float(out["cosine"]["train_loss"])
    assert added == pytest.approx(0.5 * config.loss.beta * kl, rel=1e-3)
