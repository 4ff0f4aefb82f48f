"""The served model and its warm-up: the one object the request threads share.

Generation runs in at most `slots` model calls at once; n is rounded up to a power of two
(capped at max_n) so that at most log2(max_n) + 1 programs are ever compiled per sampler.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import numpy as np
from starlette.exceptions import HTTPException

from catvae_jax import images, inference
from catvae_jax.inference import VaeModel
from catvae_jax.serve.metrics import ServiceMetrics

SAMPLERS = inference.SAMPLERS


class Service:
    """The model, its warm-up and the request work; the only state shared between threads."""

    def __init__(
        self, model: VaeModel, max_n: int, default_n: int, slots: int, metrics: ServiceMetrics
    ):
        self.model, self.max_n, self.default_n, self.metrics = model, max_n, default_n, metrics
        self._slots = threading.BoundedSemaphore(slots)  # model calls running at once
        self.samplers = tuple(s for s in SAMPLERS if s != "flow" or model.flow is not None)
        self.ready = threading.Event()
        self.warm_error: str | None = None
        self._first_call = {s: threading.Lock() for s in SAMPLERS}  # e.g. a GMM fit runs once
        self._warm_samplers: set[str] = set()
        metrics.step.set(model.step or 0)

    def bucket(self, n: int) -> int:
        """The compiled batch size that serves n images: the next power of two, ≤ max_n."""
        return min(self.max_n, 1 << (n - 1).bit_length())

    def warm(self) -> None:
        """Compiles generation at the default n and reconstruction of one image."""
        try:
            self.grid_png(self.default_n, 0, 1.0, "auto")  # e.g. fits the gmm once
            self.reconstruct_png(np.zeros((1, *self.model.image_shape), np.float32))
            self.ready.set()
            self.metrics.ready.set(1)
        except Exception as e:  # a bug or a broken model: /healthz says so, the log has it
            self.warm_error = f"{type(e).__name__}: {e}"
            logging.getLogger("uvicorn.error").exception("warm-up failed")

    def _run(self, op: str, fn: Callable[..., np.ndarray], *args, **kwargs) -> np.ndarray:
        """fn(*args, **kwargs) in a compute slot; its time (without the wait) goes to metrics."""
        with self._slots:
            start = time.perf_counter()
            out = fn(*args, **kwargs)
        self.metrics.compute.labels(op).observe(time.perf_counter() - start)
        return out

    def generate(self, n: int, seed: int, temperature: float, sampler: str) -> np.ndarray:
        """n images [n, S, S, 3] in [0, 1]."""
        kwargs = {"sampler": sampler}
        args = (self.model.generate, self.bucket(n))
        if sampler in self._warm_samplers:
            return self._run("generate", *args, seed=seed, temperature=temperature, **kwargs)[:n]
        # The first call may be slow (compiling; fitting the GMM): one request runs it while
        # others get a 503 rather than filling the thread pool with waiting threads.
        if not self._first_call[sampler].acquire(blocking=False):
            raise HTTPException(
                503, f"the {sampler} sampler is warming up, try again shortly", {"Retry-After": "2"}
            )
        try:
            out = self._run("generate", *args, seed=seed, temperature=temperature, **kwargs)
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

    def reconstruct_png(self, x: np.ndarray) -> bytes:
        """x [1, S, S, 3] in [0, 1] → PNG of x beside its reconstruction."""
        y = self._run("reconstruct", self.model.reconstruct, x)
        return images.png_bytes(images.grid(np.concatenate([x, y]), 2), compress_level=1)
