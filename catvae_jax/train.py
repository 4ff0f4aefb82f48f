"""`train_and_evaluate(config, workdir)`: the one entry point the CLI, tests and notebooks call.

Reads top to bottom: mesh → data → model → shard → resume → step → loop (log, eval, checkpoint)
→ final outputs. Data parallel: the batch is sharded over every device along the mesh axis
`data`, parameters are replicated; the same code runs on 1 CPU, N GPUs or a TPU slice.
"""

from __future__ import annotations

import dataclasses
import hashlib
import signal
import threading
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

from catvae_jax import config as config_lib
from catvae_jax import data, images, models, priors, steps, writers
from catvae_jax.checkpoint import Checkpoints, abstract_like
from catvae_jax.errors import UserError
from catvae_jax.inference import VaeModel
from catvae_jax.writers import MetricWriter


class Preempted(RuntimeError):
    """SIGTERM arrived: a checkpoint of `step` was saved and the run stopped (exit code 143)."""

    def __init__(self, step: int):
        super().__init__(f"preempted at step {step}; checkpoint saved, re-run to resume")
        self.step = step


class NonFiniteError(RuntimeError):
    """The loss or gradient norm became NaN/inf at `step`; the run stops (exit code 1)."""

    def __init__(self, step: int):
        super().__init__(f"non-finite loss or gradient norm at step {step}; training stopped")
        self.step = step


@dataclasses.dataclass
class Progress:
    """Loop bookkeeping saved with every checkpoint (the data position is the step itself)."""

    best_val_loss: float = float("inf")
    bad_evals: int = 0  # validations in a row without a new best (early stopping)


def make_mesh() -> jax.sharding.Mesh:
    """A 1-D mesh over all devices (of all processes) with the batch axis `data`."""
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


def _check_resume(workdir: epath.Path, config_dict: dict) -> None:
    """Refuses a changed model/data shape on resume; notes other changed fields."""
    path = workdir / "config.json"
    if not path.exists():
        return
    old = config_lib.read_json(path)
    shaped = config_lib.shape_changes(old, config_dict)
    if shaped:
        flat_old, flat_new = config_lib.flatten(old), config_lib.flatten(config_dict)
        k = shaped[0]
        raise UserError(
            f"cannot resume {workdir} with a changed '{k}' (was {flat_old.get(k)!r},"
            f" now {flat_new.get(k)!r}); use a new workdir"
        )
    others = config_lib.other_changes(old, config_dict)
    if others:
        print(f"resuming with changed fields: {', '.join(others)}", flush=True)


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    on_validation: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, float]:
    """Trains the configured VAE in `workdir` (resuming from its latest checkpoint if any).

    Writes checkpoints/, config.json, metrics.jsonl, samples.png and reconstructions.png, and
    returns the final validation metrics plus `step`. Raises UserError for a bad config and
    NonFiniteError when the loss diverges. `on_validation(step, val_metrics)`, if given, is
    called after each validation's checkpoint is saved (a sweep reports to its pruner there);
    an exception it raises ends the run cleanly, that checkpoint complete.
    """
    config_lib.validate(config)
    workdir = epath.Path(workdir)
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # e.g. a file of that name, or no permission
        what = "a file, not a directory" if workdir.is_file() else (e.strerror or str(e))
        raise UserError(f"workdir {workdir}: {what}") from e
    is_main = jax.process_index() == 0

    # Mesh ------------------------------------------------------------------------------------
    mesh = make_mesh()
    if config.batch_size % jax.device_count():
        raise UserError(
            f"config field 'batch_size' ({config.batch_size}) must be a multiple of "
            f"the device count ({jax.device_count()})"
        )
    replicated = NamedSharding(mesh, P())

    # Data ------------------------------------------------------------------------------------
    train_data = data.train_data(config, mesh)
    val_split = data.load_split(config, "validation")
    steps_per_epoch = train_data.steps_per_epoch
    total_steps = config.num_epochs * steps_per_epoch
    if config.max_steps > 0:
        total_steps = min(total_steps, config.max_steps)

    # Model and train state, replicated over the mesh ------------------------------------------
    model = models.build(config)
    graphdef, state = steps.init_state(config, model)
    state = jax.tree.map(lambda x: data.to_global(np.asarray(x), replicated), state)
    del model

    # Resume ----------------------------------------------------------------------------------
    config_dict = config.to_dict()
    config_dict["dataset"] = data.describe(config)
    _check_resume(workdir, config_dict)
    if is_main:
        writers.write_json(workdir / "config.json", config_dict)
    ckpts = Checkpoints(workdir)
    progress = Progress()
    restored = ckpts.restore_newest_readable(abstract_like(state, replicated))
    if restored is not None:
        step0, state, meta, _ = restored
        progress = Progress(**meta["progress"])
        print(f"resumed from step {step0} in {workdir}", flush=True)

    # Steps -----------------------------------------------------------------------------------
    base_key = jax.random.key(config.seed)
    train_step = jax.jit(
        steps.make_train_step(graphdef, config, jax.random.fold_in(base_key, 1), total_steps),
        donate_argnums=0,
    )
    schedule = steps.lr_schedule(config, total_steps)
    eval_step = jax.jit(steps.make_eval_step(graphdef, config))
    eval_key = jax.random.fold_in(base_key, 2)
    plateau = steps.make_plateau(config)
    plateau_update = jax.jit(lambda s, v: plateau.update({}, s, value=v)[1])
    writer = MetricWriter(workdir, config, resumed=restored is not None)

    def validate_and_save(step: int, scheduled: bool, save: bool) -> dict[str, float]:
        nonlocal state
        metrics = validation_metrics(
            eval_step, state.params, val_split, config.batch_size, mesh, eval_key
        )
        if scheduled:  # plateau and early stopping count scheduled validations only
            state = state.replace(plateau=plateau_update(state.plateau, metrics["val_loss"]))
            if metrics["val_loss"] < progress.best_val_loss:
                progress.best_val_loss, progress.bad_evals = metrics["val_loss"], 0
            else:
                progress.bad_evals += 1
        lr = config.learning_rate * float(state.plateau.scale * schedule(step))
        writer.write(step, _epoch(step), {**metrics, "learning_rate": lr})
        if save:
            meta = {"step": step, "progress": dataclasses.asdict(progress)}
            ckpts.save(step, state, meta, config_dict, metrics["val_loss"])
        if on_validation is not None:
            on_validation(step, metrics)
        return metrics

    def _epoch(step: int) -> int:
        return max(1, -(-step // steps_per_epoch))

    def eval_due(step: int) -> bool:
        every = config.eval_every_steps if config.eval_every_steps > 0 else steps_per_epoch
        return step % every == 0

    def ckpt_due(step: int) -> bool:
        if config.checkpoint_every_steps > 0:
            return step % config.checkpoint_every_steps == 0
        return eval_due(step)

    # Loop ------------------------------------------------------------------------------------
    step = int(state.step)
    preemption = PreemptionNotice()
    profiler = Profiler(workdir / "profile", start=step + 3, enabled=config.profile and is_main)
    pending: list[dict] = []
    bar = _progress_bar(config, total_steps, step, enabled=is_main)
    last_time, last_step, final = time.perf_counter(), step, {}
    try:
        with jax.set_mesh(mesh):
            while step < total_steps:
                profiler.before(step)
                state, metrics = train_step(state, train_data.batch(step))
                pending.append(metrics)
                step += 1
                profiler.after(step, metrics)
                done = step == total_steps
                if step % config.log_every_steps == 0 or done or eval_due(step) or ckpt_due(step):
                    fetched = jax.device_get(pending)
                    now = time.perf_counter()
                    for i, m in enumerate(fetched):
                        if not m["finite"]:
                            raise NonFiniteError(step - len(fetched) + i + 1)
                    means = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
                    del means["finite"]
                    means["img_per_s"] = (step - last_step) * config.batch_size / (now - last_time)
                    writer.write(step, _epoch(step), means)
                    bar.update(step - last_step)
                    bar.set_postfix(
                        loss=f"{means['train_loss']:.4g}", img_s=f"{means['img_per_s']:.0f}"
                    )
                    pending, last_time, last_step = [], now, step
                scheduled = eval_due(step)
                if scheduled or ckpt_due(step) or done:
                    final = validate_and_save(step, scheduled, save=True)
                    last_time = time.perf_counter()  # validation time is not train throughput
                    if progress.bad_evals >= config.early_stop_patience:
                        print(
                            f"early stopping at step {step}: no better validation loss in "
                            f"{progress.bad_evals} validations",
                            flush=True,
                        )
                        break
                elif preemption.reached(step):
                    validate_and_save(step, scheduled=False, save=True)
                    raise Preempted(step)
        if not final:  # resumed at the end: nothing trained, still report the final metrics
            final = validation_metrics(
                eval_step, state.params, val_split, config.batch_size, mesh, eval_key
            )

        # Outputs a person looks at -------------------------------------------------------------
        if is_main:
            params = jax.device_get(state.params)
            vae = VaeModel(graphdef, params, config, step=step)
            priors.fit_after_training(workdir, config, ckpts, vae)  # samples.png then uses it
            grid = _write_pictures(workdir, vae, val_split[: config.num_eval_images], config.seed)
            writer.write_image(step, "samples", grid)
    finally:  # also when the run stops early (non-finite loss, preemption, a user error)
        preemption.restore()
        profiler.stop()
        bar.close()
        ckpts.close()  # waits for checkpoints still being written
        writer.close()
        train_data.close()
    return {**final, "step": step, "params_sha256": params_digest(state.params)}


def params_digest(params: Any) -> str:
    """sha256 of this process's copy of the parameters: equal digests = bit-identical params."""
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(params):
        digest.update(np.asarray(leaf.addressable_data(0)).tobytes())
    return digest.hexdigest()


def _write_pictures(
    workdir: epath.Path, vae: VaeModel, originals: np.ndarray, seed: int
) -> np.ndarray:
    """samples.png: 8×8 samples of the default sampler (fixed seed); reconstructions.png:
    inputs above outputs.
    Returns the samples grid (uint8 HWC)."""
    samples = images.grid(vae.generate(64, seed=seed), ncols=8)
    images.save_png(workdir / "samples.png", samples)
    x = originals.astype(np.float32) / 255.0
    both = np.concatenate([x, vae.reconstruct(x)])
    images.save_png(workdir / "reconstructions.png", images.grid(both, ncols=len(x)))
    return samples


class PreemptionNotice:
    """Turns SIGTERM into a flag the loop checks between steps (all processes agree on the step)."""

    def __init__(self):
        self.flag = False
        self.previous = None
        if jax.process_count() > 1 or threading.current_thread() is not threading.main_thread():
            return  # multi-process: JAX's preemption sync point decides (see reached)
        self.previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        self.flag = True

    def reached(self, step: int) -> bool:
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            return multihost_utils.reached_preemption_sync_point(step)
        return self.flag

    def restore(self) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)
            self.previous = None


class Profiler:
    """With config.profile, writes a jax.profiler trace of 5 train steps into WORKDIR/profile."""

    def __init__(self, logdir: epath.Path, start: int, enabled: bool, num_steps: int = 5):
        self.logdir, self.start, self.stop_at = logdir, start, start + num_steps
        self.enabled, self.active = enabled, False

    def before(self, step: int) -> None:
        if self.enabled and step == self.start:
            jax.profiler.start_trace(str(self.logdir))
            self.active = True

    def after(self, step: int, metrics: dict) -> None:
        if self.active and step >= self.stop_at:
            jax.block_until_ready(metrics)
            self.stop()

    def stop(self) -> None:
        if self.active:
            jax.profiler.stop_trace()
            self.active = False
            print(f"profile trace written to {self.logdir}", flush=True)


def _progress_bar(config, total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        unit="step",
        dynamic_ncols=True,
        disable=not (enabled and config.progress_bar),
    )
