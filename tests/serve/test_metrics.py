"""The service's Prometheus metrics (catvae_jax/serve/metrics.py), in process: the middleware
counts each request by endpoint and status, each error by kind, and times it, around a stub
ASGI app (no model, no server)."""

from __future__ import annotations

import asyncio

import pytest

from catvae_jax.serve.metrics import ObserveRequests, ServiceMetrics

ENDPOINTS = ("/generate", "/healthz")


class _Broken(Exception):
    pass


def _respond(status: int | None, seen: list | None = None):
    """An ASGI app that answers `status` (None: raises before any response), noting the
    in-progress gauge it sees in `seen`."""

    async def app(scope, receive, send):
        if seen is not None:
            seen.append(scope)
        if status is None:
            raise _Broken("a bug")
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    return app


def _call(app, path: str, kind: str = "http") -> list[dict]:
    """Runs one request (or another ASGI scope) through `app`; the messages it sent."""
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(app({"type": kind, "path": path}, receive, send))
    return sent


def _value(metrics: ServiceMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def _samples(metrics: ServiceMetrics, family: str) -> list:
    return [s for f in metrics.registry.collect() if f.name == family for s in f.samples]


def test_a_request_is_counted_and_timed_by_endpoint_and_status():
    metrics = ServiceMetrics()
    seen = []

    async def app(scope, receive, send):  # what the gauge says while the request runs
        seen.append(_value(metrics, "catvae_requests_in_progress", endpoint="/generate"))
        await _respond(200)(scope, receive, send)

    observed = ObserveRequests(app, metrics, ENDPOINTS)
    sent = _call(observed, "/generate")
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert seen == [1.0]
    assert _value(metrics, "catvae_requests_in_progress", endpoint="/generate") == 0.0
    assert _value(metrics, "catvae_requests_total", endpoint="/generate", status="200") == 1.0
    assert _value(metrics, "catvae_request_duration_seconds_count", endpoint="/generate") == 1.0
    assert _value(metrics, "catvae_request_duration_seconds_sum", endpoint="/generate") > 0.0
    assert _samples(metrics, "catvae_request_errors") == []  # no error series at all


def test_a_path_outside_the_endpoints_is_counted_as_other():
    metrics = ServiceMetrics()
    observed = ObserveRequests(_respond(404), metrics, ENDPOINTS)
    for path in ("/nope", "/generate/../etc", "/healthz/"):
        _call(observed, path)
    assert _value(metrics, "catvae_requests_total", endpoint="other", status="404") == 3.0
    assert _value(metrics, "catvae_request_errors_total", endpoint="other", kind="client") == 3.0


@pytest.mark.parametrize(
    ("status", "kind"),
    [(400, "client"), (413, "client"), (499, "client"), (503, "unavailable"), (500, "server")],
)
def test_an_error_response_is_counted_by_its_kind(status, kind):
    metrics = ServiceMetrics()
    _call(ObserveRequests(_respond(status), metrics, ENDPOINTS), "/healthz")
    assert _value(metrics, "catvae_request_errors_total", endpoint="/healthz", kind=kind) == 1.0
    others = {"client", "unavailable", "server"} - {kind}
    assert all(
        _value(metrics, "catvae_request_errors_total", endpoint="/healthz", kind=k) == 0
        for k in others
    )
    assert _value(metrics, "catvae_requests_total", endpoint="/healthz", status=str(status)) == 1


def test_an_exception_that_escapes_is_a_server_error_and_still_timed():
    metrics = ServiceMetrics()
    with pytest.raises(_Broken):
        _call(ObserveRequests(_respond(None), metrics, ENDPOINTS), "/generate")
    assert _value(metrics, "catvae_requests_total", endpoint="/generate", status="500") == 1.0
    assert _value(metrics, "catvae_request_errors_total", endpoint="/generate", kind="server") == 1
    assert _value(metrics, "catvae_requests_in_progress", endpoint="/generate") == 0.0
    assert _value(metrics, "catvae_request_duration_seconds_count", endpoint="/generate") == 1.0


def test_other_scopes_pass_through_uncounted():
    metrics = ServiceMetrics()
    seen = []
    _call(ObserveRequests(_respond(200, seen), metrics, ENDPOINTS), "/generate", kind="lifespan")
    assert len(seen) == 1  # the app ran
    assert _value(metrics, "catvae_requests_total", endpoint="/generate", status="200") == 0.0


def test_each_app_has_its_own_registry_with_every_series():
    a, b = ServiceMetrics(), ServiceMetrics()
    a.images.inc(5)
    a.compute.labels("generate").observe(0.25)
    assert _value(a, "catvae_images_generated_total") == 5.0
    assert _value(b, "catvae_images_generated_total") == 0.0
    assert _value(a, "catvae_compute_seconds_sum", op="generate") == 0.25
    names = {family.name for family in a.registry.collect()}
    assert names == {
        "catvae_request_duration_seconds",
        "catvae_requests",
        "catvae_request_errors",
        "catvae_unhandled_exceptions",
        "catvae_requests_in_progress",
        "catvae_compute_seconds",
        "catvae_images_generated",
        "catvae_ready",
        "catvae_model_step",
    }
