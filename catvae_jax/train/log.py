"""A training run's log: WORKDIR/metrics.jsonl (one flat JSON object per line) and W&B.

Only process 0 writes; other processes get a TrainingLog that does nothing.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath

from catvae_jax.atomic import naming, write_atomic


def _plain(value: Any) -> Any:
    value = np.asarray(value).item() if hasattr(value, "shape") or np.isscalar(value) else value
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep the line valid
    return value


class TrainingLog:
    """A training run's log: appends metric lines to metrics.jsonl and logs them (and images)
    to W&B."""

    def __init__(
        self,
        workdir: str | epath.Path,
        config: ml_collections.ConfigDict,
        resumed: bool = False,
        resumed_step: int = 0,
    ):
        """`resumed_step`: the step training continues from (0 for a fresh run); lines of later
        steps, left by an attempt that stopped after its last checkpoint, are dropped."""
        self.active = jax.process_index() == 0
        self.path = epath.Path(workdir) / "metrics.jsonl"
        self.run = None
        if self.active:
            self._truncate_history(resumed_step)
        # WANDB_MODE in the environment (a container, CI) wins over the config's mode.
        mode = os.environ.get("WANDB_MODE") or config.wandb.mode
        if not self.active or mode == "disabled":
            return
        import wandb  # slow to import; only when used

        os.environ.setdefault("WANDB_SILENT", "true")
        self.run = wandb.init(
            mode=mode,
            project=config.wandb.project,
            name=config.wandb.name or epath.Path(workdir).name,
            group=config.wandb.group or None,
            dir=str(workdir),
            config=config.to_dict(),
            resume="allow" if resumed else None,
        )

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
                f"metrics.jsonl: dropped {dropped} line(s) after step {step} "
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
        if self.run is not None:
            self.run.log({k: v for k, v in line.items() if k != "step"}, step=int(step))

    def write_image(self, step: int, name: str, image: np.ndarray) -> None:
        if self.run is not None:
            import wandb  # slow to import; only when a W&B run is open

            self.run.log({name: wandb.Image(image)}, step=int(step))

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None
