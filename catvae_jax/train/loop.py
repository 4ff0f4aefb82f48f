"""`train_and_evaluate(config, workdir)`: the one entry point the CLI, tests and notebooks call.

Reads top to bottom: workdir (lock, config.json) → mesh → data → model → resume → steps → loop
(log, validate, checkpoint) → `on_finish` (the command's end-of-training job). Data parallel:
the batch is sharded over every device along the mesh axis `data`, parameters are replicated;
the same code runs on 1 CPU, N GPUs or a TPU slice.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from catvae_jax import atomic, compile_cache, data
from catvae_jax import config as config_lib
from catvae_jax.errors import NonFiniteError, Preempted, UserError, storage_error
from catvae_jax.model import networks
from catvae_jax.train import init_from, report, steps, timing
from catvae_jax.train import state as state_lib
from catvae_jax.train import workdir as workdir_lib
from catvae_jax.train.checkpoint import Checkpoints, abstract_like
from catvae_jax.train.hooks import PreemptionNotice, Profiler, progress_bar, say
from catvae_jax.train.log import TrainingLog, check_wandb_login
from catvae_jax.train.workdir import Progress

__all__ = ["NonFiniteError", "Preempted", "Progress", "train_and_evaluate"]


@dataclasses.dataclass(frozen=True)
class Finished:
    """What a finished run hands to `on_finish` (process 0): the final parameters (host
    arrays; EMA when on), their graphdef, step and config, the checkpoints (still being
    written: `ckpts.wait()` first), the first `num_eval_images` validation images (uint8) and
    the run's time breakdown (`timing.part(run.timing, ...)` times what on_finish does)."""

    workdir: epath.Path
    config: ml_collections.ConfigDict
    graphdef: nnx.GraphDef
    params: Any
    step: int
    ckpts: Checkpoints
    originals: np.ndarray
    timing: timing.Breakdown | None = None


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    on_validation: Callable[[int, dict[str, float]], None] | None = None,
    on_finish: Callable[[Finished], np.ndarray | None] | None = None,
) -> dict[str, float]:
    """Trains the configured VAE in `workdir` (resuming from its latest checkpoint if any).

    Writes checkpoints/, config.json, metrics.jsonl and timing.json (where the wall time went,
    `catvae_jax.train.timing`; also printed), and returns the final validation metrics plus
    `step`. JAX's persistent compilation cache is turned on first (`catvae_jax.compile_cache`;
    `config.compilation_cache`). `on_finish(Finished)`, if given, runs on process 0 after the loop
    (`catvae_jax.after_training.finish`: the learned prior and the pictures); an image it
    returns (uint8 HWC) is logged to W&B as `samples`. Raises UserError for a bad config or a
    workdir another process writes to, NonFiniteError when the loss diverges, StorageError when
    the disk fills, Preempted on SIGTERM or Ctrl-C. `on_validation(step, val_metrics)`, if
    given, is called after each validation's checkpoint is saved (a sweep reports to its
    pruner there); an exception it raises ends the run cleanly, that checkpoint complete.
    """
    config_lib.validate(config)
    check_wandb_login(config)  # before the workdir exists
    compile_cache.enable(config.compilation_cache)
    workdir = workdir_lib.create(workdir)
    lock = workdir_lib.lock(workdir, "training")
    preemption = PreemptionNotice()  # from here on Ctrl-C and SIGTERM stop at a checkpoint
    breakdown = timing.Breakdown()
    try:
        return _Run(config, workdir, on_validation, on_finish, breakdown).train(preemption)
    except Exception as e:  # a full or unwritable disk, however deep Orbax wrapped it
        failed = storage_error(e)
        if failed is None or failed is e:
            raise
        raise failed from e
    finally:
        breakdown.close()
        preemption.restore()
        lock.release()


def make_mesh(batch_size: int | None = None) -> jax.sharding.Mesh:
    """A 1-D mesh over all devices (of all processes) with the batch axis `data`; a UserError
    unless `batch_size` (if given) is a multiple of the device count."""
    if batch_size is not None and batch_size % jax.device_count():
        raise UserError(
            f"config field 'batch_size' ({batch_size}) must be a multiple of "
            f"the device count ({jax.device_count()})"
        )
    return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def validation_metrics(
    eval_step: Callable,
    params: nnx.State,
    split: np.ndarray,
    batch_size: int,
    mesh: jax.sharding.Mesh,
    key: jax.Array,
) -> dict[str, float]:
    """Mean per-image loss, recon, kl and ssim over a whole split (deterministic noise `key`)."""
    totals: dict[str, float] = {}
    for batch, mask in data.eval_batches(split, batch_size, mesh):
        sums = jax.device_get(eval_step(params, batch, mask, key))
        for k, v in sums.items():
            totals[k] = totals.get(k, 0.0) + float(v)
    count = totals.pop("count")
    return {f"val_{k}": v / count for k, v in totals.items()}


@dataclasses.dataclass(frozen=True)
class Cadence:
    """When the loop logs, validates and checkpoints, by step (1-based, after the step)."""

    steps_per_epoch: int
    total_steps: int
    log_every: int
    eval_every: int  # scheduled validations: plateau and early stopping count these
    checkpoint_every: int

    @classmethod
    def of(cls, config: ml_collections.ConfigDict, steps_per_epoch: int) -> Cadence:
        total = config.num_epochs * steps_per_epoch
        total = min(total, config.max_steps) if config.max_steps > 0 else total
        every = config.eval_every_steps if config.eval_every_steps > 0 else steps_per_epoch
        ckpt = config.checkpoint_every_steps if config.checkpoint_every_steps > 0 else every
        return cls(steps_per_epoch, total, config.log_every_steps, every, ckpt)

    def epoch(self, step: int) -> int:
        return max(1, -(-step // self.steps_per_epoch))

    def validates(self, step: int) -> bool:
        return step % self.eval_every == 0

    def saves(self, step: int) -> bool:
        return self.validates(step) or step % self.checkpoint_every == 0 or self.last(step)

    def logs(self, step: int) -> bool:
        return step % self.log_every == 0 or self.saves(step)

    def last(self, step: int) -> bool:
        return step == self.total_steps

    def call_length(self, step: int, steps_per_call: int) -> int:
        """How many steps the call starting after `step` runs: `steps_per_call`, or fewer so
        that it ends at the next log, validation or checkpoint step (or the last)."""
        for n in range(1, steps_per_call):
            if self.logs(step + n):
                return n
        return steps_per_call


class _Run:
    """One training run's parts; `train` is the loop, each other method one job of it."""

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        workdir: epath.Path,
        on_validation,
        on_finish,
        breakdown: timing.Breakdown,
    ):
        self.config, self.workdir = config, workdir
        self.on_validation, self.on_finish = on_validation, on_finish
        self.timing = breakdown
        self.is_main = jax.process_index() == 0
        self.mesh = make_mesh(config.batch_size)
        with breakdown.part("data"):
            self.train_data = data.train_data(config, self.mesh)
            self.val_split = data.load_split(config, "validation")
        self.cadence = Cadence.of(config, self.train_data.steps_per_epoch)
        with breakdown.part("model_init"):
            self.graphdef, self.state = self._init_state()
        with breakdown.part("data"):
            self.config_dict = workdir_lib.bootstrap(workdir, config)  # describes the data
        with breakdown.part("restore"):
            self.ckpts = Checkpoints(workdir)
            self.progress, _ = self._resume()
        self._make_steps()
        with breakdown.part("logging"):
            self.writer = TrainingLog(workdir, config, resumed_step=int(self.state.step))
            self.report = report.Report(
                workdir, config, self.cadence, self.graphdef, self.val_split, self.writer,
                int(self.state.step), enabled=self.is_main,
            )  # fmt: skip

    def _init_state(self) -> tuple[nnx.GraphDef, state_lib.TrainState]:
        """(graphdef, step-0 TrainState replicated over the mesh)."""
        graphdef, state = state_lib.init_state(self.config, networks.init_compiled(self.config))
        replicated = NamedSharding(self.mesh, P())
        return graphdef, jax.tree.map(lambda x: data.to_global(np.asarray(x), replicated), state)

    def _resume(self) -> tuple[Progress, bool]:
        """Restores the newest readable checkpoint into self.state: (progress, resumed?)."""
        target = abstract_like(self.state, NamedSharding(self.mesh, P()))
        restored = self.ckpts.restore_newest_readable(target)
        if restored is None:
            if self.config.init_from:  # fine-tuning: a fresh run from another model's parameters
                self._start_from(self.config.init_from)
            return Progress(), False
        step, state, meta, _ = restored
        print(f"resumed from step {step} in {self.workdir}", flush=True)
        if state_lib.ema_decay(self.config) > 0 and state.ema is None:
            print(f"checkpoint {step} has no EMA: it starts from its parameters", flush=True)
        if self.state.disc is not None and state.disc is None:
            print(f"checkpoint {step} has no discriminator: a fresh one starts", flush=True)
            state = state.replace(disc=self.state.disc)
        self.state = state_lib.start_ema(state, self.config)
        return Progress(**meta["progress"]), True

    def _start_from(self, spec: str) -> None:
        """Replaces the step-0 parameters (and EMA) with those of the model `spec` names."""
        params, described = init_from.start_params(spec, self.state.params)
        replicated = NamedSharding(self.mesh, P())
        params = jax.tree.map(lambda x: data.to_global(x, replicated), params)
        self.state = state_lib.start_ema(self.state.replace(params=params, ema=None), self.config)
        print(f"initialised the parameters from {described}", flush=True)

    def _make_steps(self) -> None:
        config, replicated = self.config, NamedSharding(self.mesh, P())
        base_key = jax.random.key(config.seed)
        train_step = steps.make_train_step(self.graphdef, config, jax.random.fold_in(base_key, 1))
        self.steps_per_call = k = config.steps_per_call
        if k > 1:  # one program for every call length n ≤ k (an argument)
            train_step = steps.make_multi_step(train_step, k)
            self.call_lengths = [data.to_global(np.int32(n), replicated) for n in range(k + 1)]
        self.train_step = jax.jit(train_step, donate_argnums=0)
        schedule = steps.schedule(config, self.cadence.total_steps)
        self.schedule = jax.tree.map(lambda x: data.to_global(x, replicated), schedule)
        self.eval_step = jax.jit(steps.make_eval_step(self.graphdef, config))
        self.eval_key = jax.random.fold_in(base_key, 2)
        plateau = state_lib.make_plateau(config)
        self.plateau_update = jax.jit(lambda s, v: plateau.update({}, s, value=v)[1])

    def train(self, preemption: PreemptionNotice) -> dict[str, Any]:
        """The loop: calls of up to `steps_per_call` steps, logged; validated and checkpointed
        on the cadence; stopped early on a plateau of the validation loss or a preemption; then
        `on_finish`, and the time breakdown."""
        step, final = int(self.state.step), {}
        profiler = Profiler(
            self.workdir / "profile", start=step + 3, enabled=self.config.profile and self.is_main
        )
        bar = progress_bar(self.config, self.cadence.total_steps, step, enabled=self.is_main)
        meter = _Throughput(step, self.config.batch_size)
        calls = step  # + calls made: the counter all processes agree on a preemption with
        try:
            with jax.set_mesh(self.mesh):
                while step < self.cadence.total_steps:
                    n = self.cadence.call_length(step, self.steps_per_call)
                    with self.timing.part("train_steps"):
                        profiler.before(step)
                        metrics = self._call(step, n)
                        meter.add(metrics, None if self.steps_per_call == 1 else n)
                    self.timing.count("train_steps", n)
                    step, calls = step + n, calls + 1
                    profiler.after(step, metrics)
                    if self.cadence.logs(step):
                        self._log_train(step, meter, bar)
                    stop = preemption.reached(calls) and not self.cadence.last(step)
                    if self.cadence.saves(step) or stop:
                        final = self._validate_and_save(step, self.cadence.validates(step))
                        meter.restart()  # validation time is not train throughput
                    if stop:
                        raise Preempted(step, preemption.signum)
                    if self.progress.bad_evals >= self.config.early_stop_patience:
                        say(
                            f"early stopping at step {step}: no better validation loss in "
                            f"{self.progress.bad_evals} validations"
                        )
                        break
            profiler.stop()  # a run shorter than the traced steps: the trace ends with the loop
            final = final or self._validate()  # resumed at the end: nothing trained
            self._write_final_outputs(step, preemption)
        finally:  # also when the run stops early (non-finite loss, preemption, a user error)
            closers = (profiler.stop, bar.close, self._close_checkpoints, self.writer.close)
            try:
                _close_all(*closers, self.train_data.close)
            finally:
                self._report_timing()
        # ema and disc None: the parameters alone, as before either existed
        digest = state_lib.params_digest((self.state.params, self.state.ema, self.state.disc))
        return {**final, "step": step, "params_sha256": digest}

    def _call(self, step: int, n: int) -> dict:
        """Runs steps `step` … `step + n - 1` (one compiled call) into self.state; returns their
        metrics (one step's, or stacked [steps_per_call] when steps_per_call > 1)."""
        if self.steps_per_call == 1:
            batch = self.train_data.batch(step)
            self.state, metrics = self.train_step(self.state, batch, self.schedule)
            return metrics
        batches = self.train_data.batches(step, n, self.steps_per_call)
        length = self.call_lengths[n]
        self.state, metrics = self.train_step(self.state, batches, length, self.schedule)
        return metrics

    def _log_train(self, step: int, meter: _Throughput, bar) -> None:
        """Fetches the pending steps' metrics, stops on a non-finite one, writes their means."""
        with self.timing.part("train_steps"):  # fetching them waits for the steps
            means = meter.take(step)
        with self.timing.part("logging"):
            self.writer.write(step, self.cadence.epoch(step), means)
            bar.update(meter.advanced)
            bar.set_postfix(loss=f"{means['train_loss']:.4g}", img_s=f"{means['img_per_s']:.0f}")

    def _validate(self) -> dict[str, float]:
        with self.timing.part("validation"):
            return validation_metrics(
                self.eval_step,
                state_lib.eval_params(self.state),
                self.val_split,
                self.config.batch_size,
                self.mesh,
                self.eval_key,
            )

    def _validate_and_save(self, step: int, scheduled: bool) -> dict[str, float]:
        """Validates, counts a scheduled validation for the plateau and early stopping, logs,
        checkpoints and calls on_validation."""
        metrics = self._validate()
        if scheduled:
            with self.timing.part("validation"):
                self._count_validation(metrics["val_loss"])
        multiplier = steps.lr_multiplier(self.config, step, self.cadence.total_steps)
        lr = self.config.learning_rate * float(self.state.plateau.scale * multiplier)
        logged = {**metrics, "learning_rate": lr}
        with self.timing.part("logging"):
            self.writer.write(step, self.cadence.epoch(step), logged)
        with self.timing.part("checkpoint"):
            workdir_lib.save(
                self.ckpts, step, self.state, self.progress, self.config_dict, metrics["val_loss"]
            )
        with self.timing.part("pictures"):
            self.report.validation(step, logged, self.state)  # its line, pictures and metrics.png
        if self.on_validation is not None:
            self.on_validation(step, metrics)
        return metrics

    def _count_validation(self, val_loss: float) -> None:
        """Steps the reduce-on-plateau scale and the early-stopping count."""
        self.state = self.state.replace(plateau=self.plateau_update(self.state.plateau, val_loss))
        if val_loss < self.progress.best_val_loss:
            self.progress.best_val_loss, self.progress.bad_evals = val_loss, 0
        else:
            self.progress.bad_evals += 1

    def _write_final_outputs(self, step: int, preemption: PreemptionNotice) -> None:
        """Process 0: hands the final parameters to `on_finish` and logs the image it returns.
        It runs once every checkpoint is complete, so SIGTERM or Ctrl-C stops it at once
        (Preempted: exit 143 or 130), as one that came during the last steps does."""
        if not self.is_main or self.on_finish is None:
            return
        with self.timing.part("checkpoint"):
            self.ckpts.wait()
        preemption.stop_at_once(step)
        params = jax.device_get(state_lib.eval_params(self.state))
        originals = self.val_split[: self.config.num_eval_images]
        finished = Finished(
            self.workdir, self.config, self.graphdef, params, step, self.ckpts, originals,
            self.timing,
        )  # fmt: skip
        grid = self.on_finish(finished)
        if grid is not None:
            with self.timing.part("logging"):
                self.writer.write_image(step, "samples", grid)

    def _close_checkpoints(self) -> None:
        """Waits for the checkpoints still being written (timed as `checkpoint`)."""
        with self.timing.part("checkpoint"):
            self.ckpts.close()

    def _report_timing(self) -> None:
        """Process 0: prints the time breakdown and writes it to WORKDIR/timing.json, also
        for a run that stops early (a failure to write it is a warning, never the error)."""
        self.timing.close()
        if not self.is_main:
            return
        summary = self.timing.summary()
        summary["steps_per_call"] = self.steps_per_call
        say(timing.table(summary))
        try:
            atomic.write_json(self.workdir / "timing.json", summary)
        except OSError as e:
            say(f"warning: timing.json not written: {e}", file=sys.stderr)


class _Throughput:
    """The train metrics awaiting a log line, and images per second since the last one."""

    def __init__(self, step: int, batch_size: int):
        self.pending: list[tuple[dict, int | None]] = []
        self.batch_size, self.last_step, self.advanced = batch_size, step, 0
        self.restart()

    def restart(self) -> None:
        self.last_time = time.perf_counter()

    def add(self, metrics: dict, n: int | None) -> None:
        """The metrics of one call: one step's (`n` None), or stacked of which the first `n`."""
        self.pending.append((metrics, n))

    def take(self, step: int) -> dict[str, float]:
        """Means of the pending metrics (+ img_per_s); NonFiniteError naming the first bad step."""
        calls, self.pending = jax.device_get(self.pending), []
        now = time.perf_counter()
        fetched = []
        for metrics, n in calls:
            if n is None:
                fetched.append(metrics)
            else:
                fetched.extend({k: v[i] for k, v in metrics.items()} for i in range(n))
        for i, m in enumerate(fetched):
            if not m["finite"]:
                raise NonFiniteError(step - len(fetched) + i + 1)
        means = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0] if k != "finite"}
        self.advanced = step - self.last_step
        means["img_per_s"] = self.advanced * self.batch_size / (now - self.last_time)
        self.last_step, self.last_time = step, now
        return means


def _close_all(*closers: Callable[[], None]) -> None:
    """Calls each closer (ckpts.close waits for checkpoints still being written). With an
    exception already propagating, their own errors (the same full disk, again) are dropped;
    otherwise the first is raised after all have run."""
    propagating = sys.exc_info()[1] is not None
    first: BaseException | None = None
    for close in closers:
        try:
            close()
        except Exception as e:
            first = first or e
    if first is not None and not propagating:
        raise first
