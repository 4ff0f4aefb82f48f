"""The HTTP service's Prometheus metrics and the ASGI middleware that times every request.

Series (one registry per app): catvae_request_duration_seconds{endpoint} (histogram, the latency
SLO), catvae_requests_total{endpoint,status}, catvae_request_errors_total{endpoint,kind}
(kind: client = 4xx, among them 499 for a client that closed the connection before its request
was complete; unavailable = 503, warming up or a sampler that failed; server = any other 5xx),
catvae_unhandled_exceptions_total (bugs),
catvae_requests_in_progress{endpoint}, catvae_compute_seconds{op} (model calls, without queueing),
catvae_images_generated_total, catvae_ready, catvae_model_step.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ServiceMetrics:
    """The app's own Prometheus registry and the series it exports."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.latency = Histogram(
            "catvae_request_duration_seconds", "Request latency.", ["endpoint"], registry=r
        )
        self.requests = Counter(
            "catvae_requests", "Requests by status code.", ["endpoint", "status"], registry=r
        )
        self.errors = Counter(
            "catvae_request_errors",
            "Error responses: kind=client (4xx), unavailable (503) or server (other 5xx).",
            ["endpoint", "kind"],
            registry=r,
        )
        self.bugs = Counter(
            "catvae_unhandled_exceptions", "Exceptions that reached the catch-all.", registry=r
        )
        self.in_progress = Gauge(
            "catvae_requests_in_progress", "Requests being served.", ["endpoint"], registry=r
        )
        self.compute = Histogram(
            "catvae_compute_seconds",
            "Model call time (no queueing, no PNG encoding).",
            ["op"],
            registry=r,
        )
        self.images = Counter("catvae_images_generated", "Images generated.", registry=r)
        self.ready = Gauge("catvae_ready", "1 once the model is compiled.", registry=r)
        self.step = Gauge("catvae_model_step", "Checkpoint step being served.", registry=r)


class ObserveRequests:
    """ASGI middleware: times every HTTP request and counts it by endpoint and status."""

    def __init__(self, app: Any, metrics: ServiceMetrics, endpoints: tuple[str, ...]) -> None:
        self.app, self.metrics, self.endpoints = app, metrics, endpoints

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        endpoint = scope["path"] if scope["path"] in self.endpoints else "other"
        status = 500  # unless a response starts: an exception escaped to the server

        async def send_status(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        m, start = self.metrics, time.perf_counter()
        m.in_progress.labels(endpoint).inc()
        try:
            await self.app(scope, receive, send_status)
        finally:
            m.in_progress.labels(endpoint).dec()
            m.latency.labels(endpoint).observe(time.perf_counter() - start)
            m.requests.labels(endpoint, str(status)).inc()
            if status >= 400:
                m.errors.labels(endpoint, _error_kind(status)).inc()


def _error_kind(status: int) -> str:
    """client (4xx), unavailable (503: warming up, or a sampler that failed) or server."""
    if status < 500:
        return "client"
    return "unavailable" if status == 503 else "server"
