"""constraints.txt pins every dependency that pyproject.toml names, inside the range it states."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib

from conftest import REPO
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version


def _pyproject_requirements() -> list[Requirement]:
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    lines = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        lines += extra
    reqs = [Requirement(line) for line in lines]
    return [r for r in reqs if canonicalize_name(r.name) != canonicalize_name(project["name"])]


def _constraints() -> dict[str, Version]:
    pins = {}
    with open(os.path.join(REPO, "constraints.txt")) as f:
        for line in f:
            line = line.split("#")[0].strip()
            if line:
                req = Requirement(line)
                (spec,) = req.specifier  # exactly one `==` per package
                assert spec.operator == "==", line
                name = canonicalize_name(req.name)
                assert name not in pins, f"{name} pinned twice"
                pins[name] = Version(spec.version)
    return pins


def test_every_dependency_is_pinned_inside_its_range():
    pins = _constraints()
    problems = []
    for req in _pyproject_requirements():
        name = canonicalize_name(req.name)
        if name not in pins:
            problems.append(f"{req.name} ({req}) is not pinned in constraints.txt")
        elif not req.specifier.contains(pins[name], prereleases=True):
            problems.append(f"{req.name}=={pins[name]} is outside pyproject.toml's {req}")
    assert not problems, problems


def test_dependencies_are_ranges_not_pins():
    """The library states ranges: an `==` in pyproject.toml would refuse a newer accelerator
    stack (issue 29) that the code supports."""
    pinned = [
        str(r) for r in _pyproject_requirements() if any(s.operator == "==" for s in r.specifier)
    ]
    assert not pinned, pinned
    jax_stack = {canonicalize_name(r.name): r.specifier for r in _pyproject_requirements()}
    assert jax_stack["jax"].contains("0.11.2") and jax_stack["flax"].contains("0.12.10")


def test_constraints_match_this_environment():
    """tools/constraints.py regenerates the file from the installed closure: it is up to date
    (a dependency added to pyproject.toml without a pin, or a stale pin, fails here)."""
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "constraints.py"), "--check"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
