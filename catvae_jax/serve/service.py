"""The served model and its warm-up: the one object the request threads share.

Generation runs in at most `slots` model calls at once; n is rounded up to a power of two
(capped at max_n) so that at most log2(max_n) + 1 programs are ever compiled per sampler.

A sampler that raises on its first use (a damaged `gmm_<step>.npz`, training data gone for a
gmm fit, a bug) is not served from then on: its requests get a 503 that says why, `/healthz`
lists it under "failed", and "auto" stands for the next sampler that works: the model's measured
choice first (`VaeModel.choice`, as `generate` takes it), then flow, gmm, prior.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
import time
from collections.abc import Callable

import numpy as np
from starlette.exceptions import HTTPException

from catvae_jax import bpd_range, images, inference
from catvae_jax.errors import UserError
from catvae_jax.inference import VaeModel
from catvae_jax.serve.metrics import ServiceMetrics

SAMPLERS = inference.SAMPLERS
AUTO_ORDER = ("flow", "gmm", "prior")  # after the measured choice, what "auto" may stand for
_PATH = re.compile(r"\S*/\S*")  # a word with a slash: a path (or URL) of the server's
log = logging.getLogger("uvicorn.error")


def public_reason(e: BaseException) -> str:
    """One line that says why `e` happened without the server's paths: a UserError's message,
    else the exception's type and message (200 characters at most)."""
    lines = str(e).strip().splitlines()
    text = _PATH.sub("<path>", lines[0] if lines else "")[:200]
    if isinstance(e, UserError):
        return text
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


class Service:
    """The model, its warm-up and the request work; the only state shared between threads."""

    def __init__(
        self, model: VaeModel, max_n: int, default_n: int, slots: int, metrics: ServiceMetrics
    ):
        self.model, self.max_n, self.default_n, self.metrics = model, max_n, default_n, metrics
        self._slots = threading.BoundedSemaphore(slots)  # model calls running at once
        self.offered = tuple(s for s in SAMPLERS if s != "flow" or model.flow is not None)
        self.failed: dict[str, str] = {}  # sampler → why it is not served (public_reason)
        self.auto: str | None = None  # the sampler "auto" stands for, once warm
        self.ready = threading.Event()
        self.warm_error: str | None = None
        self._first_call = {s: threading.Lock() for s in SAMPLERS}  # e.g. a GMM fit runs once
        self._warm_samplers: set[str] = set()
        metrics.step.set(model.step or 0)

    @property
    def samplers(self) -> tuple[str, ...]:
        """The samplers served: those this model offers that have not failed."""
        return tuple(s for s in self.offered if s not in self.failed)

    def bucket(self, n: int) -> int:
        """The compiled batch size that serves n images: the next power of two, ≤ max_n."""
        return min(self.max_n, 1 << (n - 1).bit_length())

    def warm(self) -> None:
        """Compiles reconstruction of one image and generation at the default n with the first
        sampler of `auto_order` that works, which "auto" then stands for; ready once both work.
        The other samplers warm on their first request."""
        try:
            self.reconstruct_png(np.zeros((1, *self.model.image_shape), np.float32))
            self.check_input(np.zeros((1, *self.model.image_shape), np.float32))
            self.auto = next((s for s in self.auto_order() if self._warms(s)), None)
        except Exception as e:  # a bug or a broken model: /healthz says so, the log has it
            self.warm_error = public_reason(e)
            log.exception("warm-up failed")
            return
        if self.auto is None:
            self.warm_error = "no sampler works"
            return
        self.ready.set()
        self.metrics.ready.set(1)

    def auto_order(self) -> tuple[str, ...]:
        """The samplers "auto" may stand for, in order: the checkpoint's measured choice (the
        sampler `generate` and samples.png use for "auto"), then AUTO_ORDER."""
        measured = (self.model.choice or {}).get("choice")
        return tuple(dict.fromkeys(s for s in (measured, *AUTO_ORDER) if s in AUTO_ORDER))

    def _warms(self, sampler: str) -> bool:
        """Whether `sampler` is offered and generates a grid (compiled, e.g. the gmm fitted)."""
        if sampler not in self.offered:
            return False
        try:
            self.grid_png(self.default_n, 0, 1.0, sampler)
        except HTTPException:  # the sampler failed: `generate` recorded and logged why
            return False
        return True

    def _run(self, op: str, fn: Callable[..., np.ndarray], *args, **kwargs) -> np.ndarray:
        """fn(*args, **kwargs) in a compute slot; its time (without the wait) goes to metrics."""
        with self._slots:
            start = time.perf_counter()
            out = fn(*args, **kwargs)
        self.metrics.compute.labels(op).observe(time.perf_counter() - start)
        return out

    def generate(self, n: int, seed: int, temperature: float, sampler: str) -> np.ndarray:
        """n images [n, S, S, 3] in [0, 1]; a 503 for a sampler that failed or is warming."""
        sampler = self.auto if sampler == "auto" else sampler
        if sampler in self.failed:
            raise HTTPException(
                503, f"the {sampler} sampler is unavailable: {self.failed[sampler]}"
            )
        call = functools.partial(
            self._run, "generate", self.model.generate, self.bucket(n),
            seed=seed, temperature=temperature, sampler=sampler,
        )  # fmt: skip
        if sampler in self._warm_samplers:
            return call()[:n]
        # The first call may be slow (compiling; fitting the GMM): one request runs it while
        # others get a 503 rather than filling the thread pool with waiting threads.
        if not self._first_call[sampler].acquire(blocking=False):
            raise HTTPException(
                503, f"the {sampler} sampler is warming up, try again shortly", {"Retry-After": "2"}
            )
        try:
            out = call()
        except Exception as e:  # whatever the sampler raised: serve the others
            self.failed[sampler] = public_reason(e)
            log.warning("the %s sampler is unavailable: %s: %s", sampler, type(e).__name__, e)
            raise HTTPException(
                503, f"the {sampler} sampler is unavailable: {self.failed[sampler]}"
            ) from None
        else:
            self._warm_samplers.add(sampler)
        finally:
            self._first_call[sampler].release()
        return out[:n]

    def grid_png(self, n: int, seed: int, temperature: float, sampler: str) -> bytes:
        """A PNG grid of n generated images, ⌈√n⌉ columns."""
        grid = images.grid(self.generate(n, seed, temperature, sampler))
        out = images.png_bytes(grid, compress_level=1)
        self.metrics.images.inc(n)
        return out

    def check_input(self, x: np.ndarray) -> bpd_range.Verdict | None:
        """x [1, S, S, 3] in [0, 1] → where its bits/dim falls in the model's range (None when
        the model has no stored range: catvae_jax/bpd_range.py)."""
        if self.model.bpd_range is None:
            return None
        # lazily: the likelihood machinery is only needed once an upload is checked
        from catvae_jax.evaluation import typicality

        return self._run("check", typicality.check, self.model, x)[0]

    def reconstruct_png(self, x: np.ndarray) -> bytes:
        """x [1, S, S, 3] in [0, 1] → PNG of x beside its reconstruction."""
        y = self._run("reconstruct", self.model.reconstruct, x)
        return images.png_bytes(images.grid(np.concatenate([x, y]), 2), compress_level=1)
