"""The training CLI: config errors are one line with exit code 2; a real tiny run succeeds."""

import pytest
from conftest import run_cli

TINY = [
    "--config.image_size=16",
    "--config.batch_size=8",
    "--config.model.z_dim=8",
    "--config.model.widths=(8,16,16,16)",
    "--config.data.num_train=32",
    "--config.data.num_validation=8",
    "--config.num_epochs=1",
    "--config.wandb.mode=disabled",
    "--config.progress_bar=False",
    "--config.loss.lpips_weight=0",  # AlexNet on 128² resizes of 16² images: slow, and tested apart
]


@pytest.mark.parametrize(
    "override,named",
    [
        ("--config.nonexistent=1", "nonexistent"),
        ("--config.model.nope=3", "model.nope"),
        ("--config.batch_size=abc", "batch_size"),
        ("--config.batch_size=-4", "batch_size"),
        ("--config=configs/missing.py", "configs/missing.py"),
        ("--config.model.widths=(8,0)", "model.widths"),
        ("--config.num_eval_images=0", "num_eval_images"),
    ],
)
def test_config_errors_are_one_line_with_exit_2(tmp_path, override, named):
    proc = run_cli(
        "catvae_jax.main",
        "--config",
        "configs/quickstart.py",
        "--workdir",
        str(tmp_path / "w"),
        override,
    )
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error:") and named in errors[0]
    assert "Traceback" not in proc.stderr + proc.stdout


@pytest.mark.parametrize("command,flags", [("main", ["--workdir", "w"]), ("bench", [])])
def test_an_unknown_field_of_the_default_config_is_one_line(command, flags):
    """Without --config, ml_collections loads the default and types the overrides while it
    defines the flag (at import): an unknown field there is the same one-line error, exit 2."""
    proc = run_cli(f"catvae_jax.{command}", *flags, "--config.nonexistent=1")
    _one_line_error(proc, "unknown config field 'nonexistent'")


def test_batch_not_divisible_by_devices_is_a_user_error(tmp_path):
    proc = run_cli(
        "catvae_jax.main",
        "--config",
        "configs/quickstart.py",
        "--workdir",
        str(tmp_path / "w"),
        *TINY,
        "--config.batch_size=6",
        env={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"},
    )
    assert proc.returncode == 2
    assert "multiple of the device count (4)" in proc.stderr.strip().splitlines()[-1]


def _one_line_error(proc, *words):
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and all(w in last for w in words), last


def test_a_file_as_workdir_is_a_user_error(tmp_path):
    (tmp_path / "w").write_text("not a directory")
    proc = run_cli("catvae_jax.main", "--workdir", str(tmp_path / "w"), *TINY)
    _one_line_error(proc, "a file, not a directory")


def test_a_broken_config_json_is_a_user_error(tmp_path):
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "config.json").write_text('{"half": ')  # e.g. a run killed mid-write
    resume = run_cli("catvae_jax.main", "--workdir", str(tmp_path / "w"), *TINY)
    _one_line_error(resume, "config.json")
    generate = run_cli("catvae_jax.generate", "--workdir", str(tmp_path / "w"))
    _one_line_error(generate, "config.json")


@pytest.mark.parametrize(
    "args,env,words",
    [
        (("catvae_jax.serve", "--workdir", "w", "--port", "70000"), {}, ("0-65535",)),
        (("catvae_jax.main", "--workdir", "w"), {"JAX_NUM_PROCESSES": "abc"}, ("'abc'",)),
        (
            ("catvae_jax.data", "prepare", "--source", "synthetic", "--image_size", "16"),
            {},
            ("Not a directory",),
        ),
    ],
)
def test_other_bad_inputs_are_one_line_errors(tmp_path, args, env, words):
    blocker = tmp_path / "file"
    blocker.write_text("")
    if args[0] == "catvae_jax.data":
        args = (*args, "--data_dir", str(blocker / "data"))
    proc = run_cli(*args, env=env)
    _one_line_error(proc, *words)


def test_cli_trains_from_any_directory_on_the_xla_device_count(tmp_path):
    """The default config (no --config), found from another cwd, and a relative workdir there
    (Orbax needs absolute paths), with 2 simulated devices from XLA_FLAGS: the run uses and
    prints them, and writes its outputs."""
    import os
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "catvae_jax.main", "--workdir", "runs/rel", *TINY]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "devices: 2 × cpu" in proc.stdout
    assert "done: step 4" in proc.stdout
    assert (tmp_path / "runs" / "rel" / "checkpoints" / "4").is_dir()
    assert (tmp_path / "runs" / "rel" / "samples.png").exists()
