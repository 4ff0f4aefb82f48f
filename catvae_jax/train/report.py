"""What a training run shows while it trains (process 0 only).

When the run starts: one line saying how many steps it trains and what ends it (num_epochs or
max_steps). At each validation (`Report.validation`): one line (step, epoch, validation loss,
SSIM and KL, train images per second, time left); WORKDIR/progress/samples.png (16 images
decoded from N(0, I) latents, the same latents every time: the learned prior is fitted only
when training ends) and WORKDIR/progress/reconstructions.png (the first `num_eval_images`
validation images above their reconstructions), both overwritten and logged as images at
their step to W&B / TensorBoard; and WORKDIR/metrics.png, the curves of metrics.jsonl (loss,
SSIM, KL and learning rate against step, train and validation), redrawn.
"""

from __future__ import annotations

import io
import json
import math
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath
from flax import nnx

from catvae_jax import atomic, images
from catvae_jax.cli import plural
from catvae_jax.config import latent_size
from catvae_jax.train import state as state_lib
from catvae_jax.train.hooks import say
from catvae_jax.train.log import TrainingLog

PROGRESS_DIR = "progress"
NUM_SAMPLES = 16  # samples per progress picture: 2 rows of 8
# metrics.png: one panel per quantity, (title, train key, validation key).
PANELS = (
    ("loss", "train_loss", "val_loss"),
    ("SSIM", "train_ssim", "val_ssim"),
    ("KL (nats)", "train_kl", "val_kl"),
    ("learning rate", "learning_rate", None),
)


def duration(seconds: float) -> str:
    """'42 s', '3 min 10 s' or '2 h 05 min'."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def length_line(config: ml_collections.ConfigDict, steps_per_epoch: int, total: int) -> str:
    """What the run trains and what ends it: num_epochs, or max_steps when it caps them (both
    named when one caps the other)."""
    epochs = config.num_epochs * steps_per_epoch
    line = f"training {total} steps of batch {config.batch_size}"
    if config.max_steps > 0 and config.max_steps < epochs:
        return (
            f"{line}: max_steps {config.max_steps} stops the run before num_epochs "
            f"{config.num_epochs} ({epochs} steps of {steps_per_epoch} per epoch)"
        )
    if config.max_steps > epochs:
        return (
            f"{line}: num_epochs {config.num_epochs} × {steps_per_epoch} steps ends the run "
            f"before max_steps {config.max_steps}"
        )
    return f"{line} ({plural(config.num_epochs, 'epoch')} of {steps_per_epoch} steps)"


def read_metrics(path: epath.Path) -> list[dict[str, Any]]:
    """The lines of a metrics.jsonl (none when it is missing); unparsable lines are skipped."""
    if not path.exists():
        return []
    lines = []
    for text in path.read_text().splitlines():
        try:
            lines.append(json.loads(text))
        except ValueError:
            continue
    return lines


def metrics_png(lines: list[dict[str, Any]]) -> bytes:
    """metrics.png of metrics.jsonl's lines: one panel per PANELS entry, train and validation
    against step."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # slow: only when drawn
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 6), dpi=80)  # fixed margins: a layout engine costs 2× the time
    FigureCanvasAgg(figure)
    figure.subplots_adjust(left=0.08, right=0.98, top=0.95, bottom=0.08, hspace=0.35, wspace=0.2)
    for axes, (title, train_key, val_key) in zip(figure.subplots(2, 2).flat, PANELS, strict=True):
        for key, kind, label, style in (
            (train_key, "train_loss", "train", "-"),  # a train line has train_loss
            (val_key, "val_loss", "validation", "o-"),
        ):
            points = [(m["step"], _number(m[key])) for m in lines if kind in m and key in m]
            if points:
                steps, values = zip(*points, strict=True)
                axes.plot(steps, values, style, label=label, markersize=3)
        axes.set_title(title)
        axes.set_xlabel("step")
        axes.locator_params(nbins=4)  # fewer tick labels: text is most of the drawing time
        if title == "loss":  # one legend: the colours mean the same in every panel
            axes.legend(loc="upper right")  # where a falling loss leaves room; "best" is slow
    buf = io.BytesIO()
    figure.savefig(buf, format="png")
    return buf.getvalue()


def _number(value: Any) -> float:
    try:
        return float(value)  # "nan" / "inf" as metrics.jsonl writes them too
    except (TypeError, ValueError):
        return math.nan


class Report:
    """A run's start line, and at each validation its line, pictures and metrics.png."""

    def __init__(
        self,
        workdir: epath.Path,
        config: ml_collections.ConfigDict,
        cadence: Any,
        graphdef: nnx.GraphDef,
        val_images: np.ndarray,
        writer: TrainingLog,
        step: int,
        enabled: bool,
    ):
        """`cadence`: the loop's Cadence (steps_per_epoch, total_steps, epoch(step));
        `val_images`: uint8 validation images, the first `num_eval_images` are reconstructed;
        `step`: the step training starts from."""
        self.enabled = enabled
        if not enabled:
            return
        self.workdir, self.config, self.cadence, self.writer = workdir, config, cadence, writer
        self.draws = bool(config.validation_pictures)
        self.originals = images.to_unit(val_images[: config.num_eval_images])
        rng = np.random.default_rng(config.seed)
        self.latents = rng.standard_normal((NUM_SAMPLES, latent_size(config))).astype(np.float32)
        self.pictures = jax.jit(_pictures(graphdef))
        self.last_step, self.last_time = step, time.perf_counter()
        total = cadence.total_steps
        if step >= total:
            say(f"nothing to train: step {step} of {total} is reached")
            return
        resuming = f"; from step {step}" if step else ""
        say(length_line(config, cadence.steps_per_epoch, total) + resuming)
        if self.draws:
            say(
                f"at each validation: {workdir / PROGRESS_DIR}/samples.png (N(0, I) latents; the "
                f"learned prior is fitted when training ends), reconstructions.png, and "
                f"{workdir / 'metrics.png'}"
            )

    def validation(self, step: int, metrics: dict[str, float], state: Any) -> None:
        """Prints the validation line of `step` (metrics: its val_* and learning_rate) and, with
        config.validation_pictures, draws the pictures of `state` and metrics.png."""
        if not self.enabled:
            return
        lines = read_metrics(self.writer.path)
        say(self._line(step, metrics, lines))
        if self.draws:
            self._draw(step, state, lines)

    def _draw(self, step: int, state: Any, lines: list[dict[str, Any]]) -> None:
        """Writes progress/{samples,reconstructions}.png of `state`'s evaluation parameters
        (also to the trackers, at `step`) and redraws metrics.png from `lines`."""
        params = jax.device_get(state_lib.eval_params(state))
        samples, recons = jax.device_get(self.pictures(params, self.latents, self.originals))
        folder = self.workdir / PROGRESS_DIR
        folder.mkdir(exist_ok=True)
        grids = {
            "samples": images.grid(samples, ncols=8),
            "reconstructions": images.grid(
                np.concatenate([self.originals, recons]), ncols=len(self.originals)
            ),
        }
        for name, grid in grids.items():
            images.save_png(folder / f"{name}.png", grid)
            self.writer.write_image(step, f"{PROGRESS_DIR}/{name}", grid)
        atomic.write_atomic(self.workdir / "metrics.png", metrics_png(lines))

    def _line(self, step: int, metrics: dict[str, float], lines: list[dict[str, Any]]) -> str:
        """'step 24/36 (epoch 2/3): val loss 546.4, val SSIM 0.2900, KL 2.12, 410 img/s,
        about 9 s left'."""
        now = time.perf_counter()
        total = self.cadence.total_steps
        rate = (now - self.last_time) / max(1, step - self.last_step)  # s per step, validations in
        self.last_step, self.last_time = step, now
        epochs = self.cadence.epoch(total)
        train = [m for m in lines if "img_per_s" in m and m["step"] <= step]
        speed = f", {train[-1]['img_per_s']:.0f} img/s" if train else ""
        return (
            f"step {step}/{total} (epoch {self.cadence.epoch(step)}/{epochs}): "
            f"val loss {metrics['val_loss']:.4g}, val SSIM {metrics['val_ssim']:.4f}, "
            f"KL {metrics['val_kl']:.4g}{speed}, about {duration(rate * (total - step))} left"
        )


def _pictures(graphdef: nnx.GraphDef):
    """(params, latents [n, z], images [m, S, S, 3] in [0, 1]) → (decoded latents,
    reconstructions decode(mu(x))): one compiled program for both pictures."""

    def run(params, latents, x):
        model = nnx.merge(graphdef, params)
        mu, _ = model.encode(x)
        return model.decode(latents), model.decode(mu)

    return run
