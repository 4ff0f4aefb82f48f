"""The training CLI: config errors are one line with exit code 2; a real tiny run succeeds."""

import pathlib
import shlex

import pytest
from conftest import run_cli_cases, subprocess_env

TINY = [
    "--config.image_size=16",
    "--config.batch_size=8",
    "--config.model.z_dim=8",
    "--config.model.widths=(8,16)",
    "--config.data.num_train=32",
    "--config.data.num_validation=8",
    "--config.num_epochs=1",
    "--config.wandb.mode=disabled",
    "--config.progress_bar=False",
    "--config.validation_pictures=False",  # drawn in tests/train/test_report.py
    "--config.loss.lpips_weight=0",  # AlexNet on 128² resizes of 16² images: slow, and tested apart
    "--config.choose_sampler=False",  # the same, for the sampler choice (test_sampler_choice.py)
    # The tiny resvae that the in-process tests compile too, not the configs' hvae (tested in
    # tests/train/test_hvae.py): fewer distinct programs for the suite to compile.
    "--config.model.name=resvae",
]


CONFIG_ERRORS = [
    ("--config.nonexistent=1", "nonexistent"),
    ("--config.model.nope=3", "model.nope"),
    ("--config.batch_size=abc", "batch_size"),
    ("--config.batch_size=-4", "batch_size"),
    ("--config=configs/missing.py", "configs/missing.py"),
    ("--config.model.widths=(8,0)", "model.widths"),
    ("--config.num_eval_images=0", "num_eval_images"),
    ("--config.seed=-1", "seed"),
    ("--config.data.seed=4294967296", "data.seed"),
]
# A mistyped field names the field it is close to, on one line.
SUGGESTIONS = {
    "--config.batchsize=3": "unknown config field 'batchsize' (did you mean 'batch_size'?)",
    "--config.model.zdim=3": "unknown config field 'model.zdim' (did you mean 'model.z_dim'?)",
}
DEFAULT_CONFIG = [("main", ["--workdir", "w"]), ("bench", [])]
OTHER_BAD_INPUTS = [
    (("catvae_jax.serve", "--workdir", "w", "--port", "70000"), {}, ("0-65535",)),
    (("catvae_jax.main", "--workdir", "w"), {"JAX_NUM_PROCESSES": "abc"}, ("'abc'",)),
    # 0 was taken for "not set" and trained the default config as a single process
    (("catvae_jax.main", "--workdir", "w", "--num_processes", "0"), {}, ("--num_processes=0",)),
    (
        ("catvae_jax.data", "prepare", "--source", "synthetic", "--image_size", "16"),
        {},
        ("Not a directory",),
    ),
]


@pytest.fixture(scope="module")
def errors(tmp_path_factory) -> dict:
    """The result of every error-path command below, keyed by name: all run in one batch
    (conftest.run_cli_cases), since each alone is an interpreter start for a one-line error."""
    tmp = tmp_path_factory.mktemp("cli_errors")
    (tmp / "file").write_text("not a directory")
    (tmp / "broken" / "checkpoints" / "12").mkdir(parents=True)  # a run to resume ...
    (tmp / "broken" / "config.json").write_text('{"half": ')  # ... whose config.json is damaged
    quickstart = ["--config", "configs/quickstart.py"]
    cases = {
        override: ("catvae_jax.main", *quickstart, "--workdir", tmp / f"w{i}", override)
        for i, (override, _) in enumerate(CONFIG_ERRORS)
    }
    for i, override in enumerate(SUGGESTIONS):
        cases[override] = ("catvae_jax.main", *quickstart, "--workdir", tmp / f"s{i}", override)
    no_login = {"WANDB_MODE": "", "WANDB_API_KEY": "", "NETRC": str(tmp / "no_netrc")}
    online = [*quickstart, "--workdir", tmp / "online", "--config.wandb.mode=online"]
    cases["online"] = ("catvae_jax.main", online, no_login)
    cases["show"] = ("catvae_jax.main", *quickstart, "--show_config", "--config.batch_size=8")
    cases["no workdir"] = ("catvae_jax.main", *quickstart)
    for command, flags in DEFAULT_CONFIG:
        cases[command] = (f"catvae_jax.{command}", *flags, "--config.nonexistent=1")
    four_devices = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    indivisible = [*quickstart, "--workdir", tmp / "d", *TINY, "--config.batch_size=6"]
    cases["indivisible"] = ("catvae_jax.main", indivisible, four_devices)
    cases["file"] = ("catvae_jax.main", "--workdir", tmp / "file", *TINY)
    cases["broken resume"] = ("catvae_jax.main", "--workdir", tmp / "broken", *TINY)
    cases["broken generate"] = ("catvae_jax.generate", "--workdir", tmp / "broken")
    for i, (args, env, _) in enumerate(OTHER_BAD_INPUTS):
        if args[0] == "catvae_jax.data":
            args = (*args, "--data_dir", tmp / "file" / "data")
        cases[f"other {i}"] = (args[0], args[1:], env)
    return dict(zip(cases, run_cli_cases(list(cases.values())), strict=True))


@pytest.mark.parametrize("override,named", CONFIG_ERRORS)
def test_config_errors_are_one_line_with_exit_2(errors, override, named):
    proc = errors[override]
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and named in lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout


@pytest.mark.parametrize("override", SUGGESTIONS)
def test_a_mistyped_field_names_the_close_one(errors, override):
    proc = errors[override]
    assert proc.returncode == 2 and proc.stderr == f"error: {SUGGESTIONS[override]}\n"


def test_wandb_online_without_a_key_is_one_line_before_anything_is_created(errors, tmp_path):
    proc = errors["online"]
    _one_line_error(proc, "no W&B API key", "wandb login", "wandb.mode=offline")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (pathlib.Path(proc.args[proc.args.index("--workdir") + 1])).exists()


def test_show_config_prints_every_field_with_its_documentation(errors):
    """--show_config needs no workdir: each field of the config (with the overrides given) is
    one line `field = value  # documentation`; without it, --workdir is required."""
    from catvae_jax.config import field_docs, flatten, recommended_config

    proc = errors["show"]
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if not line.startswith(" ")]
    fields = {line.split(" = ")[0]: line for line in lines}
    assert set(fields) == set(flatten(recommended_config().to_dict()))
    assert fields["batch_size"].startswith("batch_size = 8 ")  # the override shown
    assert "# latent dimensions" in fields["model.z_dim"]
    docs = field_docs()
    assert all(docs[name] for name in fields), [name for name in fields if not docs[name]]
    _one_line_error(errors["no workdir"], "--workdir must have a value (or use --show_config)")


@pytest.mark.parametrize("command,flags", DEFAULT_CONFIG)
def test_an_unknown_field_of_the_default_config_is_one_line(errors, command, flags):
    """Without --config, ml_collections loads the default and types the overrides while it
    defines the flag (at import): an unknown field there is the same one-line error, exit 2."""
    _one_line_error(errors[command], "unknown config field 'nonexistent'")


def test_batch_not_divisible_by_devices_is_a_user_error(errors):
    proc = errors["indivisible"]
    assert proc.returncode == 2
    assert "multiple of the device count (4)" in proc.stderr.strip().splitlines()[-1]


def _one_line_error(proc, *words):
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and all(w in last for w in words), last


def test_a_file_as_workdir_is_a_user_error(errors):
    _one_line_error(errors["file"], "a file, not a directory")


def test_a_broken_config_json_is_a_user_error(errors):
    _one_line_error(errors["broken resume"], "config.json")
    _one_line_error(errors["broken generate"], "config.json")


@pytest.mark.parametrize(
    "i", range(4), ids=["serve port", "JAX_NUM_PROCESSES", "num_processes 0", "data_dir"]
)
def test_other_bad_inputs_are_one_line_errors(errors, i):
    _one_line_error(errors[f"other {i}"], *OTHER_BAD_INPUTS[i][2])


def test_cli_trains_from_any_directory_on_the_xla_device_count(tmp_path):
    """The default config (no --config), found from another cwd, and a relative workdir there
    (Orbax needs absolute paths), with 2 simulated devices from XLA_FLAGS: the run uses and
    prints them, and writes its outputs."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "catvae_jax.main", "--workdir", "runs/rel", *TINY]
    env = subprocess_env({"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}, measured=False)
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "devices: 2 × cpu" in proc.stdout
    assert "done: step 4" in proc.stdout
    assert (tmp_path / "runs" / "rel" / "checkpoints" / "4").is_dir()
    assert (tmp_path / "runs" / "rel" / "samples.png").exists()
    # the command is recorded for the model card of an export, and the range of what it knows
    recorded = (tmp_path / "runs" / "rel" / "command.txt").read_text()
    assert recorded == shlex.join(["python", "-m", "catvae_jax.main", *cmd[3:]]) + "\n"
    assert (tmp_path / "runs" / "rel" / "bpd_4.json").exists()
