"""Fine-tuning: `config.init_from` starts a new run from another model's parameters."""

import numpy as np
import pytest
from conftest import run_cli_cases, tiny_config

import catvae_jax
from catvae_jax import model_file, sharing
from catvae_jax.errors import UserError
from catvae_jax.model import networks
from catvae_jax.train import init_from, loop, timing
from catvae_jax.train import state as state_lib
from catvae_jax.train import workdir as workdir_lib


def _step0_params(config, workdir):
    """The parameters a run of `config` in `workdir` starts its first step from."""
    run = loop._Run(config, workdir_lib.create(workdir), None, None, timing.Breakdown())
    try:
        assert int(run.state.step) == 0
        return run.state.params, run.state.ema
    finally:
        run.ckpts.close()
        run.writer.close()
        run.train_data.close()


def _equal(a, b) -> bool:
    names_a, names_b = model_file.param_names(a), model_file.param_names(b)
    return [n for n, _ in names_a] == [n for n, _ in names_b] and all(
        np.array_equal(np.asarray(x), np.asarray(y))
        for (_, x), (_, y) in zip(names_a, names_b, strict=True)
    )


@pytest.mark.parametrize("source", ["workdir", "workdir:latest", "file"])
def test_a_run_starts_from_another_models_parameters(trained_workdir, tmp_path, source):
    a, _ = trained_workdir
    spec = {"workdir": str(a), "workdir:latest": f"{a}:latest"}.get(source)
    if source == "file":
        spec = str(tmp_path / "a.catvae")
        sharing.export(a, spec)
    config = tiny_config()
    config.init_from = spec
    config.ema_decay = 0.9
    params, ema = _step0_params(config, tmp_path / "b")
    wanted = catvae_jax.load(a, "latest" if source == "workdir:latest" else "best").params
    assert _equal(params, wanted) and _equal(ema, wanted)  # the EMA restarts from them
    if source == "workdir":  # without init_from: a random start
        scratch, _ = _step0_params(tiny_config(), tmp_path / "c")
        assert not _equal(scratch, wanted)


def test_a_short_fine_tuning_run_trains_and_resumes_without_rereading(trained_workdir, tmp_path):
    from catvae_jax.after_training import train_and_evaluate

    config = tiny_config()
    config.init_from, config.max_steps, config.flow_prior = str(trained_workdir[0]), 4, False
    result = train_and_evaluate(config, str(tmp_path / "b"))
    assert result["step"] == 4 and np.isfinite(result["val_loss"])
    # the source is gone: a resumed run does not read it again
    config.init_from, config.max_steps = str(tmp_path / "gone"), 6
    assert train_and_evaluate(config, str(tmp_path / "b"))["step"] == 6


def test_a_mismatch_names_the_first_parameter(trained_workdir):
    wider = tiny_config()
    wider.model.widths = (8, 32)
    _, abstract = state_lib.abstract_state(wider, lambda: networks.init_eager(wider))
    with pytest.raises(UserError, match=r"parameter 'dec_blocks/0/0/conv1/bias' is \[16\] there"):
        init_from.start_params(str(trained_workdir[0]), abstract.params)
    assert init_from.split_spec("w:12") == ("w", 12)
    assert init_from.split_spec("w:best") == ("w", "best")
    assert init_from.split_spec("w") == ("w", "best")


def test_cli_errors_are_one_line(trained_workdir, tmp_path):
    tiny = [
        "--config", "configs/quickstart.py", "--config.image_size=16", "--config.batch_size=8",
        "--config.model.z_dim=8", "--config.data.num_train=32", "--config.data.num_validation=8",
        "--config.wandb.mode=disabled", "--config.progress_bar=False",
        "--config.loss.lpips_weight=0", "--config.model.name=resvae",
    ]  # fmt: skip
    a = trained_workdir[0]
    cases = [  # quickstart's widths (16, 32, 64, 128) against the tiny run's (8, 16)
        ("catvae_jax.main", *tiny, "--workdir", tmp_path / "b", f"--config.init_from={a}"),
        ("catvae_jax.main", *tiny, "--workdir", tmp_path / "c", f"--config.init_from={a}:99"),
        ("catvae_jax.main", *tiny, "--workdir", tmp_path / "d", "--config.init_from=pretrained:x"),
        ("catvae_jax.main", *tiny, "--workdir", tmp_path / "e", f"--config.init_from={a}/nope"),
    ]
    wants = ["does not fit this model: parameter", "no checkpoint at step 99",
             "no pretrained model 'x'", "neither a workdir nor a model file"]  # fmt: skip
    for proc, want in zip(run_cli_cases(cases), wants, strict=True):
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and want in lines[0], proc.stderr[-2000:]
