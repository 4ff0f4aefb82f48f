"""An HTTP generator service: python -m catvae_jax.serve --workdir W [--host H] [--port P].

`create_app(workdir)` builds a FastAPI app around one loaded model:

- `GET /` a page showing a grid, a "more cats" button, seed / temperature / sampler inputs.
- `GET /healthz` 200 `{"status": "ok", "step": ...}` once warm (compiled); 503 while warming.
- `GET /grid.png?n=64&seed=&temperature=1.0&sampler=auto` a PNG grid of ⌈√n⌉ columns. No
  seed: a fresh grid per call (its seed is in the `X-Seed` header); a seed: the same bytes.
  Samplers: auto (the default: flow, else gmm, else prior), prior, gmm, and flow when the
  checkpoint has a learned prior; `/healthz` lists them.
- `POST /reconstruct` (multipart field `file`) a PNG of the input beside its reconstruction. The
  type is checked by decoding with PIL; an image of another size is centre-cropped to a square
  and resized to the model's size as training data is (`data.decode`: transparency on white,
  Lanczos), which the `X-Resized` header reports.
- `GET /metrics` Prometheus text: a latency histogram per endpoint, request and error counters.

Bad parameters get a 4xx JSON `{"error": "..."}`; a 500 means a bug. Generation runs jitted in a
thread pool, so requests are served while others compute; n is rounded up to a power of two
(capped at max_n) so that at most log2(max_n) + 1 programs are ever compiled.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import secrets
import socket
import sys
import threading
import time
from importlib import resources

import numpy as np
from absl import flags
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from catvae_jax import cli, images, inference, pictures
from catvae_jax.data import decode
from catvae_jax.errors import UserError
from catvae_jax.inference import VaeModel, load
from catvae_jax.prometheus import ObserveRequests, ServiceMetrics

ENDPOINTS = ("/", "/healthz", "/grid.png", "/reconstruct", "/metrics")
SAMPLERS = inference.SAMPLERS
MAX_TEMPERATURE = inference.MAX_TEMPERATURE
_DRAIN_FACTOR = 8  # an oversize body is read (and dropped) up to this multiple, then cut off


class _Service:
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

    def _run(self, op: str, fn, *args, **kwargs) -> np.ndarray:
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


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _int_param(name: str, value: str, lo: int, hi: int) -> int:
    if not re.fullmatch(r"\s*[+-]?\d{1,30}\s*", value):
        raise HTTPException(400, f"{name} must be an integer, got {value[:40]!r}")
    number = int(value)
    if not lo <= number <= hi:
        raise HTTPException(400, f"{name} must be between {lo} and {hi}, got {number}")
    return number


def _temperature(value: str) -> float:
    try:
        t = float(value)
    except ValueError:
        raise HTTPException(400, f"temperature must be a number, got {value[:40]!r}") from None
    if not (math.isfinite(t) and 0 < t <= MAX_TEMPERATURE):
        raise HTTPException(400, f"temperature must be in (0, {MAX_TEMPERATURE:g}], got {value}")
    return t


def decode_upload(data: bytes, size: int) -> tuple[np.ndarray, str | None]:
    """`pictures.read_upload` with HTTP errors: 413 over the pixel limit, 415 not an image."""
    try:
        return pictures.read_upload(data, size)
    except decode.TooLarge as e:
        raise HTTPException(413, f"image {e}") from None
    except decode.Undecodable as e:
        raise HTTPException(415, f"the upload is not a decodable image ({e})") from None


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The request body, or None if it is over `limit` bytes (the rest is drained, to a cap)."""
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total <= limit:
            chunks.append(chunk)
        elif total > _DRAIN_FACTOR * limit:
            break
    return None if total > limit else b"".join(chunks)


def _page(service: _Service) -> str:
    html = resources.files("catvae_jax").joinpath("static/index.html").read_text()
    options = "".join(f'<option value="{s}">{s}</option>' for s in service.samplers)
    values = {
        "DEFAULT_N": service.default_n,
        "MAX_N": service.max_n,
        "MAX_T": f"{MAX_TEMPERATURE:g}",
        "SAMPLER_OPTIONS": options,
        "STEP": service.model.step,
        "SIZE": service.model.image_shape[0],
    }
    for key, value in values.items():
        html = html.replace("{{" + key + "}}", str(value))
    return html


def create_app(
    workdir: str,
    step: str | int = "best",
    max_n: int = 256,
    default_n: int = 64,
    max_upload_mb: float = 10.0,
    compute_slots: int = 1,
    model: VaeModel | None = None,
) -> FastAPI:
    """The service for `workdir`'s model at `step` (or for `model`, if given), loaded now and
    compiled in a background thread once the app starts (/healthz is 503 until then).

    At most `compute_slots` model calls run at once (the rest queue; PNG encoding and the other
    endpoints go on meanwhile): one keeps a CPU's cores on one batch instead of thrashing."""
    if not 1 <= default_n <= max_n <= inference.MAX_GENERATE:
        raise UserError(
            f"need 1 <= default_n <= max_n <= {inference.MAX_GENERATE}, got {default_n} and {max_n}"
        )
    if compute_slots < 1:
        raise UserError(f"compute_slots must be at least 1, got {compute_slots}")
    if not max_upload_mb > 0:
        raise UserError(f"max_upload_mb must be positive, got {max_upload_mb}")
    model = model or load(workdir, step)
    metrics = ServiceMetrics()
    service = _Service(model, max_n, default_n, compute_slots, metrics)
    upload_limit = int(max_upload_mb * 1e6)
    size = model.image_shape[0]

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        threading.Thread(target=service.warm, name="catvae-warm-up", daemon=True).start()
        yield

    page_html = _page(service)
    app = FastAPI(title="catvae_jax", lifespan=lifespan)
    app.state.service = service
    app.add_middleware(ObserveRequests, metrics=metrics, endpoints=ENDPOINTS)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        return _error(e.status_code, str(e.detail), e.headers)

    @app.exception_handler(UserError)
    async def user_error(request: Request, e: UserError) -> JSONResponse:
        return _error(400, str(e))

    @app.exception_handler(Exception)
    async def bug(request: Request, e: Exception) -> JSONResponse:
        metrics.bugs.inc()
        return _error(500, f"internal error ({type(e).__name__}); see the server log")

    def require_ready() -> None:
        if not service.ready.is_set():
            raise HTTPException(503, "warming up, try again shortly", {"Retry-After": "2"})

    # The cheap endpoints are async: they answer on the event loop even when every pool thread
    # is busy with (or queued for) the model.
    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        """The HTML page: a grid, a "more cats" button, seed and temperature inputs."""
        return page_html

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        """200 with the model's step once compiled; 503 while warming (or if warm-up failed)."""
        if not service.ready.is_set():
            body = {"status": "warming" if service.warm_error is None else "failed"}
            if service.warm_error:
                body["error"] = service.warm_error
            return JSONResponse(body, status_code=503, headers={"Retry-After": "2"})
        return JSONResponse(
            {
                "status": "ok",
                "step": model.step,
                "model": model.config.model.name,
                "image_size": size,
                "z_dim": model.z_dim,
                "max_n": max_n,
                "samplers": list(service.samplers),
            }
        )

    @app.get("/grid.png", response_class=Response)
    def grid_png(
        n: str = str(default_n), seed: str = "", temperature: str = "1.0", sampler: str = "auto"
    ) -> Response:
        """A PNG grid of n generated cats; an empty seed draws a fresh one (see X-Seed)."""
        count = _int_param("n", n, 1, max_n)
        fixed = seed.strip() != ""
        seed_value = _int_param("seed", seed, 0, 2**32 - 1) if fixed else secrets.randbits(32)
        t = _temperature(temperature)
        if sampler not in service.samplers:
            raise HTTPException(400, f"sampler must be one of {', '.join(service.samplers)}")
        require_ready()
        png = service.grid_png(count, seed_value, t, sampler)
        headers = {
            "X-Seed": str(seed_value),
            "Cache-Control": "private, max-age=600" if fixed else "no-store",
        }
        return Response(png, media_type="image/png", headers=headers)

    @app.post("/reconstruct", response_class=Response)
    async def reconstruct(request: Request) -> Response:
        """Multipart field `file` (any image PIL decodes) → PNG: input | reconstruction."""
        too_big = HTTPException(413, f"upload over the limit of {max_upload_mb:g} MB")
        declared = request.headers.get("content-length", "")
        cap = upload_limit + 64 * 1024  # room for the multipart boundaries and part headers
        if declared.isdigit() and int(declared) > _DRAIN_FACTOR * cap:
            raise too_big
        body = await _read_body(request, cap)
        if body is None:
            raise too_big
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise HTTPException(400, "send the image as multipart/form-data in the field 'file'")

        async def one_chunk():
            yield body

        try:
            form = await MultiPartParser(request.headers, one_chunk(), max_files=1).parse()
        except MultiPartException as e:
            raise HTTPException(400, f"malformed multipart body: {e.message}") from None
        try:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise HTTPException(
                    400, "send the image as multipart/form-data in the field 'file'"
                )
            data = await upload.read()
        finally:
            await form.close()
        if len(data) > upload_limit:
            raise too_big
        require_ready()
        x, resized = await run_in_threadpool(decode_upload, data, size)
        png = await run_in_threadpool(service.reconstruct_png, x)
        headers = {"X-Resized": resized} if resized else {}
        return Response(png, media_type="image/png", headers=headers)

    @app.get("/metrics")
    async def metrics_text() -> Response:
        """Prometheus text format."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _listen(host: str, port: int) -> socket.socket:
    """A bound, listening TCP socket, or a one-line error (exit 2)."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except (OSError, OverflowError) as e:  # OverflowError: a port outside 0-65535
        cli.fail(f"cannot listen on {host}:{port}: {getattr(e, 'strerror', None) or e}")
    return sock


FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines the flags of this command (called by `run`, so importing the module defines none)."""
    flags.DEFINE_string("workdir", None, "A training run's directory.")
    flags.DEFINE_string("step", "best", '"best", "latest" or a checkpoint number.')
    flags.DEFINE_string("host", "127.0.0.1", "Listen address (default: loopback).")
    flags.DEFINE_integer("port", 8000, "TCP port; 0 picks a free one.")
    flags.DEFINE_integer("max_n", 256, "Most images one grid may hold.")
    flags.DEFINE_integer("default_n", 64, "Grid size when n is not given.")
    flags.DEFINE_float("max_upload_mb", 10.0, "Upload size limit.")
    flags.DEFINE_integer("compute_slots", 1, "Model calls run at once.")
    levels = ["critical", "error", "warning", "info", "debug"]
    flags.DEFINE_enum("log_level", "warning", levels, "uvicorn log level.")
    flags.mark_flag_as_required("workdir")


def main(argv: list[str]) -> None:
    step = int(FLAGS.step) if FLAGS.step.isdigit() else FLAGS.step
    sock = _listen(FLAGS.host, FLAGS.port)  # a busy port fails before the model loads
    with cli.user_errors():
        app = create_app(
            FLAGS.workdir, step, FLAGS.max_n, FLAGS.default_n, FLAGS.max_upload_mb,
            FLAGS.compute_slots,
        )  # fmt: skip
    import uvicorn  # the server itself: only when serving (create_app users never need it)

    host, port = sock.getsockname()[:2]
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    print(f"serving {FLAGS.workdir} (step {app.state.service.model.step}) at {url}", flush=True)
    config = uvicorn.Config(app, log_level=FLAGS.log_level, timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[sock])


def run() -> None:
    cli.run_app(main, define_flags)


if __name__ == "__main__":
    sys.exit(run())
