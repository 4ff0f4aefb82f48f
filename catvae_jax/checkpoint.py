"""Orbax checkpoints in WORKDIR/checkpoints/<step>/: train state, loop position and config.

Kept: the best checkpoint by validation loss and the two latest. A newest checkpoint that cannot
be read (half-written, corrupt) is skipped with a warning and the one before it is used.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath
from jax.sharding import NamedSharding

from catvae_jax.errors import UserError

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _absl_errors_only(active: bool = True) -> Iterator[None]:
    """Within the block (if `active`), absl (Orbax's logger) shows errors only."""
    absl_log = logging.getLogger("absl")
    level = absl_log.level
    if active:
        absl_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        absl_log.setLevel(level)


def checkpoint_dir(workdir: str | epath.Path) -> epath.Path:
    """WORKDIR/checkpoints as an absolute path (Orbax refuses relative ones)."""
    text = os.fspath(workdir)
    if "://" not in text:  # a local path; gs:// and other URIs are absolute already
        text = os.path.abspath(text)
    return epath.Path(text) / "checkpoints"


class Checkpoints:
    """A CheckpointManager for one workdir. `read_only` managers never write or delete."""

    def __init__(self, workdir: str | epath.Path, *, read_only: bool = False):
        policy = ocp.checkpoint_managers
        # Orbax warns that a read-only manager is read-only: no news to the caller.
        with _absl_errors_only(read_only):
            options = ocp.CheckpointManagerOptions(
                best_fn=lambda m: m["val_loss"],
                best_mode="min",
                preservation_policy=policy.AnyPreservationPolicy(
                    [
                        policy.LatestN(2),
                        policy.BestN(get_metric_fn=lambda m: m["val_loss"], reverse=True, n=1),
                    ]
                ),
                read_only=read_only,
                create=not read_only,
                cleanup_tmp_directories=not read_only,
            )
            self.manager = ocp.CheckpointManager(checkpoint_dir(workdir), options=options)

    def save(self, step: int, state: Any, meta: dict, config: dict, val_loss: float) -> None:
        """Writes (asynchronously) the checkpoint of `step`; `val_loss` ranks it for "best"."""
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            meta=ocp.args.JsonSave(meta),
            config=ocp.args.JsonSave(config),
        )
        self.manager.save(step, args=args, metrics={"val_loss": float(val_loss)}, force=True)

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def resolve(self, step: str | int) -> int | None:
        """'latest', 'best' or a step number → an existing step, or None if there is none."""
        if not self.steps():
            return None
        if step == "latest":
            return self.manager.latest_step()
        if step == "best":
            return self.manager.best_step()
        try:
            number = int(step)
        except (TypeError, ValueError) as e:
            raise UserError(f"step must be 'best', 'latest' or a number, got '{step}'") from e
        if number not in self.steps():
            raise UserError(f"no checkpoint at step {number}; have {self.steps()}")
        return number

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict, dict]:
        """(state, meta, config) of checkpoint `step`; `abstract_state` gives shapes/shardings.

        Raises ValueError naming the first array whose stored shape differs from
        `abstract_state`, before any read starts (a failed read leaves Orbax's background
        threads writing tracebacks at interpreter exit).
        """
        self.check_shapes(step, abstract_state)
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            meta=ocp.args.JsonRestore(),
            config=ocp.args.JsonRestore(),
        )
        restored = self.manager.restore(step, args=args)
        return restored.state, restored.meta, restored.config

    def check_shapes(self, step: int, abstract_state: Any) -> None:
        """Raises ValueError if checkpoint `step`'s arrays differ from `abstract_state`'s."""
        # Orbax warns "Metadata file does not exist" for the item: harmless here.
        with _absl_errors_only(), ocp.StandardCheckpointer() as reader:
            stored = _shapes(reader.metadata(self.manager.directory / str(step) / "state"))
        for name, shape in _shapes(abstract_state).items():
            if stored.get(name) != shape:
                have = "missing" if name not in stored else f"shape {stored[name]}"
                raise ValueError(f"{name}: the checkpoint has {have}, the model wants {shape}")

    def restore_newest_readable(self, abstract_state: Any) -> tuple[int, Any, dict, dict] | None:
        """Restores the newest checkpoint that reads back.

        Unreadable ones are skipped with a warning and moved aside to
        checkpoints/unreadable-<step>-<ns> (kept for inspection, out of the way of the step
        that will be saved again).
        """
        for step in reversed(self.steps()):
            try:
                return (step, *self.restore(step, abstract_state))
            except Exception as e:  # a corrupt checkpoint must not stop the resume
                log.warning("skipping unreadable checkpoint at step %d: %s", step, e)
                print(
                    f"warning: skipping unreadable checkpoint at step {step} "
                    f"({type(e).__name__}); moved aside as unreadable-{step}",
                    flush=True,
                )
                if jax.process_index() == 0:
                    root = epath.Path(self.manager.directory)
                    (root / str(step)).rename(root / f"unreadable-{step}-{time.time_ns()}")
                self.manager.reload()
        return None

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def abstract_like(tree: Any, sharding: NamedSharding | None = None) -> Any:
    """ShapeDtypeStructs of `tree`, optionally all with `sharding` (a restore target)."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding or x.sharding), tree
    )


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """{"params/fc/kernel/value": shape, ...} for a state tree or Orbax tree metadata."""
    metadata = getattr(tree, "item_metadata", None)
    tree = tree if metadata is None else metadata

    def name(key: Any) -> str:
        for attr in ("key", "idx", "name"):
            if hasattr(key, attr):
                return str(getattr(key, attr))
        return str(key)

    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return {"/".join(name(k) for k in path): tuple(leaf.shape) for path, leaf in leaves}
