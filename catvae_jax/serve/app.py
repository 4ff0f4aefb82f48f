"""The HTTP generator service as an ASGI app: `create_app(workdir)` builds a FastAPI app around
one loaded model (`serve.service.Service`), from three routers:

- pages: `GET /` a page showing a grid, a "more cats" button, seed / temperature / sampler
  inputs; `GET /grid.png?n=64&seed=&temperature=1.0&sampler=auto` a PNG grid of ⌈√n⌉ columns.
  No seed: a fresh grid per call (its seed is in the `X-Seed` header); a seed: the same bytes.
  Samplers: auto (the default: flow, else gmm, else prior), prior, gmm, and flow when the
  checkpoint has a learned prior; `/healthz` lists them.
- reconstruct: `POST /reconstruct` (multipart field `file`) a PNG of the input beside its
  reconstruction. The type is checked by decoding with PIL; an image of another size is
  centre-cropped to a square and resized to the model's size as training data is
  (`data.decode`: transparency on white, Lanczos), which the `X-Resized` header reports. When
  the model has a bits/dim range (catvae_jax/bpd_range.py), `X-Bits-Per-Dim`,
  `X-Bits-Per-Dim-Percentile`, `X-Far-From-Training` (true/false) and `X-Input-Note` (a
  sentence) say how the upload compares with the images the model knows; the page shows the
  note of a far one.
- status: `GET /healthz` 200 `{"status": "ok", "step": ...}` once warm (compiled), "degraded"
  with a "failed" sampler → reason map when a sampler failed, 503 while warming; `GET /metrics`
  Prometheus text (`serve.metrics`).

Bad parameters get a 4xx JSON `{"error": "..."}`; a 503 is warming up or a sampler that failed
(`/healthz` lists it); a 500 is a bug or the server's own state (its log says which). Generation
runs jitted in a thread pool, so requests are served while others compute.
"""

from __future__ import annotations

import contextlib
import functools
import math
import re
import secrets
import threading
from importlib import resources
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from catvae_jax import inference, pictures
from catvae_jax.data import decode
from catvae_jax.errors import UserError
from catvae_jax.inference import VaeModel, load
from catvae_jax.serve.metrics import ObserveRequests, ServiceMetrics
from catvae_jax.serve.service import Service, log

ENDPOINTS = ("/", "/healthz", "/grid.png", "/reconstruct", "/metrics")
MAX_TEMPERATURE = inference.MAX_TEMPERATURE
_DRAIN_FACTOR = 8  # an oversize body is read (and dropped) up to this multiple, then cut off


def create_app(
    workdir: str,
    step: str | int = "best",
    max_n: int = 256,
    default_n: int = 64,
    max_upload_mb: float = 10.0,
    compute_slots: int = 1,
    model: VaeModel | None = None,
    api_docs: bool = False,
) -> FastAPI:
    """The service for `workdir`'s model at `step` (or for `model`, if given), loaded now and
    compiled in a background thread once the app starts (/healthz is 503 until then).

    At most `compute_slots` model calls run at once (the rest queue; PNG encoding and the other
    endpoints go on meanwhile): one keeps a CPU's cores on one batch instead of thrashing.
    `api_docs` serves FastAPI's /docs, /redoc and /openapi.json (off: 404)."""
    if not 1 <= default_n <= max_n <= inference.MAX_GENERATE:
        raise UserError(
            f"need 1 <= default_n <= max_n <= {inference.MAX_GENERATE}, got {default_n} and {max_n}"
        )
    if compute_slots < 1:
        raise UserError(f"compute_slots must be at least 1, got {compute_slots}")
    if not (math.isfinite(max_upload_mb) and max_upload_mb > 0):
        raise UserError(f"max_upload_mb must be a positive number, got {max_upload_mb}")
    model = model or load(workdir, step)
    metrics = ServiceMetrics()
    service = Service(model, max_n, default_n, compute_slots, metrics)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        threading.Thread(target=service.warm, name="catvae-warm-up", daemon=True).start()
        yield

    docs = {} if api_docs else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(title="catvae_jax", lifespan=lifespan, **docs)
    app.state.service = service
    app.state.max_upload_mb = max_upload_mb
    app.add_middleware(ObserveRequests, metrics=metrics, endpoints=ENDPOINTS)
    _add_error_handlers(app, metrics)
    for router in (pages, reconstruction, status):
        app.include_router(router)
    return app


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _add_error_handlers(app: FastAPI, metrics: ServiceMetrics) -> None:
    """Every error as JSON `{"error": ...}`: HTTP errors as raised; a UserError as a 500 with a
    generic message (the routes check every parameter themselves, so the library's UserError
    comes from the server's own state, e.g. its training data gone: the log says which, the
    client is not told the server's paths); any other exception as a 500 that counts as a
    bug. A client that closes the connection before
    its request is complete gets nothing (it is gone): 499, nginx's "client closed request",
    is what the metrics record, without a traceback in the log."""

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, e: ClientDisconnect) -> Response:
        return Response(status_code=499)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        return _error(e.status_code, str(e.detail), e.headers)

    @app.exception_handler(UserError)
    async def server_state(request: Request, e: UserError) -> JSONResponse:
        log.warning("%s %s failed: %s", request.method, request.url.path, e)
        return _error(500, "the server cannot serve this request now; its log says why")

    @app.exception_handler(Exception)
    async def bug(request: Request, e: Exception) -> JSONResponse:
        metrics.bugs.inc()
        return _error(500, f"internal error ({type(e).__name__}); see the server log")


def _service(request: Request) -> Service:
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(_service)]


def _require_ready(service: Service) -> None:
    if not service.ready.is_set():
        raise HTTPException(503, "warming up, try again shortly", {"Retry-After": "2"})


# ---- pages: the HTML page and the grid it shows.
# The cheap endpoints are async: they answer on the event loop even when every pool thread
# is busy with (or queued for) the model.
pages = APIRouter()


@functools.cache
def _template() -> str:
    return resources.files("catvae_jax.serve").joinpath("static/index.html").read_text()


def _page(service: Service) -> str:
    options = "".join(f'<option value="{s}">{s}</option>' for s in service.samplers)
    values = {
        "DEFAULT_N": service.default_n,
        "MAX_N": service.max_n,
        "MAX_T": f"{MAX_TEMPERATURE:g}",
        "SAMPLER_OPTIONS": options,
        "STEP": service.model.step,
        "SIZE": service.model.image_shape[0],
    }
    html = _template()
    for key, value in values.items():
        html = html.replace("{{" + key + "}}", str(value))
    return html


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


@pages.get("/", response_class=HTMLResponse)
async def page(service: ServiceDep) -> str:
    """The HTML page: a grid, a "more cats" button, seed and temperature inputs."""
    return _page(service)


@pages.get("/grid.png", response_class=Response)
def grid_png(
    service: ServiceDep,
    n: str | None = None,
    seed: str = "",
    temperature: str = "1.0",
    sampler: str = "auto",
) -> Response:
    """A PNG grid of n generated cats (default: the service's default_n); an empty seed draws a
    fresh one (see X-Seed)."""
    count = service.default_n if n is None else _int_param("n", n, 1, service.max_n)
    fixed = seed.strip() != ""
    seed_value = _int_param("seed", seed, 0, 2**32 - 1) if fixed else secrets.randbits(32)
    t = _temperature(temperature)
    if sampler not in service.offered:
        raise HTTPException(400, f"sampler must be one of {', '.join(service.offered)}")
    _require_ready(service)
    png = service.grid_png(count, seed_value, t, sampler)
    headers = {
        "X-Seed": str(seed_value),
        "Cache-Control": "private, max-age=600" if fixed else "no-store",
    }
    return Response(png, media_type="image/png", headers=headers)


# ---- reconstruction of an uploaded image.
reconstruction = APIRouter()


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


async def _upload(request: Request, max_upload_mb: float) -> bytes:
    """The bytes of the multipart field `file` of the request, or a 4xx: 413 over the limit,
    400 not multipart or without that field."""
    upload_limit = int(max_upload_mb * 1e6)
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
            raise HTTPException(400, "send the image as multipart/form-data in the field 'file'")
        data = await upload.read()
    finally:
        await form.close()
    if len(data) > upload_limit:
        raise too_big
    return data


@reconstruction.post("/reconstruct", response_class=Response)
async def reconstruct(request: Request, service: ServiceDep) -> Response:
    """Multipart field `file` (any image PIL decodes) → PNG: input | reconstruction."""
    data = await _upload(request, request.app.state.max_upload_mb)
    _require_ready(service)
    x, resized = await run_in_threadpool(decode_upload, data, service.model.image_shape[0])
    png = await run_in_threadpool(service.reconstruct_png, x)
    headers = {"X-Resized": resized} if resized else {}
    verdict = await run_in_threadpool(service.check_input, x)
    headers |= verdict.headers() if verdict is not None else {}
    return Response(png, media_type="image/png", headers=headers)


# ---- status: health for probes, metrics for Prometheus.
status = APIRouter()


@status.get("/healthz")
async def healthz(service: ServiceDep) -> JSONResponse:
    """200 with the model's step once compiled ("degraded" when a sampler failed); 503 while
    warming, or if warm-up failed. "failed": each sampler that failed and why, in one line."""
    failed = {"failed": dict(service.failed)} if service.failed else {}
    if not service.ready.is_set():
        body = {"status": "warming" if service.warm_error is None else "failed"}
        if service.warm_error:
            body["error"] = service.warm_error
        return JSONResponse(body | failed, status_code=503, headers={"Retry-After": "2"})
    model = service.model
    return JSONResponse(
        {
            "status": "degraded" if failed else "ok",
            "step": model.step,
            "model": model.config.model.name,
            "image_size": model.image_shape[0],
            "z_dim": model.z_dim,
            "max_n": service.max_n,
            "samplers": list(service.samplers),
            "auto": service.auto,
            "checks_inputs": model.bpd_range is not None,
        }
        | failed
    )


@status.get("/metrics")
async def metrics_text(service: ServiceDep) -> Response:
    """Prometheus text format."""
    return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)
