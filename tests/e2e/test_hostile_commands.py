"""Commands under hostile input and a failing machine (issue 27, cases 6 and 7): a config.json
of the wrong structure, a bad --coordinator, --num_samples checked before the slow pass,
pictures over their format's size limit, SIGTERM in the end-of-training prior fit, and a full
or read-only disk (exit 1, naming the path)."""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO, main_cmd, run_cli_cases, run_python, subprocess_env
from PIL import Image
from test_cli import TINY

import catvae_jax
from catvae_jax import cli, pictures
from catvae_jax.errors import EnvironmentFailure, UserError


def _one_line(proc, code: int, *words: str) -> str:
    """The one stderr line of a command that failed with exit `code`, containing `words`."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == code and len(lines) == 1, (proc.args, proc.returncode, proc.stderr)
    assert lines[0].startswith("error: ") and all(w in lines[0] for w in words), lines[0]
    return lines[0]


def _workdir_with_config(trained_workdir, dst, change) -> str:
    """A copy of the tiny workdir whose config.json is `change`d (a function of the dict)."""
    shutil.copytree(trained_workdir[0], dst)
    config = json.loads((dst / "config.json").read_text())
    change(config)
    (dst / "config.json").write_text(json.dumps(config))
    return str(dst)


# config.json of the wrong structure: every reader ---------------------------------------------

BAD_CONFIGS = {  # name: (change, words of the error)
    "unknown model": (
        lambda c: c["model"].update(name="vae9000"),
        ("config field 'model.name' must be one of", "'vae9000'"),
    ),
    "deep wrong type": (lambda c: c["plateau"].update(patience=1.5), ("'patience'", "1.5")),
    "bad widths": (lambda c: c["model"].update(widths=[8, "a"]), ("config field 'model.widths'",)),
    "null": (lambda c: c.update(batch_size=None), ("'batch_size' has a value of the wrong type",)),
    "negative z": (lambda c: c["model"].update(z_dim=-3), ("'model.z_dim' must be positive",)),
    "section missing": (lambda c: c.update(loss=None), ("config field 'loss.beta' is missing",)),
}


def test_a_config_json_of_the_wrong_structure_is_one_line_for_every_reader(
    trained_workdir, tmp_path
):
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(images / "a.png")
    readers = {
        "generate": ("catvae_jax.generate", "--n", "2", "--out", tmp_path / "g.png"),
        "interpolate": ("catvae_jax.interpolate", "--out", tmp_path / "i.png"),
        "reconstruct": ("catvae_jax.reconstruct", "--images", images, "--out", tmp_path / "r.png"),
        "evaluate": ("catvae_jax.evaluate", "--num_samples", "0", "--out", tmp_path / "e.json"),
        "fit_prior": ("catvae_jax.fit_prior",),
    }
    cases, expected = [], []
    for i, (name, (change, words)) in enumerate(BAD_CONFIGS.items()):
        workdir = _workdir_with_config(trained_workdir, tmp_path / f"w{i}", change)
        for reader, (module, *flags) in readers.items():
            cases.append((module, "--workdir", workdir, *flags))
            expected.append((f"{reader} / {name}", words))
        if name in ("unknown model", "bad widths"):  # a traceback at load before; serve too
            cases.append(("catvae_jax.serve", "--workdir", workdir, "--port", "0"))
            expected.append((f"serve / {name}", words))
    # and a resumed training run, which reads the old config.json to compare
    workdir = _workdir_with_config(trained_workdir, tmp_path / "resume", BAD_CONFIGS["null"][0])
    cases.append(("catvae_jax.main", *main_cmd(workdir, *TINY)[3:]))
    expected.append(("main (resume) / null", BAD_CONFIGS["null"][1]))
    for (what, words), proc in zip(expected, run_cli_cases(cases, measured=False), strict=True):
        assert "Traceback" not in proc.stderr, (what, proc.stderr[-3000:])
        line = _one_line(proc, 2, *words)
        assert "config.json" in line, (what, line)


def test_config_validation_names_a_field_of_the_wrong_type():
    config = catvae_jax.config.get_config()
    with config.ignore_type():
        config.batch_size = "8"
    with pytest.raises(UserError, match="'batch_size' has a value of the wrong type: '8'"):
        catvae_jax.config.validate(config)


# --seed of every command ------------------------------------------------------------------------

SEED_COMMANDS = [
    ("catvae_jax.generate", "--workdir", "w"),
    ("catvae_jax.evaluate", "--workdir", "w"),
    ("catvae_jax.interpolate", "--workdir", "w"),
    ("catvae_jax.choose_sampler", "--workdir", "w"),
    ("catvae_jax.data", "prepare", "--source", "synthetic"),
    ("catvae_jax.sweep", "--sweep", "s.py", "--workdir", "w"),
]


def test_a_seed_outside_32_bits_is_one_line_for_every_command():
    """`generate --seed 99999999999999999999` was an OverflowError traceback where the key was
    made; every --seed now takes what config.seed takes, [0, 2**32)."""
    seeds = ("99999999999999999999", "4294967296", "-1")
    cases = [(*command, f"--seed={s}") for command in SEED_COMMANDS for s in seeds]
    for case, proc in zip(
        cases, run_cli_cases(cases, measured=False, parse_only=True), strict=True
    ):
        assert "Traceback" not in proc.stderr, (case, proc.stderr[-2000:])
        _one_line(proc, 2, "--seed", "[0, 4294967295]")
    edges = [(*command, f"--seed={s}") for command in SEED_COMMANDS for s in ("0", "4294967295")]
    for case, proc in zip(
        edges, run_cli_cases(edges, measured=False, parse_only=True), strict=True
    ):
        assert proc.returncode == 0, (case, proc.stderr[-2000:])


# running out of memory ---------------------------------------------------------------------------


def _exit_of(raise_it, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as stopped, cli.user_errors():
        raise_it()
    return stopped.value.code, capsys.readouterr().err


def test_running_out_of_memory_is_one_line_with_exit_1(capsys):
    """An XLA allocation the device cannot hold (here: 4 TB on the CPU), or the host's
    MemoryError, was a traceback; it is one line naming what to lower."""
    code, err = _exit_of(lambda: jnp.zeros((10**12,), jnp.float32).block_until_ready(), capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: out of memory (RESOURCE_EXHAUSTED: Out of memory allocating")
    assert "lower batch_size, image_size or loss.lpips_size" in err
    assert "last complete checkpoint is intact" in err

    def host():
        raise MemoryError

    code, err = _exit_of(host, capsys)
    assert code == 1 and err.startswith("error: out of memory (host memory): lower batch_size")


def test_other_xla_runtime_errors_are_not_called_out_of_memory():
    with pytest.raises(jax.errors.JaxRuntimeError, match="INTERNAL"), cli.user_errors():
        raise jax.errors.JaxRuntimeError("INTERNAL: something else")


# --coordinator --------------------------------------------------------------------------------


def test_a_coordinator_that_is_not_host_port_is_one_line(tmp_path):
    """An IndexError traceback before, and `localhost:notaport` a segfault (exit 139)."""
    distributed = ["--num_processes", "2", "--process_id", "0"]
    cases = [
        ("catvae_jax.main", *main_cmd(tmp_path / "w", "--coordinator", c, *distributed)[3:])
        for c in ("localhost", "localhost:notaport", "localhost:70000")
    ]
    env = {"JAX_COORDINATOR_ADDRESS": "nohost", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"}
    cases.append(("catvae_jax.main", main_cmd(tmp_path / "w")[3:], env))
    procs = run_cli_cases(cases, measured=False)
    for proc, given in zip(
        procs, ("localhost", "localhost:notaport", "localhost:70000"), strict=False
    ):
        _one_line(proc, 2, "--coordinator must be HOST:PORT", f"'{given}'")
    _one_line(procs[-1], 2, "JAX_COORDINATOR_ADDRESS must be HOST:PORT", "'nohost'")
    assert not (tmp_path / "w").exists()


# evaluate: --num_samples before the likelihood pass --------------------------------------------

_EVALUATE_WITHOUT_THE_PASS = """
import os, runpy, sys
from catvae_jax.evaluation import likelihood

def ran(*args, **kwargs):
    print("the likelihood pass ran", flush=True)
    os._exit(99)

likelihood.evaluate = ran
for args in {cases!r}:
    pid = os.fork()
    if pid == 0:
        sys.argv = ["catvae_jax.evaluate", *args]
        try:
            runpy.run_module("catvae_jax.evaluate", run_name="__main__", alter_sys=True)
        except SystemExit as e:
            os._exit(e.code or 0)
        os._exit(0)
    print("exit", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
"""


def test_evaluate_checks_num_samples_against_the_split_before_the_likelihood_pass(
    trained_workdir, tmp_path
):
    one_test_image = _workdir_with_config(
        trained_workdir, tmp_path / "w", lambda c: c["data"].update(num_test=1)
    )
    base = ["--workdir", str(trained_workdir[0]), "--out", str(tmp_path / "e.json")]
    cases = [
        [*base, "--num_samples", "5"],
        [*base, "--num_samples", "20000"],
        ["--workdir", one_test_image, "--num_samples", "8", "--out", str(tmp_path / "e.json")],
        [*base, "--num_samples", "8", "--sampler", "gmm", "--gmm_components", "0"],
    ]
    proc = run_python(_EVALUATE_WITHOUT_THE_PASS.format(cases=cases), measured=False)
    assert "the likelihood pass ran" not in proc.stdout, proc.stdout + proc.stderr[-2000:]
    assert proc.stdout.split() == ["exit", "2"] * 4, proc.stdout + proc.stderr[-2000:]
    errors = [x for x in proc.stderr.splitlines() if x.startswith("error: ")]
    assert errors[0] == "error: num_samples must be between 8 and 10000, got 5"
    assert errors[1] == "error: num_samples must be between 8 and 10000, got 20000"
    assert "test split, which has 1 image(s)" in errors[2]
    assert errors[3] == "error: --gmm_components must be positive, got 0"
    assert len(errors) == 4 and "Traceback" not in proc.stderr


# pictures over their format's size limit ------------------------------------------------------


def test_check_grid_knows_each_formats_limit():
    pictures.check_grid("a.webp", 910, 16, ncols=910)  # 910 × 18 + 2 = 16382 pixels wide
    with pytest.raises(UserError, match=r"16400×20 pixels, over the WEBP limit of 16383"):
        pictures.check_grid("a.webp", 911, 16, ncols=911)
    pictures.check_grid("a.jpg", 3638, 16, ncols=3638)
    with pytest.raises(UserError, match="over the JPEG limit of 65500"):
        pictures.check_grid("a.jpg", 3639, 16, ncols=3639)
    pictures.check_grid("a.png", 100_000, 16, ncols=100_000)


def test_an_output_over_the_formats_size_limit_is_refused_before_the_work(
    trained_workdir, tmp_path
):
    """A 256² model's 4096-sample grid is over WebP's 16383 pixels; an interpolation of 254
    steps over JPEG's 65500: refused before the model loads (here a config.json saying 256² over
    16² checkpoints: a load would fail otherwise). 911 reconstructions in one row of a .webp:
    refused before the model loads (an encoder ValueError traceback after all the work before)."""
    big = _workdir_with_config(
        trained_workdir, tmp_path / "big", lambda c: c.update(image_size=256)
    )
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(911):
        Image.fromarray(np.full((16, 16, 3), i % 256, np.uint8)).save(folder / f"{i:04d}.png")
    cases = [
        ("catvae_jax.generate", "--workdir", big, "--n", "4096", "--out", tmp_path / "g.webp"),
        ("catvae_jax.interpolate", "--workdir", big, "--pairs", "1", "--steps", "254",
         "--out", tmp_path / "i.jpg"),
        ("catvae_jax.reconstruct", "--workdir", trained_workdir[0], "--images", folder,
         "--max_images", "1000", "--ncols", "1000", "--out", tmp_path / "r.webp"),
    ]  # fmt: skip
    generate, interpolate, reconstruct = run_cli_cases(cases, measured=False)
    _one_line(generate, 2, "g.webp: the picture would be 16514×16514 pixels", "WEBP limit of 16383")
    _one_line(interpolate, 2, "i.jpg: the picture would be 66050×260 pixels", "JPEG limit of 65500")
    _one_line(reconstruct, 2, "r.webp: the picture would be 16400×38 pixels", "WEBP limit")
    assert not list(tmp_path.glob("[gir].*"))


# SIGTERM during the end-of-training prior fit -------------------------------------------------

_TRAIN_WITH_A_SLOW_FIT = """
import runpy, sys, time
from catvae_jax.priors import flow

def slow_fit(*args, **kwargs):
    print("fit started", flush=True)
    time.sleep(120)  # the real fit takes minutes on a real run
    raise AssertionError("not stopped")

flow.fit = slow_fit
sys.argv = {argv!r}
runpy.run_module("catvae_jax.main", run_name="__main__", alter_sys=True)
"""


def test_sigterm_during_the_prior_fit_exits_143_promptly_with_the_checkpoint_intact(tmp_path):
    workdir = tmp_path / "w"
    argv = ["catvae_jax.main", *main_cmd(workdir, *TINY)[3:]]
    proc = subprocess.Popen(
        [sys.executable, "-c", _TRAIN_WITH_A_SLOW_FIT.format(argv=argv)],
        cwd=REPO, env=subprocess_env(measured=False), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    lines = []
    for line in proc.stdout:  # until the fit starts
        lines.append(line)
        if line.startswith("fit started"):
            break
    assert lines and lines[-1].startswith("fit started"), "".join(lines) + proc.stderr.read()
    sent = time.time()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-3000:]
    assert time.time() - sent < 20 and "Traceback" not in err
    last = out.strip().splitlines()[-1]
    assert last.startswith("stopped: preempted at step 4;") and "checkpoint saved" in last, out
    model = catvae_jax.load(workdir, step="latest")
    assert model.step == 4 and model.flow is None
    assert not list(workdir.glob("flow_*")) and not list(workdir.glob(".*.tmp"))


# A full or read-only disk: exit 1, naming the path --------------------------------------------


@contextlib.contextmanager
def _tmpfs(path, size: str = "8m"):
    """A tmpfs mounted at `path` (needs root, as the CI machine runs), unmounted after."""
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


def _read_only(path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)


def test_environment_failures_are_exit_1_naming_the_path(trained_workdir, tmp_path):
    """generate, evaluate, fit_prior and training's start on a read-only disk, and training's
    start on a full one (exit 2 before, as user errors)."""
    step = catvae_jax.load(trained_workdir[0]).step
    with _tmpfs(tmp_path / "ro") as ro, _tmpfs(tmp_path / "full", "64k") as full:
        workdir = ro / "run"
        shutil.copytree(trained_workdir[0], workdir)
        (workdir / f"flow_{step}.npz").unlink()  # fit_prior has one to write
        _read_only(ro)
        with contextlib.suppress(OSError), open(full / "filler", "wb") as f:  # fill it up
            while True:
                f.write(b"\0" * 4096)
                f.flush()
        cases = [
            ("catvae_jax.generate", "--workdir", trained_workdir[0], "--n", "2",
             "--out", ro / "out" / "g.png"),
            ("catvae_jax.evaluate", "--workdir", workdir, "--num_samples", "0",
             "--iw_samples", "2", "--max_examples", "8"),
            ("catvae_jax.fit_prior", "--workdir", workdir, "--step", str(step)),
            ("catvae_jax.main", *main_cmd(ro / "new", *TINY)[3:]),
            ("catvae_jax.main", *main_cmd(full / "new", *TINY)[3:]),
        ]  # fmt: skip
        generate, evaluate, fit_prior, start_ro, start_full = run_cli_cases(cases, measured=False)
    _one_line(generate, 1, f"cannot write {ro}/out", "Read-only file system")
    _one_line(evaluate, 1, f"cannot write {workdir}/eval.json: Read-only file system")
    _one_line(fit_prior, 1, f"cannot write {workdir}/flow_{step}.npz: Read-only file system")
    _one_line(start_ro, 1, f"cannot write {ro}/new: Read-only file system")
    _one_line(start_full, 1, f"cannot write {full}/new", "No space left on device")


def test_generate_individual_on_a_full_disk_writes_none(trained_workdir, tmp_path):
    """64 PNGs of ~0.8 kB do not fit in 16 kB: the run fails after some, removes them and says
    so (before: a UserError after k files, which stayed)."""
    with _tmpfs(tmp_path / "disk", "16k") as disk:
        cmd = ("catvae_jax.generate", "--workdir", trained_workdir[0], "--n", "64")
        (proc,) = run_cli_cases([(*cmd, "--individual", "--out", disk / "s")], measured=False)
        left = sorted(p.name for p in (disk / "s").iterdir()) if (disk / "s").exists() else []
    line = _one_line(proc, 1, f"cannot write {disk}/s/sample_", "No space left on device")
    assert "wrote none of the 64 samples (removed the" in line
    assert left == []


def test_write_samples_removes_what_it_wrote_when_a_later_file_fails(tmp_path, monkeypatch):
    """The same without root: the fifth write fails with ENOSPC."""
    from catvae_jax import atomic

    real, calls = atomic.write_atomic, []

    def failing(path, data):
        calls.append(path)
        if len(calls) == 5:
            raise OSError(28, "No space left on device", str(path))
        return real(path, data)

    monkeypatch.setattr(atomic, "write_atomic", failing)
    samples = np.zeros((8, 16, 16, 3), np.float32)
    with pytest.raises(EnvironmentFailure, match=r"wrote none of the 8 samples \(removed the 4"):
        pictures.write_samples(samples, tmp_path / "s", individual=True)
    assert list((tmp_path / "s").iterdir()) == []
