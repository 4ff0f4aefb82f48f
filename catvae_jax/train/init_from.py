"""Fine-tuning: the parameters a new run starts from (`config.init_from`).

`config.init_from` names another model: a training workdir, optionally with a checkpoint
("W:best", "W:latest", "W:1200"; default best), a model file (NAME.catvae or a model folder)
or a shipped model ("pretrained:NAME"). Its evaluation parameters (the EMA when it has one) are
read, and the new run starts from them at step 0 with a fresh optimizer, learning-rate schedule
and KL warm-up; its EMA, if on, starts equal to them. A model whose parameters differ in name or
shape from the new config's is refused in one line naming the first such parameter.
"""

from __future__ import annotations

import os
import re
from typing import Any

import numpy as np
from etils import epath

from catvae_jax import config as config_lib
from catvae_jax import model_file
from catvae_jax.errors import UserError
from catvae_jax.train import state as state_lib
from catvae_jax.train.checkpoint import read_checkpoint


def split_spec(spec: str) -> tuple[str, str | int]:
    """ "W" → (W, "best"); "W:STEP" → (W, STEP) when STEP is best, latest or a number and W is
    not a model file; a model file or pretrained:NAME → (spec, "best")."""
    if model_file.is_model_file(spec):
        return spec, "best"
    head, sep, tail = spec.rpartition(":")
    if sep and head and re.fullmatch(r"best|latest|\d+", tail):
        return head, int(tail) if tail.isdigit() else tail
    return spec, "best"


def read(spec: str) -> tuple[dict[str, np.ndarray], str]:
    """(the evaluation parameters of the model `spec` names, by `model_file.param_names`
    name; a description such as "W checkpoint 1200")."""
    source, step = split_spec(spec)
    if model_file.is_model_file(source):
        contents = model_file.read(source)
        return contents.params(), f"{source} (checkpoint {contents.step})"
    if not epath.Path(source).is_dir():
        raise UserError(f"init_from: {source} is neither a workdir nor a model file")
    number, params = _read_checkpoint(source, step)
    return model_file.flatten_params(params), f"{source} checkpoint {number}"


def _read_checkpoint(workdir: str, step: str | int) -> tuple[int, Any]:
    """(step, evaluation parameters) of checkpoint `step` of `workdir`, on device 0."""
    path = epath.Path(workdir) / "config.json"
    if not path.exists():
        raise UserError(f"init_from: {workdir} is not a catvae_jax workdir (no config.json)")
    config = config_lib.read_json(path)
    _, abstract = state_lib.reading_target(config)
    number, state, _ = read_checkpoint(workdir, step, abstract)
    return number, state_lib.eval_params(state)


def start_params(spec: str, like: Any) -> tuple[Any, str]:
    """(the parameters of `spec` as host arrays in the structure and dtypes of `like`, the
    new run's parameters; a description). A UserError names the first parameter that differs."""
    arrays, described = read(spec)
    return model_file.fill_params(like, arrays, f"init_from {os.fspath(spec)}"), described
