"""The documentation: the site builds in strict mode (a broken link or anchor fails it), and
every `python -m catvae_jax.X ...` command shown in README.md and docs/ parses against the
command's real flags and config (nothing is run)."""

from __future__ import annotations

import glob
import os
import re
import shlex
import subprocess
import sys

from conftest import REPO, run_cli_cases, subprocess_env

PAGES = [os.path.join(REPO, "README.md"), *sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))]
FENCE = re.compile(r"^(```|~~~)[^\n]*\n(.*?)^\1\s*$", re.M | re.S)
INLINE = re.compile(r"(?<!`)`(python -m catvae_jax\.[\w.]+ [^`]+)`(?!`)")  # with arguments
INDENTED = re.compile(r"^(?: {4,}|\t)\s*(?:\S*/)?python3? -m ")
IMAGE = re.compile(r"catvae-jax:(train|serve)(-\w+)?$")  # docker/Dockerfile's two targets
# What an image runs before the arguments given to it (its ENTRYPOINT); serve's own flags here.
ENTRYPOINTS = {"train": ("catvae_jax.main", []), "serve": ("catvae_jax.serve", ["--workdir", "/m"])}
ASSIGN = re.compile(r"^([A-Za-z_]\w*)=(\S+)$")
REPO_FILE = re.compile(r"^(configs|experiments)/[\w./-]+\.py$")


def _mkdocs(*args: str, cwd: str = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", *args],
        cwd=cwd, env=subprocess_env({"NO_MKDOCS_2_WARNING": "1"}, measured=False),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_site_builds_in_strict_mode(tmp_path):
    proc = _mkdocs("build", "--strict", "--site-dir", str(tmp_path / "site"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "WARNING" not in proc.stderr, proc.stderr[-3000:]
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    for name in ("catvae_jax.inference.load", "catvae_jax.inference.VaeModel.generate"):
        assert f'id="{name}"' in api  # rendered from the docstrings
    log = (tmp_path / "site" / "benchmark-log" / "index.html").read_text()
    assert "Benchmarks: catvae_jax against the original" in log  # benchmarks/README.md included


def test_a_broken_link_or_anchor_fails_the_build(tmp_path):
    """The same configuration (INHERIT) on a page with a dead link and a dead anchor."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text("# Home\n\n[gone](missing.md), [here](#no-such-heading)\n")
    (tmp_path / "mkdocs.yml").write_text(
        f"INHERIT: {os.path.join(REPO, 'mkdocs.yml')}\ndocs_dir: {docs}\n"
        "nav: [index.md]\nplugins: [search]\n"
    )
    proc = _mkdocs("build", "-f", str(tmp_path / "mkdocs.yml"), "--site-dir", str(tmp_path / "s"))
    assert proc.returncode != 0
    assert "missing.md" in proc.stderr and "no-such-heading" in proc.stderr, proc.stderr


def _commands(text: str) -> list[str]:
    """The command lines of one page: every line of a fenced code block (backslash-continued
    lines joined, the block's `NAME=value` assignments substituted), every indented line outside
    them that starts with a python command (an indented code block) and every inline code span
    that starts with `python -m catvae_jax.`."""
    outside = FENCE.sub("", text).replace("\\\n", " ")
    lines = [line for line in outside.splitlines() if INDENTED.match(line)]
    for block in FENCE.finditer(text):
        names: dict[str, str] = {}
        for line in block[2].replace("\\\n", " ").splitlines():
            if m := ASSIGN.match(line.strip()):
                names[m[1]] = m[2]
            for name, value in names.items():
                line = re.sub(rf"\${{?{name}\b}}?", value, line)
            lines.append(line)
    lines += [re.sub(r"\s+", " ", span) for span in INLINE.findall(text)]
    return lines


def _command(words: list[str]) -> tuple[str, list[str]] | None:
    """(module, args) of a shell command's words: `[.../]python -m catvae_jax.X args` or
    `docker run ... catvae-jax:<target> args` (the image's entrypoint with the args)."""
    for i, word in enumerate(words):
        if re.fullmatch(r"(\S*/)?python3?", word) and words[i + 1 : i + 2] == ["-m"]:
            module = words[i + 2] if len(words) > i + 2 else ""
            if module.startswith("catvae_jax"):
                return module, words[i + 3 :]
        if (m := IMAGE.match(word)) and "run" in words[:i]:  # docker/podman run, not build
            module, fixed = ENTRYPOINTS[m[1]]
            return module, fixed + words[i + 1 :]
    return None


def documented_commands() -> list[tuple[str, str, list[str]]]:
    """(where, module, args) for each catvae_jax command shown in the docs."""
    found = []
    for page in PAGES:
        with open(page) as f:
            text = f.read()
        for line in _commands(text):
            for part in re.split(r"\s(?:&&|;|\|)\s", line):
                command = _command(shlex.split(part, comments=True))
                if command:
                    shown = shlex.join([command[0], *command[1]])
                    found.append((f"{os.path.relpath(page, REPO)}: {shown}", *command))
    return found


def test_the_docs_show_the_commands():
    """The extraction finds what is there (a check of the check)."""
    modules = {module for _, module, _ in documented_commands()}
    for command in ("main", "generate", "reconstruct", "interpolate", "evaluate", "fit_prior",
                    "serve", "sweep", "data", "import_torch", "bench"):  # fmt: skip
        assert f"catvae_jax.{command}" in modules


def test_every_documented_command_parses():
    commands = documented_commands()
    missing = [
        f"{where}: no file {arg}"
        for where, _, args in commands
        for arg in args
        if REPO_FILE.match(arg) and not os.path.exists(os.path.join(REPO, arg))
    ]
    assert not missing, missing
    results = run_cli_cases(
        [(module, args, {"HOME": "/home/user"}) for _, module, args in commands],
        measured=False,
        parse_only=True,
    )
    bad = [
        f"{where}\n    -> exit {r.returncode}: {(r.stderr or r.stdout).strip()[-500:]}"
        for (where, _, _), r in zip(commands, results, strict=True)
        if r.returncode != 0
    ]
    assert not bad, "\n".join(bad)


def test_the_parse_check_fails_a_wrong_command():
    """What the docs check would report: an unknown flag, a config file that is not there, an
    unknown config field, a required flag left out each exit 2; a good command exits 0."""
    wrong = [
        ["--workdir", "w", "--no_such_flag"],
        ["--workdir", "w", "--config", "configs/no_such_file.py"],
        ["--workdir", "w", "--config.batchsize=3"],
        ["--config", "configs/exp1.py"],
    ]
    good, *bad = run_cli_cases(
        [("catvae_jax.main", ["--workdir", "w"], {}), *(("catvae_jax.main", a, {}) for a in wrong)],
        measured=False,
        parse_only=True,
    )
    assert good.returncode == 0, good.stderr
    assert [r.returncode for r in bad] == [2] * len(wrong), [r.stderr for r in bad]
