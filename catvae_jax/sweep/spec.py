"""Sweep files: load `experiments/sweep_*.py`, check it against the base config, build trials.

A sweep file is Python with `get_sweep()` returning a dict::

    {
        "config": "configs/quickstart.py",  # base config file (from the cwd or the repo root)
        "overrides": {"data.num_train": 512, "eval_every_steps": 20},  # flat; the search wins
        "budget": {"max_steps": 60},  # per trial: max_steps and/or num_epochs
        "space": {  # or "grid": {"seed": [42, 47], "learning_rate": [0.01, 0.001]}
            "learning_rate": ("log", 1e-4, 1e-2),  # float, log-uniform
            "loss.beta": ("uniform", 0.1, 2.0),  # float, uniform
            "model.z_dim": ("int", 16, 128),  # int, uniform
            "model.widths": ("choice", [(8, 16, 32, 64), (16, 32, 64, 128)]),
        },
        "objective": ("val_loss", "minimize"),  # a validation metric and its direction
        "sampler": "tpe",  # tpe | random (a grid runs its points in order)
        "seed": 0,  # the sampler's seed: same file and seed → same proposals
        "pruner": "median",  # median | halving | threshold | none, or (name, {kwargs})
        "trials": 20,  # the study's total; a grid's default is its size
    }

Every mistake is a :class:`UserError` naming the file and the key, raised before any trial.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import importlib.util
import itertools
import math
import os
import pathlib
import shlex
from typing import Any

import ml_collections
import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from catvae_jax import config as config_lib
from catvae_jax.errors import UserError

REPO = pathlib.Path(__file__).resolve().parents[2]
VALIDATION_METRICS = ("val_loss", "val_recon", "val_kl", "val_ssim")
BUDGET_FIELDS = ("max_steps", "num_epochs")
SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "halving", "threshold", "none")
KEYS = ("config", "overrides", "budget", "space", "grid", "objective", "sampler", "seed")
KEYS += ("pruner", "trials")
MAX_POINTS = 1000  # grid points, or choices of one field: each is checked against the config


@dataclasses.dataclass(frozen=True)
class Sweep:
    """A checked sweep file. Parameter values are stored as Optuna sees them: choices that are
    not a number, string or bool (e.g. a widths tuple) as their repr (see `decode`)."""

    path: pathlib.Path
    config_path: pathlib.Path
    base: ml_collections.ConfigDict  # config file + overrides + budget
    fixed: dict[str, Any]  # the overrides and budget, flat field → value
    distributions: dict[str, BaseDistribution]
    grid: list[dict[str, Any]] | None  # every grid point, in order; None for a search
    objective: str
    direction: str  # minimize | maximize
    sampler: str
    seed: int
    pruner: tuple[str, dict]
    trials: int | None

    @property
    def name(self) -> str:
        """The default study name: the sweep file's stem."""
        return self.path.stem


def load(path: str) -> Sweep:
    """Reads and checks the sweep file at `path`; UserError for anything wrong in it."""
    file = pathlib.Path(path)
    raw = _call(file, "get_sweep", "sweep file")
    if not isinstance(raw, dict):
        raise UserError(f"{file}: get_sweep() must return a dict, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(KEYS))
    if unknown:
        raise UserError(f"{file}: unknown key '{unknown[0]}' (known: {', '.join(KEYS)})")
    where = lambda key: f"{file}: '{key}'"

    config_path = _find(raw.get("config", "configs/default.py"), where("config"))
    base = _call(config_path, "get_config", "config file")
    if not isinstance(base, ml_collections.ConfigDict):
        raise UserError(f"{config_path}: get_config() must return an ml_collections.ConfigDict")
    budget = _dict(raw.get("budget", {}), where("budget"))
    bad = sorted(set(budget) - set(BUDGET_FIELDS))
    if bad:
        raise UserError(f"{where('budget')} may set max_steps or num_epochs, not '{bad[0]}'")
    fixed = {**_dict(raw.get("overrides", {}), where("overrides")), **budget}
    for field, value in fixed.items():
        _assign(base, field, value, where("overrides"))
    _validate(base, f"{where('overrides')}: ")

    if ("space" in raw) == ("grid" in raw):
        raise UserError(f"{file}: give exactly one of 'space' (a search) or 'grid'")
    if "grid" in raw:
        distributions, grid = _grid(base, _dict(raw["grid"], where("grid")), where("grid"))
    else:
        distributions, grid = (
            _space(base, _dict(raw["space"], where("space")), where("space")),
            None,
        )
    fixed = {k: v for k, v in fixed.items() if k not in distributions}  # the search wins

    objective = raw.get("objective", ("val_loss", "minimize"))
    if (
        not isinstance(objective, tuple | list)
        or len(objective) != 2
        or objective[0] not in VALIDATION_METRICS
        or objective[1] not in ("minimize", "maximize")
    ):
        raise UserError(
            f"{where('objective')} must be (metric, minimize|maximize) with a metric in "
            f"{', '.join(VALIDATION_METRICS)}, got {objective!r}"
        )
    sampler = raw.get("sampler", "tpe")
    if sampler not in SAMPLERS:
        raise UserError(f"{where('sampler')} must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    seed, trials = raw.get("seed", 0), raw.get("trials")
    check_seed(seed, where("seed"))
    if trials is not None and (not isinstance(trials, int) or trials < 1):
        raise UserError(f"{where('trials')} must be a positive int, got {trials!r}")
    return Sweep(
        path=file,
        config_path=config_path,
        base=base,
        fixed=fixed,
        distributions=distributions,
        grid=grid,
        objective=objective[0],
        direction=objective[1],
        sampler=sampler,
        seed=seed,
        pruner=_pruner_spec(raw.get("pruner", "median"), where("pruner")),
        trials=trials,
    )


def _call(file: pathlib.Path, function: str, what: str) -> Any:
    """Imports the Python file `file` and returns `function()`; UserError on any failure."""
    if not file.is_file():
        raise UserError(f"{what} '{file}' does not exist")
    spec = importlib.util.spec_from_file_location(f"_catvae_{what.replace(' ', '_')}", file)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        raise UserError(f"{what} '{file}' line {e.lineno}: syntax error: {e.msg}") from e
    except Exception as e:
        raise UserError(f"{what} '{file}' failed to import: {type(e).__name__}: {e}") from e
    if not callable(getattr(module, function, None)):
        raise UserError(f"{what} '{file}' has no {function}() function")
    try:
        return getattr(module, function)()
    except Exception as e:
        raise UserError(f"{what} '{file}': {function}() raised {type(e).__name__}: {e}") from e


def _find(name: Any, where: str) -> pathlib.Path:
    """A config file path as given (from the cwd), else relative to the repository root."""
    if not isinstance(name, str):
        raise UserError(f"{where} must be a config file path, got {name!r}")
    path = pathlib.Path(name)
    return path if path.is_file() or path.is_absolute() else REPO / path


def _dict(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise UserError(f"{where} must be a dict, got {type(value).__name__}")
    return value


def _assign(config: ml_collections.ConfigDict, field: str, value: Any, where: str) -> None:
    """Sets the dotted leaf `field` of `config` (in place); UserError for an unknown field or a
    value that ml_collections will not take for that field's type."""
    *parents, leaf = field.split(".") if isinstance(field, str) else [""]
    node = config
    for part in parents:
        node = node.get(part) if isinstance(node, ml_collections.ConfigDict) else None
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
        raise UserError(f"{where}: unknown config field '{field}'")
    if isinstance(node[leaf], ml_collections.ConfigDict):
        raise UserError(f"{where}: '{field}' is a group of fields, not one field")
    try:
        node[leaf] = value
    except (TypeError, ValueError) as e:
        old = type(node[leaf]).__name__
        raise UserError(
            f"{where}: config field '{field}' ({old}) cannot take {value!r} "
            f"({type(value).__name__})"
        ) from e


def _validate(config: ml_collections.ConfigDict, prefix: str) -> None:
    try:
        config_lib.validate(config)
    except UserError as e:
        raise UserError(f"{prefix}{e}") from e


def _space(base: ml_collections.ConfigDict, space: dict, where: str) -> dict:
    """{"field": (kind, ...)} → Optuna distributions, each end and choice checked on `base`."""
    if not space:
        raise UserError(f"{where} is empty: name at least one config field to search")
    out = {}
    for field, spec in space.items():
        kind = spec[0] if isinstance(spec, tuple | list) and spec else None
        try:
            if kind in ("uniform", "log"):
                _, low, high = spec
                dist = FloatDistribution(float(low), float(high), log=kind == "log")
                values = [float(low), float(high)]
            elif kind == "int":
                _, low, high = spec
                if not all(isinstance(v, int) and not isinstance(v, bool) for v in (low, high)):
                    raise ValueError("int bounds must be ints")
                dist, values = IntDistribution(low, high), [low, high]
            elif kind == "choice":
                _, values = spec
                values = list(values)
                if not values:
                    raise ValueError("no choices")
                if len(values) > MAX_POINTS:
                    raise UserError(
                        f"{where}: '{field}' has {len(values)} choices, more than the "
                        f"{MAX_POINTS} that can be checked: search a range ('int', low, high)"
                    )
                dist = CategoricalDistribution([encode(v) for v in values])
            else:
                raise ValueError("unknown kind")
        except UserError:
            raise
        except (TypeError, ValueError) as e:
            raise UserError(
                f"{where}: '{field}' must be ('uniform'|'log', low, high), ('int', low, high) "
                f"or ('choice', [values]) with low <= high, got {spec!r} ({e})"
            ) from e
        for value in values:  # every end and choice must fit the field and pass validate()
            trial = copy.deepcopy(base)
            _assign(trial, field, value, where)
            _validate(trial, f"{where}: {field}={value!r}: ")
        out[field] = dist
    return out


def _grid(base: ml_collections.ConfigDict, grid: dict, where: str) -> tuple[dict, list[dict]]:
    """{"field": [values]} → (categorical distributions, every point in order), each checked."""
    if not grid or any(not isinstance(v, list | tuple) or not v for v in grid.values()):
        raise UserError(f"{where} must map each config field to a non-empty list of values")
    size = math.prod(len(values) for values in grid.values())
    if size > MAX_POINTS:
        raise UserError(
            f"{where} has {size} points, more than the {MAX_POINTS} that can be checked and "
            "enqueued: search a 'space' instead, or split the grid"
        )
    fields = list(grid)
    points = []
    for combo in itertools.product(*(grid[f] for f in fields)):
        trial = copy.deepcopy(base)
        for field, value in zip(fields, combo, strict=True):
            _assign(trial, field, value, where)
        label = ", ".join(f"{f}={v!r}" for f, v in zip(fields, combo, strict=True))
        _validate(trial, f"{where}: {label}: ")
        points.append({f: encode(v) for f, v in zip(fields, combo, strict=True)})
    distributions = {f: CategoricalDistribution([encode(v) for v in grid[f]]) for f in fields}
    unique = {tuple(sorted(p.items())) for p in points}
    if len(unique) != len(points):
        raise UserError(f"{where} lists a value twice: each grid point must be distinct")
    return distributions, points


def _pruner_spec(spec: Any, where: str) -> tuple[str, dict]:
    name, kwargs = spec, {}
    if isinstance(spec, tuple | list) and len(spec) == 2:
        name, kwargs = spec
    if name not in PRUNERS or not isinstance(kwargs, dict):
        raise UserError(
            f"{where} must be one of {', '.join(PRUNERS)} or (name, {{kwargs}}), got {spec!r}"
        )
    try:
        make_pruner((name, kwargs))
    except (TypeError, ValueError) as e:  # an unknown argument or a value out of its range
        raise UserError(f"{where}: {e}") from e
    return name, kwargs


def check_seed(seed: Any, where: str) -> None:
    """UserError unless `seed` is an int in [0, 2**32) (what a sampler takes)."""
    if not config_lib.is_seed(seed):
        raise UserError(f"{where} must be an int from 0 to 2**32 - 1, got {seed!r}")


def encode(value: Any) -> Any:
    """A config value as an Optuna parameter: numbers, strings and bools as they are, anything
    else (a tuple of widths) as its repr."""
    return value if isinstance(value, bool | int | float | str) else repr(value)


def decode(sweep: Sweep, field: str, value: Any) -> Any:
    """The config value of Optuna parameter `field` (inverse of `encode`)."""
    dist = sweep.distributions.get(field)
    if isinstance(value, str) and isinstance(dist, CategoricalDistribution):
        old = _leaf(sweep.base, field)
        if not isinstance(old, str):
            return ast.literal_eval(value)
    return value


def _leaf(config: ml_collections.ConfigDict, field: str) -> Any:
    for part in field.split("."):
        config = config[part]
    return config


def trial_config(
    sweep: Sweep, params: dict[str, Any], study: str, number: int
) -> ml_collections.ConfigDict:
    """The base config with a trial's parameters set; W&B: run `<study>-<number>` in group
    `<study>`. Raises UserError when the combination fails `config.validate`."""
    config = copy.deepcopy(sweep.base)
    for field, value in params.items():
        _assign(config, field, decode(sweep, field, value), f"trial {number}")
    config.wandb.group = study
    config.wandb.name = f"{study}-{number}"
    config.progress_bar = False
    config_lib.validate(config)
    return config


def make_sampler(sweep: Sweep, seed: int) -> optuna.samplers.BaseSampler:
    """The sweep's sampler seeded with `seed` (the caller passes sweep seed + trial number, so
    concurrent workers draw different points and one worker's draws repeat exactly)."""
    if sweep.sampler == "random" or sweep.grid is not None:
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=5)


def make_pruner(spec: tuple[str, dict]) -> optuna.pruners.BasePruner:
    """median → MedianPruner (2 startup trials unless told), halving → SuccessiveHalvingPruner,
    threshold → ThresholdPruner (e.g. {"upper": 1e4}), none → NopPruner."""
    name, kwargs = spec
    if name == "median":
        return optuna.pruners.MedianPruner(**{"n_startup_trials": 2, **kwargs})
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(**kwargs)
    if name == "threshold":
        return optuna.pruners.ThresholdPruner(**kwargs)
    return optuna.pruners.NopPruner(**kwargs)


def command_line(sweep: Sweep, params: dict[str, Any], workdir: str) -> str:
    """`python -m catvae_jax.main --config BASE --config.field=value ... --workdir W` for the
    base config plus the overrides, budget and `params` (Optuna values)."""
    path = os.path.relpath(sweep.config_path.resolve())
    if path.startswith(".."):
        path = str(sweep.config_path.resolve())
    values = {**sweep.fixed, **{f: decode(sweep, f, v) for f, v in params.items()}}
    flags = [f"--config.{f}={_flag_value(v)}" for f, v in values.items()]
    words = ["python", "-m", "catvae_jax.main", "--config", path, *flags, "--workdir", workdir]
    return " ".join(shlex.quote(w) for w in words)


def _flag_value(value: Any) -> str:
    if isinstance(value, tuple | list):
        return "(" + ",".join(str(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return repr(value) if isinstance(value, float) else str(value)
