"""A training workdir, written by one writer: created, locked, bootstrapped (config.json) and
given checkpoints that carry the loop's progress. Shared by training and import_torch."""

from __future__ import annotations

import dataclasses
import shlex
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath

from catvae_jax import atomic, data
from catvae_jax import config as config_lib
from catvae_jax.errors import UserError, failed_write
from catvae_jax.priors import stored
from catvae_jax.train.checkpoint import Checkpoints, checkpoint_dir
from catvae_jax.train.lock import WorkdirLock


@dataclasses.dataclass
class Progress:
    """Loop bookkeeping saved with every checkpoint (the data position is the step itself)."""

    best_val_loss: float = float("inf")
    bad_evals: int = 0  # validations in a row without a new best (early stopping)


def create(workdir: str | epath.Path) -> epath.Path:
    """Makes `workdir` (and parents): a UserError when it is a file (or another mistake), an
    EnvironmentFailure naming it when the file system refuses (read-only, full)."""
    workdir = epath.Path(workdir)
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        if workdir.is_file():
            raise UserError(f"workdir {workdir}: a file, not a directory") from e
        raise failed_write(e, workdir) from e
    return workdir


COMMANDS = "command.txt"  # one line per finished training command in the workdir, oldest first


def record_command(workdir: str | epath.Path, argv: list[str]) -> None:
    """Appends `python -m catvae_jax.main ARGS` (ARGS = argv[1:], shell-quoted) to
    WORKDIR/command.txt: the commands whose runs finished there, which an export's model card
    shows."""
    path = epath.Path(workdir) / COMMANDS
    line = shlex.join(["python", "-m", "catvae_jax.main", *argv[1:]])
    try:
        before = path.read_text() if path.exists() else ""
        atomic.write_atomic(path, before + line + "\n")
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from e


def read_commands(workdir: str | epath.Path) -> list[str]:
    """The lines of WORKDIR/command.txt (none when it is missing or unreadable)."""
    try:
        return [x for x in (epath.Path(workdir) / COMMANDS).read_text().splitlines() if x.strip()]
    except OSError:
        return []


def lock(workdir: epath.Path, what: str) -> WorkdirLock:
    """Takes WORKDIR/.lock on process 0 (the one writer of a multi-process run; the others
    learn of a refusal through a broadcast and raise the same UserError)."""
    held = WorkdirLock(workdir, what)
    refusal = ""
    if jax.process_index() == 0:
        try:
            held.acquire()
        except UserError as e:
            refusal = str(e)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils  # multi-process runs only

        refused = multihost_utils.broadcast_one_to_all(np.int32(bool(refusal)))
        if refused and not refusal:
            refusal = f"workdir {workdir} is in use by another writer (see process 0)"
    if refusal:
        raise UserError(refusal)
    return held


def _has_checkpoint(workdir: epath.Path) -> bool:
    """Whether WORKDIR/checkpoints holds a committed step (Orbax names it by its number; one
    being written is a *.orbax-checkpoint-tmp* folder)."""
    folder = checkpoint_dir(workdir)
    return folder.is_dir() and any(p.name.isdigit() for p in folder.iterdir())


def bootstrap(workdir: epath.Path, config: ml_collections.ConfigDict) -> dict:
    """Writes WORKDIR/config.json (process 0) and returns it as the dict every checkpoint
    stores; refuses a resume whose model or data shape changed (UserError)."""
    config_dict = config.to_dict()
    config_dict["dataset"] = data.describe(config)
    _check_resume(workdir, config_dict)
    if jax.process_index() == 0:
        atomic.write_json(workdir / "config.json", config_dict)
    return config_dict


def save(
    ckpts: Checkpoints,
    step: int,
    state: Any,
    progress: Progress,
    config_dict: dict,
    val_loss: float,
    **extra: Any,
) -> None:
    """Saves checkpoint `step`: the train state, {step, progress, **extra} and the config.
    Process 0 then deletes the sampler files (flow_/gmm_<step>.npz) of `step` and of the
    checkpoints rotated away."""
    meta = {"step": step, "progress": dataclasses.asdict(progress), **extra}
    ckpts.save(step, state, meta, config_dict, val_loss)
    if jax.process_index() == 0:
        stored.remove_stale(ckpts.workdir, set(ckpts.steps()) - {step})


def _check_resume(workdir: epath.Path, config_dict: dict) -> None:
    """Refuses a changed model/data shape on resume; notes other changed fields. A config.json
    without a checkpoint beside it (a start that failed before its first save, e.g. on a
    mistyped flag) resumes nothing: the new config replaces it silently."""
    path = workdir / "config.json"
    if not path.exists() or not _has_checkpoint(workdir):
        return
    old = config_lib.read_json(path).to_dict()
    shaped = config_lib.shape_changes(old, config_dict)
    if shaped:
        flat_old, flat_new = config_lib.flatten(old), config_lib.flatten(config_dict)
        # The field the user changed, rather than the `dataset` record derived from it.
        k = min(shaped, key=lambda k: k.startswith("dataset."))
        raise UserError(
            f"cannot resume {workdir} with a changed '{k}' (was {flat_old.get(k)!r},"
            f" now {flat_new.get(k)!r}); use a new workdir"
        )
    others = config_lib.other_changes(old, config_dict)
    if others:
        print(f"resuming with changed fields: {', '.join(others)}", flush=True)
