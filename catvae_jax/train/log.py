"""A training run's log: WORKDIR/metrics.jsonl (one flat JSON object per line), W&B and,
with `config.tensorboard`, TensorBoard event files in WORKDIR/tensorboard.

Only process 0 writes; other processes get a TrainingLog that does nothing. The W&B run opens on
the first line or image logged, with the id kept in WORKDIR/wandb_run_id: a resumed run continues
the same W&B run, and a re-run with nothing left to do opens none.
"""

from __future__ import annotations

import json
import math
import netrc
import os
import secrets
import string
from typing import Any
from urllib.parse import urlsplit

import jax
import ml_collections
import numpy as np
from etils import epath
from tqdm.auto import tqdm

from catvae_jax.atomic import naming, write_atomic
from catvae_jax.cli import plural
from catvae_jax.errors import UserError

RUN_ID_FILE = "wandb_run_id"
TENSORBOARD_DIR = "tensorboard"


def wandb_mode(config: ml_collections.ConfigDict) -> str:
    """The W&B mode of a run: WANDB_MODE in the environment (a container, CI) wins over the
    config's wandb.mode; an empty WANDB_MODE counts as unset."""
    return os.environ.get("WANDB_MODE") or config.wandb.mode


def check_wandb_login(config: ml_collections.ConfigDict) -> None:
    """A UserError when W&B would log online without credentials (no WANDB_API_KEY, no
    WANDB_IDENTITY_TOKEN_FILE, no netrc entry for the W&B host), so that a run refuses in one
    line before it creates anything."""
    if wandb_mode(config) != "online" or jax.process_index() != 0:
        return
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return
    host = urlsplit(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").netloc
    path = epath.Path(os.environ.get("NETRC") or "~/.netrc").expanduser()
    try:
        entry = netrc.netrc(str(path)).authenticators(host) if path.exists() else None
    except (netrc.NetrcParseError, OSError):
        entry = None
    if not (entry and entry[2]):
        raise UserError(
            f"wandb.mode is online but there is no W&B API key for {host}: run "
            "`.venv/bin/wandb login` (or set WANDB_API_KEY), or use --config.wandb.mode=offline"
        )


def wandb_run_id(workdir: str | epath.Path) -> str:
    """The W&B run id of `workdir`: read from WORKDIR/wandb_run_id, or made (8 random lowercase
    letters and digits, as W&B's own) and written there atomically."""
    path = epath.Path(workdir) / RUN_ID_FILE
    if path.exists():
        saved = path.read_text().strip()
        if saved:
            return saved
    alphabet = string.ascii_lowercase + string.digits
    run_id = "".join(secrets.choice(alphabet) for _ in range(8))
    write_atomic(path, run_id + "\n")
    return run_id


def _plain(value: Any) -> Any:
    value = np.asarray(value).item() if hasattr(value, "shape") or np.isscalar(value) else value
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep the line valid
    return value


class TrainingLog:
    """A training run's log: appends metric lines to metrics.jsonl and logs them (and images)
    to W&B and TensorBoard."""

    def __init__(
        self,
        workdir: str | epath.Path,
        config: ml_collections.ConfigDict,
        resumed_step: int = 0,
    ):
        """`resumed_step`: the step training continues from (0 for a fresh run); lines of later
        steps, left by an attempt that stopped after its last checkpoint, are dropped. What W&B
        resumes is decided by the run id in the workdir (`wandb_run_id`)."""
        self.active = jax.process_index() == 0
        self.workdir, self.config = epath.Path(workdir), config
        self.path = self.workdir / "metrics.jsonl"
        self.run = None  # the W&B run, once opened
        self.tensorboard = None  # a tensorboardX SummaryWriter, once opened
        if self.active:
            self._truncate_history(resumed_step)
        self.mode = wandb_mode(config) if self.active else "disabled"

    def _wandb(self):
        """The W&B run, opened on first use (None when W&B is off). wandb's own lines (where
        the run is, how to sync it) are printed above the progress bar."""
        if self.run is None and self.mode != "disabled":
            import wandb  # slow to import; only when used

            if os.environ.get("WANDB_MODE") == "":  # unset for us (`wandb_mode`); wandb refuses it
                del os.environ["WANDB_MODE"]
            with tqdm.external_write_mode():
                self.run = wandb.init(
                    mode=self.mode,
                    project=self.config.wandb.project,
                    name=self.config.wandb.name or self.workdir.name,
                    group=self.config.wandb.group or None,
                    dir=str(self.workdir),
                    config=self.config.to_dict(),
                    id=wandb_run_id(self.workdir),
                    resume="allow",
                )
        return self.run

    def _tensorboard(self):
        """The TensorBoard writer (WORKDIR/tensorboard), opened on first use with
        config.tensorboard; None otherwise."""
        if self.tensorboard is None and self.active and self.config.tensorboard:
            from tensorboardX import SummaryWriter  # only with config.tensorboard

            self.tensorboard = SummaryWriter(str(self.workdir / TENSORBOARD_DIR))
        return self.tensorboard

    def _truncate_history(self, step: int) -> None:
        """Keeps the lines of steps ≤ `step` (and drops unparsable half-written ones), so that
        every step appears once after a resume."""
        if not self.path.exists():
            return
        kept, dropped = [], 0
        for line in self.path.read_text().splitlines():
            try:
                ok = int(json.loads(line)["step"]) <= step
            except (ValueError, KeyError, TypeError):
                ok = False
            if ok:
                kept.append(line + "\n")
            else:
                dropped += 1
        if dropped:
            write_atomic(self.path, "".join(kept))
            print(
                f"metrics.jsonl: dropped {plural(dropped, 'line')} after step {step} "
                f"(written by an attempt that stopped after its last checkpoint)",
                flush=True,
            )

    def write(self, step: int, epoch: int, metrics: dict[str, Any]) -> None:
        """One line {step, epoch, **metrics}; values become plain floats/ints."""
        if not self.active:
            return
        line = {"step": int(step), "epoch": int(epoch)}
        line.update({k: _plain(v) for k, v in metrics.items()})
        with naming(self.path), self.path.open("a") as f:
            f.write(json.dumps(line) + "\n")
        run = self._wandb()
        if run is not None:
            run.log({k: v for k, v in line.items() if k != "step"}, step=int(step))
        board = self._tensorboard()
        if board is not None:
            for k, v in line.items():
                if k not in ("step", "epoch") and isinstance(v, int | float):
                    board.add_scalar(k, v, int(step))

    def write_image(self, step: int, name: str, image: np.ndarray) -> None:
        """Logs one uint8 [H, W, 3] image as `name` at `step` to W&B and TensorBoard."""
        if not self.active:
            return
        run = self._wandb()
        if run is not None:
            import wandb  # slow to import; only when a W&B run is open

            run.log({name: wandb.Image(image)}, step=int(step))
        board = self._tensorboard()
        if board is not None:
            board.add_image(name, np.asarray(image), int(step), dataformats="HWC")
            board.flush()

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None
        if self.run is not None:
            self.run.finish()
            self.run = None
