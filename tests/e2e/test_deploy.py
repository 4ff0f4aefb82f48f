"""The container recipes, checked offline (nothing here can reach a cloud or run an image):
docker/Dockerfile and deploy/ parse, and every image target, command flag, config field and
config path they name exists (in the Dockerfile, in the commands' --help, in configs/)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib

import pytest
import yaml
from conftest import REPO

from catvae_jax.config import get_config

DOCKERFILE = os.path.join(REPO, "docker", "Dockerfile")
DEPLOY = os.path.join(REPO, "deploy")
COMMANDS = {"train": "catvae_jax.main", "serve": "catvae_jax.serve"}  # image target → module
IMAGE = re.compile(r"catvae-jax:([A-Za-z0-9][\w.-]*)")
MODULE = re.compile(r"-m\s+(catvae_jax\.\w+)")
FLAG = re.compile(r"(?<![\w$-])--([A-Za-z_][\w.]*)")
CONFIG_PATH = re.compile(r"(?<![\w/])configs/[\w./-]+\.py")


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _deploy_files() -> list[str]:
    return sorted(os.path.join(d, f) for d, _, fs in os.walk(DEPLOY) for f in fs)


def dockerfile_targets(text: str) -> set[str]:
    """Stage names (`FROM ... AS name`) of a Dockerfile."""
    return set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", text, re.M | re.I))


def _help(modules: list[str], flag: str) -> dict[str, str]:
    """`python -m module FLAG` output for each module, run side by side."""
    env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"}
    procs = {
        m: subprocess.Popen(
            [sys.executable, "-m", m, flag],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for m in modules
    }
    return {m: p.communicate(timeout=120)[0] for m, p in procs.items()}


@pytest.fixture(scope="module")
def known_flags() -> dict[str, set[str]]:
    """The --flags each command accepts, from its --help (absl's --helpfull where it has one;
    absl's --help exits with 1, argparse's with 0)."""
    out = _help(list(COMMANDS.values()), "--help")
    absl = [m for m, text in out.items() if "--helpfull" in text]
    out |= _help(absl, "--helpfull")
    flags = {m: set(re.findall(r"--([A-Za-z_]\w*)", text)) for m, text in out.items()}
    assert all("workdir" in f for f in flags.values()), out
    return flags


def _config_fields(c=None, prefix: str = "") -> set[str]:
    c = get_config() if c is None else c
    out = set()
    for key, value in c.items():
        out.add(prefix + key)
        if hasattr(value, "items"):
            out |= _config_fields(value, f"{prefix}{key}.")
    return out


def _logical_lines(text: str) -> list[str]:
    """Shell text as commands: comment markers dropped (usage comments are commands too) and
    backslash-continued lines joined."""
    lines = [re.sub(r"^\s*#\s?", "", line) for line in text.splitlines()]
    return "\n".join(lines).replace("\\\n", " ").splitlines()


def uses(path: str, text: str) -> list[tuple[str, str, list[str]]]:
    """(kind, name, args) for each use of an image or a command in one file: kind is "image"
    (name: its tag) or "module" (name: catvae_jax.x); args are the words that follow it."""
    found = []
    if path.endswith((".yaml", ".yml")):

        def walk(node):
            if isinstance(node, dict):
                image = node.get("image") or node.get("imageUri")
                if isinstance(image, str) and IMAGE.search(image):
                    args = [str(a) for a in node.get("args", [])]
                    found.append(("image", IMAGE.search(image)[1], args))
                for value in node.values():
                    walk(value)
            elif isinstance(node, list):
                for value in node:
                    walk(value)

        walk(yaml.safe_load(text))
        return found
    if os.path.basename(path) == "Dockerfile" or path.endswith(".Dockerfile"):
        stage = None
        for line in text.splitlines():
            if m := re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, re.I):
                stage = m[1]
            if m := re.match(r"(ENTRYPOINT|CMD)\s+(\[.*\])\s*$", line):
                args = json.loads(m[2])
                if "-m" in args:  # the stage's command
                    found.append(("module", args[args.index("-m") + 1], args))
                else:  # arguments to the stage's entrypoint
                    found.append(("image", stage, args))
    for line in _logical_lines(text):
        for pattern, kind in ((IMAGE, "image"), (MODULE, "module")):
            if m := pattern.search(line):
                found.append((kind, m[1], line[m.end() :].split()))
    return found


def problems(path: str, text: str, targets: set[str], flags: dict[str, set[str]]) -> list[str]:
    """What in one recipe names something that does not exist."""
    extras = tomllib.loads(_read(os.path.join(REPO, "pyproject.toml")))["project"]
    extras = set(extras["optional-dependencies"])
    fields, bad = _config_fields(), []
    for kind, name, args in uses(path, text):
        if kind == "image":
            target, _, extra = name.partition("-")
            if target not in targets:
                bad.append(f"image target '{target}' is not a stage of docker/Dockerfile")
                continue
            if extra and extra not in extras:
                bad.append(f"image tag '{name}': no JAX_EXTRA '{extra}' in pyproject.toml")
            module = COMMANDS.get(target)
        else:
            module = name
        if module is None:
            continue
        for flag in FLAG.findall(" ".join(args)):
            flag = flag.split("=")[0]
            if flag.startswith("config."):
                if module != COMMANDS["train"] or flag[len("config.") :] not in fields:
                    bad.append(f"{module}: no config field '{flag}'")
            elif flag not in flags.get(module, set()):
                bad.append(f"{module} has no flag --{flag}")
    for config in CONFIG_PATH.findall(text):
        if not os.path.isfile(os.path.join(REPO, config)):
            bad.append(f"no config file {config}")
    return [f"{os.path.relpath(path, REPO)}: {b}" for b in bad]


def test_dockerfile_has_both_targets_a_healthcheck_and_a_non_root_user():
    text = _read(DOCKERFILE)
    assert {"train", "serve"} <= dockerfile_targets(text)
    serve = text[text.index("AS serve") :]
    assert "HEALTHCHECK" in serve and "/healthz" in serve
    assert re.search(r"^USER\s+(?!root\b|0\b)\S+", text, re.M)
    assert "ARG BASE=python:3.11-slim" in text and "ARG JAX_EXTRA" in text


def test_every_recipe_names_only_what_exists(known_flags):
    targets = dockerfile_targets(_read(DOCKERFILE))
    files = [DOCKERFILE, *_deploy_files()]
    bad = [b for f in files for b in problems(f, _read(f), targets, known_flags)]
    assert bad == []
    # Not vacuous: each recipe was read and named what it should.
    names = {f: {n for k, n, _ in uses(f, _read(f)) if k == "image"} for f in files}
    assert "serve" in names[os.path.join(DEPLOY, "cloudrun", "service.yaml")]
    assert "train-cuda12" in names[os.path.join(DEPLOY, "vertex", "job.yaml")]
    assert "train-tpu" in names[os.path.join(DEPLOY, "tpu", "launch.sh")]


def test_the_checker_finds_what_does_not_exist(known_flags):
    text = (
        "docker run catvae-jax:trian --workdir /runs/x\n"
        "docker run catvae-jax:train-rocm --config configs/nope.py --config.no_such=1\n"
        "docker run catvae-jax:serve --worcdir /model \\\n  --port 8080\n"
    )
    bad = problems("x.sh", text, {"train", "serve"}, known_flags)
    assert len(bad) == 5, bad
    for expected in ("'trian'", "'rocm'", "configs/nope.py", "'config.no_such'", "--worcdir"):
        assert any(expected in b for b in bad), (expected, bad)


def test_yaml_files_parse_and_the_shell_scripts_pass_bash_n():
    files = [f for f in _deploy_files() if f.endswith((".yaml", ".sh"))]
    for path in files:
        if path.endswith(".yaml"):
            assert isinstance(yaml.safe_load(_read(path)), dict), path
        else:
            p = subprocess.run(["bash", "-n", path], capture_output=True, text=True)
            assert p.returncode == 0, p.stderr
    for script in ("build.sh", "test.sh", "engine.sh"):
        p = subprocess.run(["bash", "-n", os.path.join(REPO, "docker", script)])
        assert p.returncode == 0, script
    assert len(files) >= 6


def test_the_tpu_worker_passes_the_environment_the_cli_reads():
    """Multi-host: worker.sh hands the process id, count and coordinator to the CLI through
    the JAX_* variables that cli.init_distributed reads."""
    worker = _read(os.path.join(DEPLOY, "tpu", "worker.sh"))
    cli = _read(os.path.join(REPO, "catvae_jax", "cli.py"))
    names = set(re.findall(r"-e\s+(JAX_\w+)=", worker))
    assert names == {"JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"}
    assert all(f'"{n}"' in cli for n in names)
