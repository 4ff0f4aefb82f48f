"""Orbax checkpoints in WORKDIR/checkpoints/<step>/: train state, loop position and config.

Kept: the best checkpoint by validation loss and the two latest. A newest checkpoint that cannot
be read (half-written, corrupt) is skipped with a warning and the one before it is used.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import pathlib
import shutil
import sys
import time
import warnings
from collections.abc import Iterator
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath
from jax.sharding import NamedSharding

from catvae_jax.errors import StorageError, UserError, storage_error

log = logging.getLogger(__name__)


class LayoutMismatch(ValueError):
    """A readable checkpoint whose arrays differ from the wanted state (not damage)."""


def _reason(e: BaseException) -> str:
    """`Type: first line` of the root cause of a failed read (at most ~170 characters)."""
    for _ in range(8):  # TensorStore's own error sits under Orbax's wrappers
        inner = e.__cause__ or e.__context__
        if inner is None:
            break
        e = inner
    first = next((line.strip() for line in str(e).splitlines() if line.strip()), "")
    return f"{type(e).__name__}: {first[:160]}" if first else type(e).__name__


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


class _DropOrbaxErrors(logging.Filter):
    """Drops Orbax's ERROR logs (with tracebacks) of a failed background save: the same error
    reaches the main thread at the next save or close, where it is reported in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR and "orbax" in record.pathname)


_DROP_ORBAX_ERRORS = _DropOrbaxErrors()


def _abandoned_read(unraisable: Any) -> bool:
    """Whether an unraisable error is the debris of a failed Orbax read: one of its read
    coroutines collected unfinished, or a TensorStore callback that finds asyncio's loop closed."""
    code = getattr(unraisable.object, "cr_code", None)
    if code is not None and "orbax" in code.co_filename:
        return True
    error = unraisable.exc_value
    return isinstance(error, RuntimeError) and str(error) == "Event loop is closed"


class _DropUnretrievedReads(logging.Filter):
    """asyncio's "Future exception was never retrieved" (with a traceback): the other reads of
    a gather that one failed read ended."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "exception was never retrieved" not in record.getMessage()


def _silence_abandoned_reads() -> None:
    """Called before a reader reads checkpoints. After a failed read (reported in one line),
    Orbax's unfinished reads fail on, at times of the collector's and TensorStore's choosing
    (some while the failing read is still raising), and Python prints each with a traceback:
    coroutines collected unfinished ("Exception ignored in"), TensorStore callbacks that find
    asyncio's loop closed, asyncio's "exception was never retrieved", coroutines never awaited.
    Those (and only those) are dropped, logged at debug level; any other error still reaches
    the previous hook."""
    previous = sys.unraisablehook
    if getattr(previous, "_drops_orbax_reads", False):
        return

    def hook(unraisable: Any) -> None:
        if _abandoned_read(unraisable):
            log.debug("dropped an abandoned Orbax read: %s", unraisable.exc_value)
            return
        previous(unraisable)

    hook._drops_orbax_reads = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook
    logging.getLogger("asyncio").addFilter(_DropUnretrievedReads())
    # ... and the reads it never started: "RuntimeWarning: coroutine '...' was never awaited"
    warnings.filterwarnings("ignore", r"coroutine '.*' was never awaited", RuntimeWarning)


class Checkpoints:
    """A CheckpointManager for one workdir. `read_only` managers never write or delete."""

    def __init__(self, workdir: str | epath.Path, *, read_only: bool = False):
        self.workdir = epath.Path(workdir)
        if not read_only:
            logging.getLogger("absl").addFilter(_DROP_ORBAX_ERRORS)
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
        """Writes (asynchronously) the checkpoint of `step`; `val_loss` ranks it for "best".

        A TrainState's EMA and discriminator go into their own items, `ema` and `disc`, so the
        `state` item keeps the layout of checkpoints written before either existed (and
        without them), and a reader restores only what it needs."""
        items = {}
        for name in _OPTIONAL_ITEMS:
            part = getattr(state, name, None)
            if part is not None:
                items[name] = ocp.args.StandardSave(_as_dict(part))
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(_state_item(state)),
            meta=ocp.args.JsonSave(meta),
            config=ocp.args.JsonSave(config),
            **items,
        )
        with self._storage_errors():  # an earlier save, still being written, failed
            self.manager.wait_until_finished()
        self._check_space(step, state)
        with self._storage_errors():
            self.manager.save(step, args=args, metrics={"val_loss": float(val_loss)}, force=True)

    def _check_space(self, step: int, state: Any) -> None:
        """Refuses to start a save that would not fit on a local disk: one clean StorageError
        instead of a half-written step and Orbax's background threads failing one by one."""
        root = self.manager.directory
        if "://" in os.fspath(root):
            return  # object stores: no free-space figure; a failed write is reported instead
        done = [s for s in self.steps() if s != step]
        need = _tree_size(root / str(done[-1])) if done else 0
        need = need or sum(x.nbytes for x in jax.tree.leaves(state)) + 2**18  # + metadata
        free = shutil.disk_usage(os.fspath(root)).free
        if free < 1.2 * need:
            raise StorageError(
                f"cannot write the checkpoint of step {step} in {root}: No space left on device "
                f"({free / 2**20:.1f} MiB free, a checkpoint takes ~{need / 2**20:.1f} MiB)"
            )

    @contextlib.contextmanager
    def _storage_errors(self) -> Iterator[None]:
        """A failed write (full disk, read-only file system) becomes one StorageError."""
        try:
            yield
        except Exception as e:
            failed = storage_error(e, where=f"a checkpoint in {self.manager.directory}")
            if failed is None:
                raise
            raise failed from e

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def resolve(self, step: str | int) -> int | None:
        """'latest', 'best' or a step number → an existing step, or None if there is none."""
        order = self.candidates(step)
        return order[0] if order else None

    def candidates(self, step: str | int) -> list[int]:
        """The steps a reader of `step` tries, in order: for 'best' all by validation loss (the
        best first), for 'latest' all newest first, for a number just that one (a UserError if
        it does not exist or is not a step). Empty when there is no checkpoint."""
        have = self.steps()
        if not have:
            return []
        if step == "latest":
            return have[::-1]
        if step == "best":
            best = self.manager.best_step()
            rest = sorted((s for s in have if s != best), key=lambda s: (self._val_loss(s), -s))
            return [best, *rest] if best is not None else rest
        try:
            number = int(step)
        except (TypeError, ValueError) as e:
            raise UserError(f"step must be 'best', 'latest' or a number, got '{step}'") from e
        if number not in have:
            raise UserError(f"no checkpoint at step {number}; have {have}")
        return [number]

    def _val_loss(self, step: int) -> float:
        try:
            return float(self.manager.metrics(step)["val_loss"])
        except Exception:  # no or unreadable metrics: ranked last
            return float("inf")

    def restore_for_reading(
        self, step: str | int, abstract_state: Any
    ) -> tuple[int, Any, dict, dict] | None:
        """(step, state, meta, config) of the first readable checkpoint of `candidates(step)`,
        or None when there is no checkpoint at all. Never moves or deletes anything.

        An unreadable checkpoint is skipped with a one-line warning on stderr; an explicitly
        numbered one that is unreadable, or none readable at all, is a UserError. A checkpoint
        that reads but does not fit `abstract_state` (LayoutMismatch) is not damage: raised.
        """
        order = self.candidates(step)
        if not order:
            return None
        _silence_abandoned_reads()  # before: a failing read's debris comes while it fails
        for number in order:
            try:
                return (number, *self.restore(number, abstract_state))
            except LayoutMismatch:
                raise
            except Exception as e:  # damaged: truncated or missing files, no metadata, ...
                where = self.manager.directory / str(number)
                if len(order) == 1:
                    raise UserError(f"checkpoint {where} is unreadable ({_reason(e)})") from e
                print(
                    f"warning: skipping unreadable checkpoint {where} ({_reason(e)})",
                    file=sys.stderr,
                    flush=True,
                )
        raise UserError(f"no readable checkpoint in {self.manager.directory} (tried {order})")

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict, dict]:
        """(state, meta, config) of checkpoint `step`; `abstract_state` gives shapes/shardings.

        Raises LayoutMismatch naming the first array whose stored shape differs from
        `abstract_state`, before any read starts (a failed read leaves Orbax's background
        threads writing tracebacks at interpreter exit). An `ema` or `disc` of
        `abstract_state` is read if the checkpoint has one; otherwise (and when
        `abstract_state`'s is None) the state comes back with None there.
        """
        base = _state_item(abstract_state)
        self.check_shapes(step, base)
        wanted = {}
        for name in _OPTIONAL_ITEMS:
            part = getattr(abstract_state, name, None)
            if part is not None and self.has_item(step, name):
                self.check_shapes(step, _as_dict(part), name)
                wanted[name] = part
        items = {k: ocp.args.StandardRestore(_as_dict(v)) for k, v in wanted.items()}
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(base),
            meta=ocp.args.JsonRestore(),
            config=ocp.args.JsonRestore(),
            **items,
        )
        restored = self.manager.restore(step, args=args)
        state = restored.state
        if hasattr(abstract_state, "ema"):  # back to a TrainState (of the same class)
            parts = {k: _from_dict(wanted[k], restored[k]) if k in wanted else None
                     for k in _OPTIONAL_ITEMS}  # fmt: skip
            state = abstract_state.replace(**state, **parts)
        return state, restored.meta, restored.config

    def has_ema(self, step: int) -> bool:
        """Whether checkpoint `step` holds an EMA of the parameters."""
        return self.has_item(step, "ema")

    def has_item(self, step: int, name: str) -> bool:
        """Whether checkpoint `step` holds the item `name` (`ema`, `disc`)."""
        return (epath.Path(self.manager.directory) / str(step) / name).exists()

    def check_shapes(self, step: int, abstract_state: Any, item: str = "state") -> None:
        """Raises LayoutMismatch if the arrays of checkpoint `step`'s `item` differ from
        `abstract_state`'s (named "<item>/<path>" for an item other than `state`)."""
        # Orbax warns "Metadata file does not exist" for the item: harmless here.
        with _absl_errors_only(), ocp.StandardCheckpointer() as reader:
            stored = _shapes(reader.metadata(self.manager.directory / str(step) / item))
        prefix = "" if item == "state" else f"{item}/"
        for name, shape in _shapes(abstract_state).items():
            if stored.get(name) != shape:
                have = "missing" if name not in stored else f"shape {stored[name]}"
                raise LayoutMismatch(
                    f"{prefix}{name}: the checkpoint has {have}, the model wants {shape}"
                )

    def restore_newest_readable(self, abstract_state: Any) -> tuple[int, Any, dict, dict] | None:
        """Restores the newest checkpoint that reads back.

        Unreadable ones are skipped with a warning and moved aside to
        checkpoints/unreadable-<step>-<ns> (kept for inspection, out of the way of the step
        that will be saved again). One that reads but whose arrays differ from
        `abstract_state` is not damage: a UserError, nothing moved.
        """
        _silence_abandoned_reads()  # before: a failing read's debris comes while it fails
        for step in reversed(self.steps()):
            try:
                return (step, *self.restore(step, abstract_state))
            except LayoutMismatch as e:
                raise UserError(
                    f"checkpoint {step} in {self.manager.directory} does not fit this model: "
                    f"{e}; use a new workdir"
                ) from e
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
        with self._storage_errors():
            self.manager.wait_until_finished()

    def close(self) -> None:
        try:
            with self._storage_errors():
                self.manager.close()  # waits for a save in flight; raises its error if it failed
        finally:
            logging.getLogger("absl").removeFilter(_DROP_ORBAX_ERRORS)


def read_checkpoint(
    workdir: str | epath.Path, step: str | int, abstract_state: Any
) -> tuple[int, Any, bool]:
    """(step, state, whether it holds an EMA) of checkpoint `step` of `workdir` ("best",
    "latest" or a number; `Checkpoints.restore_for_reading`), read by a read-only manager. A
    UserError when there is none or it does not fit `abstract_state`."""
    ckpts = Checkpoints(workdir, read_only=True)
    try:
        restored = ckpts.restore_for_reading(step, abstract_state)
        has_ema = restored is not None and ckpts.has_ema(restored[0])
    except LayoutMismatch as e:
        raise UserError(
            f"a checkpoint in {workdir} does not match its config: {str(e).splitlines()[0][:200]}"
        ) from e
    finally:
        ckpts.close()
    if restored is None:
        raise UserError(f"no checkpoint in {workdir}")
    return restored[0], restored[1], has_ema


_STATE_FIELDS = ("step", "params", "opt_state", "plateau")  # the `state` item, as before EMA
_OPTIONAL_ITEMS = ("ema", "disc")  # TrainState fields saved as items of their own when present


def _state_item(state: Any) -> Any:
    """The `state` item of a TrainState: its fields but `ema` and `disc`, as a dict (the layout
    that checkpoints from before EMA have; an `ema: None` field would not match it)."""
    if not hasattr(state, "ema"):
        return state
    return {name: getattr(state, name) for name in _STATE_FIELDS}


def _as_dict(part: Any) -> Any:
    """An optional item as Orbax stores it: a dataclass (the DiscState) as a dict of its
    fields, anything else (the EMA's nnx.State) as it is."""
    if dataclasses.is_dataclass(part):
        return {f.name: getattr(part, f.name) for f in dataclasses.fields(part)}
    return part


def _from_dict(like: Any, restored: Any) -> Any:
    """The inverse of `_as_dict`, shaped like the restore target `like`."""
    return like.replace(**restored) if dataclasses.is_dataclass(like) else restored


def _tree_size(path: epath.Path) -> int:
    """Bytes on disk of the files under a local directory."""
    files = (f for f in pathlib.Path(path).rglob("*") if f.is_file())
    return sum(max(f.stat().st_size, 512 * f.stat().st_blocks) for f in files)


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
