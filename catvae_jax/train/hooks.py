"""What the training loop consults besides its steps: a Ctrl-C/SIGTERM notice, the profiler,
the progress bar and `say`, which prints a line above it."""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any

import jax
from etils import epath
from tqdm.auto import tqdm

from catvae_jax.errors import Preempted


class PreemptionNotice:
    """Turns SIGTERM and Ctrl-C (SIGINT) into a flag the loop checks between steps, so the step
    in flight finishes and a checkpoint is written (all processes agree on the step).

    No KeyboardInterrupt is ever raised inside the loop: one raised while Orbax's save threads
    wait for the main thread (a signalling barrier with a 300 s timeout) would hang the exit
    for five minutes. A second Ctrl-C aborts at once (os._exit): a checkpoint being written
    stays a *.orbax-checkpoint-tmp folder that the next run removes; complete ones are intact.
    """

    def __init__(self):
        self.flag, self.signum = False, signal.SIGTERM
        self.previous: dict[int, Any] = {}
        if jax.process_count() > 1 or threading.current_thread() is not threading.main_thread():
            return  # multi-process: JAX's preemption sync point decides (see reached)
        for signum in (signal.SIGTERM, signal.SIGINT):
            self.previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.flag and signum == signal.SIGINT:
            print("stopped: interrupted twice; aborted at once", file=sys.stderr, flush=True)
            os._exit(130)
        self.flag, self.signum = True, signum

    def reached(self, step: int) -> bool:
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils  # multi-process runs only

            return multihost_utils.reached_preemption_sync_point(step)
        return self.flag

    def stop_at_once(self, step: int) -> None:
        """From now on (every checkpoint complete, e.g. in the end-of-training prior fit) a
        signal raises Preempted(step) at once, wherever the main thread is; one that arrived
        before raises it here. Single-process runs only (multi-process: nothing changes)."""
        if self.flag:
            raise Preempted(step, self.signum)

        def handle(signum, frame) -> None:
            self.flag, self.signum = True, signum
            raise Preempted(step, signum)

        for signum in self.previous:
            signal.signal(signum, handle)

    def restore(self) -> None:
        for signum, previous in self.previous.items():
            signal.signal(signum, previous)
        self.previous = {}


class Profiler:
    """With config.profile, writes a jax.profiler trace of the train steps from `start` on (at
    least `num_steps`, whole calls) into WORKDIR/profile."""

    def __init__(self, logdir: epath.Path, start: int, enabled: bool, num_steps: int = 5):
        self.logdir, self.start, self.stop_at = logdir, start, start + num_steps
        self.enabled, self.active, self.done = enabled, False, False

    def before(self, step: int) -> None:
        """Before the call that runs steps `step` …: starts tracing once `start` is reached."""
        if self.enabled and not (self.active or self.done) and step >= self.start:
            jax.profiler.start_trace(str(self.logdir))
            self.active = True

    def after(self, step: int, metrics: dict) -> None:
        """After a call, `step` steps done: stops tracing (once they finish) when enough ran."""
        if self.active and step >= self.stop_at:
            jax.block_until_ready(metrics)
            self.stop()

    def stop(self) -> None:
        if self.active:
            jax.profiler.stop_trace()
            self.active, self.done = False, True
            say(f"profile trace written to {self.logdir}")


def progress_bar(config, total: int, initial: int, enabled: bool):
    """A tqdm bar of train steps (config.progress_bar; process 0 only)."""
    return tqdm(
        total=total,
        initial=initial,
        unit="step",
        dynamic_ncols=True,
        disable=not (enabled and config.progress_bar),
    )


def say(message: str, file: Any = None) -> None:
    """Prints `message` (to stdout, or `file`) on a line of its own above the progress bar,
    if one is showing, and flushes: no line of a training run lands on the bar's line."""
    out = file or sys.stdout
    tqdm.write(message, file=out)
    out.flush()
