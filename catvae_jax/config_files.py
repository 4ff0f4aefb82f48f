"""Config files (`--config FILE`): where a name is found, and what is wrong with a broken one.

The config files of the repository's top-level `configs/` ship inside the package as
`catvae_jax/configs/` (pyproject.toml maps that folder into the wheel: one copy of each file).
`resolve` keeps a path that exists from the working directory and otherwise looks `configs/NAME`
(or a bare `NAME`) up there, so `--config configs/exp1.py` and the commands' default configs work
from any directory, in a source checkout and in an installed wheel alike.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import pathlib

import ml_collections

_HERE = pathlib.Path(__file__).resolve().parent
# An installed wheel holds catvae_jax/configs/; a source checkout (or editable install) the
# repository's configs/ beside the package.
CONFIG_DIRS = (_HERE / "configs", _HERE.parent / "configs")


def shipped(name: str) -> pathlib.Path:
    """The shipped config file `name` (e.g. "exp1.py"); the first folder of CONFIG_DIRS that
    has it, else the path it would have in the first folder that exists."""
    for folder in CONFIG_DIRS:
        if (folder / name).is_file():
            return folder / name
    return next((d for d in CONFIG_DIRS if d.is_dir()), CONFIG_DIRS[-1]) / name


def resolve(argument: str) -> str:
    """The path to load for a --config argument `FILE` or `FILE:ARGS` (ARGS go to get_config).

    A FILE that exists (from the working directory, or absolute) is kept; a relative FILE that
    does not is looked up among the shipped configs, without a leading `configs/`."""
    file, sep, args = argument.partition(":")
    path = pathlib.Path(file)
    if not file or path.is_absolute() or path.exists():
        return argument
    parts = path.parts[1:] if path.parts[0] == "configs" else path.parts
    found = shipped(os.path.join(*parts)) if parts else path
    return f"{found}{sep}{args}" if found.is_file() else argument


def source_problem(file: str) -> str | None:
    """Why config file `file` cannot be loaded, judged without running it (missing, a folder,
    unreadable, not Python, a syntax error), or None."""
    path = pathlib.Path(file)
    if not path.exists():
        return f"cannot load config file '{file}': no such file"
    if path.is_dir():
        return f"cannot load config file '{file}': it is a folder"
    try:
        source = path.read_bytes()
    except OSError as e:
        return f"cannot read config file '{file}': {e.strerror or e}"
    try:
        compile(source, file, "exec")
    except SyntaxError as e:
        where = f" line {e.lineno}" if e.lineno else ""
        return f"config file '{file}'{where}: syntax error: {e.msg}"
    except ValueError as e:  # e.g. null bytes: not Python source
        return f"config file '{file}' is not Python source: {e}"
    return None


def run_problem(argument: str) -> str | None:
    """Why config file `FILE[:ARGS]` gives no ConfigDict when run: no get_config, get_config
    raising, or returning something else; None when it gives one."""
    file, _, args = argument.partition(":")
    problem = source_problem(file)
    if problem:
        return problem
    try:
        loader = importlib.machinery.SourceFileLoader("catvae_jax_config_check", file)
        module = importlib.util.module_from_spec(
            importlib.util.spec_from_loader(loader.name, loader)
        )
        loader.exec_module(module)
    except Exception as e:
        return f"config file '{file}' failed to load: {_one_line(e)}"
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        return f"config file '{file}' defines no get_config() function"
    try:
        config = get_config(*([args] if args else []))
    except Exception as e:
        return f"config file '{file}': get_config() raised {_one_line(e)}"
    return not_a_config(file, config)


def not_a_config(file: str, config: object) -> str | None:
    """The problem when `config` (what get_config returned) is not a ConfigDict, or None."""
    if isinstance(config, ml_collections.ConfigDict):
        return None
    return (
        f"config file '{file}': get_config() returned {type(config).__name__}, "
        "not an ml_collections.ConfigDict"
    )


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())[:200]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
