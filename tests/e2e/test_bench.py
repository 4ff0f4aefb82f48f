"""The train-step benchmarks: catvae_jax.bench and benchmarks/torch_original.py print JSON."""

from __future__ import annotations

import argparse
import json
import os
import runpy
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, run_cli, subprocess_env, tiny_config

sys.path.insert(0, os.path.join(REPO, "benchmarks"))

from catvae_jax.bench import bench_config
from catvae_jax.errors import UserError

KEYS = {"img_per_s", "ms_per_step", "model", "batch", "image_size", "loss", "devices", "backend"}
JAX_KEYS = KEYS | {"gflop_per_step", "gb_per_step", "tflop_per_s", "gb_per_s", "device_kind"}
TINY = [
    "--config", "configs/default.py", "--config.image_size=16", "--config.model.z_dim=8",
    "--config.model.widths=(8,8,8,8)", "--config.wandb.mode=disabled",
    "--config.loss.lpips_weight=0", "--config.model.name=resvae",
]  # fmt: skip


def _last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def test_bench_cli_prints_json() -> None:
    proc = run_cli("catvae_jax.bench", *TINY, "--loss", "mse", "--steps", "2", "--batch", "4")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = _last_json(proc.stdout)
    assert set(result) >= JAX_KEYS
    assert (result["model"], result["batch"], result["image_size"]) == ("resvae", 4, 16)
    assert (result["loss"], result["backend"], result["devices"]) == ("mse", "cpu", 1)
    assert len(result["repeat_ms"]) == 3 and result["ms_per_step"] in result["repeat_ms"]
    assert result["img_per_s"] == pytest.approx(4000 / result["ms_per_step"], rel=0.01)


def test_bench_bad_loss_is_one_line_error() -> None:
    proc = run_cli("catvae_jax.bench", *TINY, "--loss", "l2")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "loss" in lines[0]


def test_bench_config_keeps_only_the_chosen_term() -> None:
    c = tiny_config()
    c.loss.l1_weight = 0.5
    ssim, mse = bench_config(c, "ssim", batch=16), bench_config(c, "mse")
    assert (ssim.loss.ssim_weight, ssim.loss.mse_weight, ssim.loss.l1_weight) == (1, 0, 0)
    assert (mse.loss.ssim_weight, mse.loss.mse_weight, mse.batch_size) == (0, 1, c.batch_size)
    assert ssim.batch_size == 16 and c.loss.l1_weight == 0.5  # the input is not changed
    with pytest.raises(UserError, match="loss"):
        bench_config(c, "huber")


def test_torch_original_prints_the_same_json() -> None:
    pytest.importorskip("torch")
    proc = subprocess.run(
        [sys.executable, os.path.join("benchmarks", "torch_original.py"), "--config",
         "configs/exp1.py", "--loss", "mse", "--steps", "1", "--repeats", "1", "--batch", "2"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = _last_json(proc.stdout)
    assert set(result) >= KEYS
    assert (result["model"], result["batch"], result["loss"]) == ("vae_cats_v1", 2, "mse")
    assert result["ms_per_step"] > 0


@pytest.mark.parametrize("loss", ["ssim", "mse"])
def test_torch_loss_is_the_catvae_jax_loss(loss: str) -> None:
    """The PyTorch benchmark times the same loss as catvae_jax.model.losses (kornia vs dm-pix)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("kornia")
    import jax.numpy as jnp
    import numpy as np
    from torch_original import vae_loss

    from catvae_jax.model import losses

    rng = np.random.default_rng(0)
    x = rng.uniform(size=(3, 24, 24, 3)).astype(np.float32)
    x_hat = np.clip(x + 0.2 * rng.standard_normal(x.shape), 0, 1).astype(np.float32)
    mu, logvar = (rng.standard_normal((3, 8)).astype(np.float32) for _ in range(2))
    cfg = bench_config(tiny_config(), loss).loss
    recon, _ = losses.reconstruction(jnp.asarray(x), jnp.asarray(x_hat), cfg)
    want = float(jnp.mean(recon + losses.kl_divergence(jnp.asarray(mu), jnp.asarray(logvar))))
    nchw = lambda a: torch.from_numpy(a.transpose(0, 3, 1, 2).copy())
    got = vae_loss(nchw(x), nchw(x_hat), torch.from_numpy(mu), torch.from_numpy(logvar), loss)
    assert float(got) == pytest.approx(want, rel=1e-4)


def test_benchmark_in_process_with_roofline_table() -> None:
    """benchmarks/roofline.py's measure → catvae_jax.bench.benchmark, with given peaks."""
    import roofline

    c = tiny_config()
    (result,) = roofline.measure({"tiny": c}, steps=1, repeats=2, peak_tflops=2.0, peak_gbps=50.0)
    assert result["batch"] == c.batch_size and result["loss"] == "ssim"
    assert len(result["repeat_ms"]) == 2
    assert min(result["repeat_ms"]) <= result["ms_per_step"] <= max(result["repeat_ms"])
    assert result["compile_s"] > 0 and result["img_per_s"] > 0
    # XLA counts the step's work: at least the forward convolutions of 8 images.
    assert result["gflop_per_step"] > 0.001 and result["gb_per_step"] > 0
    assert result["compute_roofline_fraction"] == pytest.approx(
        result["tflop_per_s"] / 2.0, rel=0.01, abs=1e-4
    )
    line = roofline.table([result]).splitlines()[-1]
    assert line.startswith(f"| tiny | 1 × {result['device_kind']} | ")
    assert line.count("%") == 2


def test_roofline_fractions_and_xla_cost_of_a_matmul() -> None:
    import jax
    import jax.numpy as jnp

    from catvae_jax.bench import roofline, xla_cost

    compiled = jax.jit(jnp.matmul).lower(jnp.ones((64, 128)), jnp.ones((128, 32))).compile()
    flops, nbytes = xla_cost(compiled)
    assert flops == 2 * 64 * 128 * 32
    assert nbytes >= 4 * (64 * 128 + 128 * 32 + 64 * 32)
    out = roofline({"ms_per_step": 1000.0}, 2e12, 1e9, peak_tflops=4.0, peak_gbps=2.0)
    assert (out["tflop_per_s"], out["gb_per_s"]) == (2.0, 1.0)
    assert (out["compute_roofline_fraction"], out["memory_roofline_fraction"]) == (0.5, 0.5)
    assert "compute_roofline_fraction" not in roofline({"ms_per_step": 1.0}, 1.0, 1.0)


def test_time_to_quality_compares_at_the_level_every_arm_reached() -> None:
    import time_to_quality as ttq

    arms = [
        {"arm": "exp1", "best_val_ssim": 0.6, "curve": [[1.0, 20, 0.5], [3.0, 40, 0.6]]},
        {"arm": "default", "best_val_ssim": 0.7, "curve": [[2.0, 20, 0.61], [4.0, 40, 0.7]]},
    ]
    line = ttq.common_level(arms)
    assert "to val_ssim 0.6000" in line and "exp1 3.0 min (1.5×)" in line
    assert "default 2.0 min (1.0×)" in line


def test_time_to_quality_validates_both_arms_after_the_same_number_of_images() -> None:
    import time_to_quality as ttq

    args = argparse.Namespace(eval_every=0, eval_images=1280, set=[])
    for arm in ("exp1", "default"):
        config = runpy.run_path(os.path.join(REPO, f"configs/{arm}.py"))["get_config"]()
        assert ttq.eval_every(arm, args) * config.batch_size == 1280
    args.set = ["--config.batch_size=32", "--config.batch_size=8"]  # the last override wins
    assert ttq.eval_every("default", args) == 160
    args.eval_every = 7  # explicit steps win over images
    assert ttq.eval_every("exp1", args) == ttq.eval_every("default", args) == 7


def test_time_to_quality_runs_an_arm_to_the_target(tmp_path) -> None:
    tiny = [
        "--config.image_size=16", "--config.model.z_dim=8", "--config.model.widths=(8,16)",
        "--config.model.name=resvae", "--config.batch_size=8", "--config.data.num_train=32",
        "--config.data.num_validation=8",
        "--config.data.num_test=8", "--config.num_epochs=2",
        "--config.loss.lpips_weight=0",  # AlexNet on 128² resizes: slow, tested apart
    ]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "benchmarks/time_to_quality.py", "--arms", "default", "--target", "0.01",
         "--eval_every", "2", "--cap_min", "3", "--workdir_root", str(tmp_path),
         *[f"--set={flag}" for flag in tiny]],
        cwd=REPO, env=subprocess_env(measured=False), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (arm,) = _last_json(proc.stdout)["arms"]
    assert arm["reached"] and arm["stopped_by"] == "target" and arm["step"] == 2
    assert arm["curve"][0][1] == 2 and arm["seconds"] > 0
    assert arm["best_val_ssim"] == max(ssim for _, _, ssim in arm["curve"])
    assert "| default | yes |" in proc.stdout


def test_kl_per_dimension_is_the_models_kl_split_by_dimension(trained_workdir):
    """benchmarks/kl_per_dim.py: its dimensions sum to the training loss's KL of the same
    posteriors, and its summary counts the dimensions under each threshold."""
    import jax.numpy as jnp
    import kl_per_dim

    import catvae_jax
    from catvae_jax import data
    from catvae_jax.model import losses

    model = catvae_jax.load(trained_workdir[0])
    images = data.load_split(model.config, "validation")[:8]
    kl = kl_per_dim.kl_per_dimension(model, images)
    mu, logvar = model.encode(images.astype(np.float32) / 255.0)
    want = np.mean(losses.kl_divergence(jnp.asarray(mu), jnp.asarray(logvar)))
    assert kl.shape == (8,) and (kl >= 0).all()
    np.testing.assert_allclose(kl.sum(), want, rtol=1e-5)
    line = kl_per_dim.summary(np.array([0.01, 0.2, 0.7, 3.0]))
    assert line == {"z_dim": 4, "kl_total": 3.91, "kl_min": 0.01, "kl_median": 0.45,
                    "kl_max": 3.0, "dims_under_0.05": 1, "dims_under_0.1": 1,
                    "dims_under_0.5": 2, "dims_under_1": 3}  # fmt: skip


def test_seeds_table_gives_each_run_and_the_mean_and_sd(tmp_path) -> None:
    """benchmarks/seeds.py: one row per run's eval.json, then mean ± sample sd; a key a run
    lacks is "—" there and left out of the mean."""
    import seeds

    runs = []
    for i, (fd, fd_vgg) in enumerate([(30.0, 80.0), (32.0, 90.0), (34.0, None)]):
        run = tmp_path / f"seed_{i}"
        run.mkdir()
        result = {"sampler": "gmm", "fd": fd, "recall": 0.1 * (i + 1)}
        if fd_vgg is not None:
            result["fd_vgg"] = fd_vgg
        (run / "eval.json").write_text(json.dumps(result))
        runs.append(str(run))
    lines = seeds.table(runs).splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    column = {
        name: header.index(name) for name in ("FD AlexNet", "recall", "FD VGG16", "KID VGG16")
    }
    assert [r[0] for r in rows] == ["seed_0", "seed_1", "seed_2", "mean ± sd (3)"]
    assert [r[column["FD VGG16"]] for r in rows[:3]] == ["80.00", "90.00", "—"]
    assert rows[3][column["FD AlexNet"]] == "32.00 ± 2.00"
    assert rows[3][column["recall"]] == "0.200 ± 0.100"
    assert rows[3][column["FD VGG16"]] == "85.00 ± 7.07"  # two runs have it
    assert rows[3][column["KID VGG16"]] == "—"


def test_seeds_commands_train_with_the_seed_last_then_evaluate() -> None:
    import seeds

    train, evaluate = seeds.commands(
        "configs/quickstart.py", ["--config.num_epochs=1"], 7, "/w", 500
    )
    assert train[1:] == [
        "-m", "catvae_jax.main", "--config", "configs/quickstart.py", "--workdir", "/w",
        "--config.num_epochs=1", "--config.seed=7",
    ]  # fmt: skip
    assert evaluate[1:] == [
        "-m", "catvae_jax.evaluate", "--workdir", "/w", "--nolikelihood", "--num_samples", "500",
    ]  # fmt: skip
