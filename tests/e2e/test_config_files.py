"""Every broken config file, and every override that cannot be applied, is one line, exit 2;
config names resolve to the shipped configs from any directory."""

from __future__ import annotations

import os
import sys

import pytest
from conftest import REPO, run_cli_cases

from catvae_jax import config_files
from catvae_jax.config import get_config, validate
from catvae_jax.errors import UserError

BROKEN = {
    "syntax.py": ("def get_config(:\n", "syntax error"),
    "raises.py": (
        "def get_config():\n    raise RuntimeError('boom')\n",
        "raised RuntimeError: boom",
    ),
    "no_get_config.py": ("X = 1\n", "defines no get_config()"),
    "a_dict.py": ("def get_config():\n    return {'seed': 1}\n", "returned dict, not an"),
    "an_int.py": ("def get_config():\n    return 3\n", "returned int, not an"),
    "nul.py": ("X = 1\0\n", "nul.py"),
}


def _run_main_cases(tmp_path, cases: list[list[str]], cwd: str) -> list[tuple[int, str]]:
    """(exit code, stderr) of `python -m catvae_jax.main --workdir W ARGS` for each case."""
    jobs = [("catvae_jax.main", "--workdir", tmp_path / f"w{i}", *a) for i, a in enumerate(cases)]
    return [(p.returncode, p.stderr) for p in run_cli_cases(jobs, cwd=cwd)]


def _assert_one_line(result: tuple[int, str], *words: str) -> None:
    code, err = result
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:"), (code, err[-2000:])
    assert all(w in lines[0] for w in words), lines[0]


def test_broken_config_files_are_one_line_exit_2(tmp_path):
    for name, (text, _) in BROKEN.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "folder.py").mkdir()
    quickstart = os.path.join(REPO, "configs", "quickstart.py")
    cases = [[f"--config={tmp_path / name}"] for name in BROKEN]
    expected = [(name, why) for name, (_, why) in BROKEN.items()]
    t, seed = tmp_path, "--config.seed=3"
    more = {  # the same files with an override; a missing file with and without one
        "missing with override": ([f"--config={t}/missing.py", seed], "no such file"),
        "missing": (["--config", f"{tmp_path}/missing.py"], "no such file"),
        "folder": ([f"--config={tmp_path}/folder.py"], "it is a folder"),
        "raises with override": ([f"--config={tmp_path}/raises.py", "--config.seed=3"], "raised"),
        "no get_config with override": (
            [f"--config={tmp_path}/no_get_config.py", "--config.seed=3"], "no get_config()"
        ),
        "an int with override": ([f"--config={tmp_path}/an_int.py", "--config.seed=3"], "int"),
        "empty widths": ([f"--config={quickstart}", "--config.model.widths=()"], "model.widths"),
        "bool widths": ([f"--config={quickstart}", "--config.model.widths=(True,)"], "widths"),
        "nan lr": ([f"--config={quickstart}", "--config.learning_rate=nan"], "learning_rate"),
        "inf beta": ([f"--config={quickstart}", "--config.loss.beta=inf"], "loss.beta"),
    }  # fmt: skip
    cases += [args for args, _ in more.values()]
    expected += [(name, why) for name, (_, why) in more.items()]
    results = _run_main_cases(tmp_path, cases, cwd=str(tmp_path))
    for (name, why), result in zip(expected, results, strict=True):
        _assert_one_line(result, why)
        assert "Traceback" not in result[1], name
    assert "finite" in results[-2][1]  # refused up front by config.validate, not at step 2


@pytest.mark.parametrize("field", ["learning_rate", "weight_decay", "loss.beta", "plateau.factor"])
def test_validate_refuses_non_finite_floats(field):
    for bad in (float("nan"), float("inf"), float("-inf")):
        c = get_config()
        section, _, name = field.rpartition(".")
        (c[section] if section else c)[name] = bad
        with pytest.raises(UserError, match=f"'{field}' must be a finite number"):
            validate(c)


def test_shipped_configs_resolve_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("configs/exp1.py", "exp1.py", "configs/exp1.py:arg"):
        file = config_files.resolve(name).partition(":")[0]
        assert os.path.samefile(file, os.path.join(REPO, "configs", "exp1.py")), name
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "exp1.py").write_text("")  # the user's own file wins
    assert config_files.resolve("configs/exp1.py") == "configs/exp1.py"
    assert config_files.resolve("configs/nope.py") == "configs/nope.py"  # then: no such file


SHIPPED_FILES = """
import pathlib, catvae_jax, catvae_jax.serve
root = pathlib.Path(catvae_jax.__file__).parent
for name in ("serve/static/index.html", "pretrained/quickstart.catvae", "pretrained/README.md"):
    assert (root / name).is_file(), name
print(catvae_jax.__file__)
"""


def test_an_installed_wheel_finds_its_configs_from_another_directory(tmp_path):
    """The wheel of this checkout, unpacked where the repository is not: the default config and
    `--config configs/exp1.py` load from an unrelated working directory (the run then stops at
    the out-of-range batch size, exit 2, before any training)."""
    import shutil
    import subprocess
    import zipfile

    src = tmp_path / "src"  # a copy: building writes build/ and *.egg-info beside the sources
    junk = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for part in ("catvae_jax", "configs"):
        shutil.copytree(os.path.join(REPO, part), src / part, ignore=junk)
    for part in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(REPO, part), src / part)
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
         "-q", "-w", str(tmp_path / "dist")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("catvae_jax-*.whl")
    site, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    # the package data: the service's page and the pretrained model beside the modules
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run(
        [sys.executable, "-c", SHIPPED_FILES],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert where.stdout.startswith(str(site)), where.stdout + where.stderr
    for config in ([], ["--config", "configs/exp1.py"]):
        proc = subprocess.run(
            [sys.executable, "-m", "catvae_jax.main", "--workdir", "w", *config,
             "--config.batch_size=-1"],
            cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert proc.stderr.strip() == "error: config field 'batch_size' must be positive, got -1"
