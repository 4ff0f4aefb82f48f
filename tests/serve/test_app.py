"""The HTTP service (catvae_jax.serve) as a real server process on a free loopback port.

Every endpoint, every bad input of the issue (a 4xx JSON error, never a 500), same-seed bytes,
a reconstruction, and a bounded load run whose p50/p99 latency is printed. The warming state and
the catch-all 500 are checked in-process with a stand-in model.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import REPO, run_cli_cases
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from catvae_jax.errors import UserError

MAX_N = 64
MAX_UPLOAD_MB = 0.5
READ_TIMEOUT_S = 4
TILE = 16 + 2  # a 16-pixel image plus the grid's 2-pixel padding


def start_server(workdir, log_path, *extra: str, timeout: float = 240) -> tuple:
    """Starts `python -m catvae_jax.serve` on a free loopback port; waits for /healthz 200.

    Returns (process, base URL, healthz statuses seen while waiting)."""
    log_path = Path(log_path)
    with log_path.open("w") as log:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "catvae_jax.serve",
                "--workdir",
                str(workdir),
                "--port",
                "0",
                *extra,
            ],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    deadline, url, seen = time.monotonic() + timeout, None, []
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}")
            if url is None:
                found = re.search(r"at (http://127\.0\.0\.1:\d+)", log_path.read_text())
                url = found and found[1]
            else:
                try:
                    r = httpx.get(url + "/healthz", timeout=5)
                    seen.append((r.status_code, r.json()["status"]))
                    if r.status_code == 200:
                        return proc, url, seen
                except httpx.TransportError:
                    pass
            time.sleep(0.2)
        raise RuntimeError("server not ready in time")
    except RuntimeError as e:
        stop_server(proc)
        pytest.fail(f"{e}; its log:\n{log_path.read_text()[-3000:]}")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def server(trained_workdir, tmp_path_factory):
    """(client, workdir, healthz statuses seen) for a server with max_n 64 and a 0.5 MB limit,
    on a copy of the tiny workdir (the server caches the gmm it fits there)."""
    served = tmp_path_factory.mktemp("serve")
    workdir = served / "run"
    shutil.copytree(trained_workdir[0], workdir)
    log = served / "server.log"
    args = ("--max_n", str(MAX_N), "--max_upload_mb", str(MAX_UPLOAD_MB))
    args += ("--read_timeout_s", str(READ_TIMEOUT_S))
    proc, url, seen = start_server(workdir, log, *args)
    try:
        with httpx.Client(base_url=url, timeout=120) as client:
            yield client, workdir, seen
    finally:
        stop_server(proc)
    # uvicorn shuts down on SIGTERM, then re-raises it: exit status -SIGTERM, no traceback.
    assert proc.returncode in (0, -signal.SIGTERM) and "Traceback" not in log.read_text()


def png_of(image: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt)
    return buf.getvalue()


def decode(content: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(content)).convert("RGB"))


def metric(client: httpx.Client, name: str, **labels: str) -> float:
    """The value of one sample in /metrics (0 when the series does not exist yet)."""
    text = client.get("/metrics").text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


def connect(client: httpx.Client) -> socket.socket:
    """A raw TCP connection to the server of `client`, for what httpx will not send."""
    url = httpx.URL(str(client.base_url))
    return socket.create_connection((url.host, url.port), timeout=30)


def wait_for(condition, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_healthz_reports_the_step(server):
    client, _, seen = server
    r = client.get("/healthz")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and isinstance(body["step"], int) and body["step"] > 0
    assert body["image_size"] == 16 and body["max_n"] == MAX_N and "prior" in body["samplers"]
    assert all(status in ((503, "warming"), (200, "ok")) for status in seen)


def test_page_has_the_grid_and_controls(server):
    client, _, _ = server
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    for needle in ('id="grid"', ">more cats<", 'id="seed"', 'id="temperature"', 'id="sampler"'):
        assert needle in html
    assert "{{" not in html  # every placeholder filled
    assert not re.search(r"(src|href)=\"?https?://", html)  # nothing is fetched from elsewhere


def test_grid_same_seed_same_bytes_and_shape(server):
    client, _, _ = server
    a = client.get("/grid.png", params={"n": 9, "seed": 3})
    b = client.get("/grid.png", params={"n": 9, "seed": 3, "temperature": "1.0"})
    assert a.status_code == b.status_code == 200 and a.headers["content-type"] == "image/png"
    assert a.content == b.content and a.headers["x-seed"] == "3"
    assert decode(a.content).shape == (3 * TILE + 2, 3 * TILE + 2, 3)  # 3 × 3 tiles
    other = client.get("/grid.png", params={"n": 9, "seed": 4})
    hot = client.get("/grid.png", params={"n": 9, "seed": 3, "temperature": 0.3})
    assert other.content != a.content and hot.content != a.content
    default = client.get("/grid.png")  # n defaults to 64: an 8 × 8 grid
    assert decode(default.content).shape == (8 * TILE + 2, 8 * TILE + 2, 3)


def test_grid_without_seed_is_fresh_and_reproducible(server):
    client, _, _ = server
    a, b = client.get("/grid.png?n=4"), client.get("/grid.png?n=4&seed=")
    assert a.status_code == b.status_code == 200 and a.content != b.content
    assert a.headers["cache-control"] == "no-store"
    again = client.get("/grid.png", params={"n": 4, "seed": a.headers["x-seed"]})
    assert again.content == a.content  # X-Seed reproduces a random grid


def test_grid_shows_the_models_images(server):
    """The served grid is the library's `generate` (n=5 is computed in a batch of 8)."""
    from catvae_jax import images, load

    client, workdir, _ = server
    served = decode(client.get("/grid.png", params={"n": 5, "seed": 11}).content)
    expected = images.grid(load(workdir).generate(5, seed=11))
    assert served.shape == expected.shape
    assert np.abs(served.astype(int) - expected).max() <= 1


def test_samplers_and_auto_by_default(server):
    """/grid.png without a sampler is `auto`: the workdir's learned prior (fitted in training)."""
    client, _, _ = server
    assert client.get("/healthz").json()["samplers"] == ["auto", "prior", "gmm", "flow"]
    grid = {s: client.get("/grid.png", params={"n": 4, "seed": 2, "sampler": s}) for s in
            ("gmm", "prior", "flow", "auto")}  # fmt: skip
    assert all(r.status_code == 200 for r in grid.values()), grid
    again = client.get("/grid.png", params={"n": 4, "seed": 2, "sampler": "gmm"})
    assert grid["gmm"].content == again.content != grid["prior"].content
    default = client.get("/grid.png", params={"n": 4, "seed": 2})
    assert default.content == grid["auto"].content == grid["flow"].content != grid["gmm"].content
    assert 'value="auto"' in client.get("/").text


def test_reconstruct(server):
    client, _, _ = server
    rng = np.random.default_rng(0)
    cat = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    r = client.post("/reconstruct", files={"file": ("cat.png", png_of(cat), "image/png")})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png", r.text
    assert "x-resized" not in r.headers
    out = decode(r.content)
    assert out.shape == (TILE + 2, 2 * TILE + 2, 3)  # input | reconstruction
    np.testing.assert_array_equal(out[2:18, 2:18], cat)
    assert not np.array_equal(out[2:18, 20:36], cat)
    # Another size, another format and a misleading name: decoded, cropped and resized.
    big = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    r = client.post("/reconstruct", files={"file": ("x.txt", png_of(big, "JPEG"), "text/plain")})
    assert r.status_code == 200, r.text
    assert r.headers["x-resized"] == "40x30 centre-cropped to 30x30, resized to 16x16"
    assert decode(r.content).shape == (TILE + 2, 2 * TILE + 2, 3)
    gray = png_of(np.full((16, 16), 128, np.uint8))
    assert client.post("/reconstruct", files={"file": ("g.png", gray)}).status_code == 200


def test_uploads_are_read_as_training_reads_images():
    """An RGBA, non-square upload: transparency on white, centre crop and Lanczos resize,
    exactly the pixels the data pipeline (`data.decode`) gives the same file."""
    from catvae_jax.data.decode import decode_image
    from catvae_jax.serve.app import decode_upload

    rgba = np.random.default_rng(3).integers(0, 256, (30, 40, 4), dtype=np.uint8)
    rgba[:, :, 3] = np.where(np.arange(40) % 3 == 0, 0, 255)  # every third column transparent
    png = png_of(rgba)
    x, resized = decode_upload(png, 16)
    assert resized == "40x30 centre-cropped to 30x30, resized to 16x16"
    np.testing.assert_array_equal(np.rint(x[0] * 255).astype(np.uint8), decode_image(png, 16))
    square, _ = decode_upload(png_of(rgba[:16, :16]), 16)
    assert np.all(square[0][:, ::3] == 1.0)  # transparent columns are white, not black


def _bomb() -> bytes:
    """A small PNG that decodes to 8000 × 8000 = 64 M pixels."""
    return png_of(np.zeros((8000, 8000), bool))


BAD_GRIDS = [
    ("n=0", "n must be between"),
    ("n=-3", "n must be between"),
    (f"n={MAX_N + 1}", "n must be between"),
    ("n=100000000000000000000000", "n must be between"),
    ("n=abc", "n must be an integer"),
    ("n=1.5", "n must be an integer"),
    ("n=", "n must be an integer"),
    ("seed=abc", "seed must be an integer"),
    ("seed=2.5", "seed must be an integer"),
    ("seed=-1", "seed must be between"),
    (f"seed={2**32}", "seed must be between"),
    ("temperature=0", "temperature must be in"),
    ("temperature=-1", "temperature must be in"),
    ("temperature=1e9", "temperature must be in"),
    ("temperature=nan", "temperature must be in"),
    ("temperature=inf", "temperature must be in"),
    ("temperature=hot", "temperature must be a number"),
    ("sampler=vampire", "sampler must be one of"),
    ("sampler=", "sampler must be one of"),
]


def test_bad_inputs_are_4xx_json(server):
    client, _, _ = server
    before = metric(client, "catvae_request_errors_total", endpoint="/grid.png", kind="client")
    cases = [(client.get(f"/grid.png?{q}"), 400, why) for q, why in BAD_GRIDS]
    oversize = os.urandom(int(MAX_UPLOAD_MB * 1e6) + 1000)
    noise = np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    uploads = [
        ({"file": ("cat.png", b"not an image at all", "image/png")}, 415, "not a decodable image"),
        ({"file": ("cut.png", png_of(noise)[:400])}, 415, "decodable"),
        ({"file": ("big.png", oversize, "image/png")}, 413, "over the limit of 0.5 MB"),
        ({"file": ("bomb.png", _bomb(), "image/png")}, 413, "pixels is over"),
        ({"picture": ("cat.png", png_of(np.zeros((16, 16, 3), np.uint8)))}, 400, "field 'file'"),
    ]
    cases += [(client.post("/reconstruct", files=f), code, why) for f, code, why in uploads]
    cases += [
        (
            client.post("/reconstruct", content=b"\x89PNG", headers={"content-type": "image/png"}),
            400,
            "multipart",
        ),
        (client.post("/reconstruct", data={"file": "text"}), 400, "multipart"),
        (
            client.post(
                "/reconstruct",
                content=oversize + bytes(100_000),  # over the limit and its framing
                headers={"content-type": "multipart/form-data; boundary=x"},
            ),
            413,
            "limit",
        ),
        (client.get("/reconstruct"), 405, "Method Not Allowed"),
        (client.get("/nowhere"), 404, "Not Found"),
        *[(client.get(path), 404, "Not Found") for path in ("/docs", "/redoc", "/openapi.json")],
    ]
    for r, code, why in cases:
        assert r.status_code == code, (r.request.url, r.text)
        assert r.headers["content-type"] == "application/json", r.request.url
        assert why in r.json()["error"], (r.request.url, r.json())
    after = metric(client, "catvae_request_errors_total", endpoint="/grid.png", kind="client")
    assert after - before == len(BAD_GRIDS)
    assert metric(client, "catvae_unhandled_exceptions_total") == 0
    assert client.get("/grid.png?n=2&seed=1").status_code == 200  # nothing hung


def test_a_client_that_leaves_mid_upload_is_not_a_server_error(server):
    """It was a 500, a server-error count and a ClientDisconnect traceback in the log, so any
    client could inflate the error metrics: now a 499 (nginx's "client closed request")."""
    client, workdir, _ = server
    errors = {
        kind: metric(client, "catvae_request_errors_total", endpoint="/reconstruct", kind=kind)
        for kind in ("client", "server")
    }
    left = metric(client, "catvae_requests_total", endpoint="/reconstruct", status="499")
    head = (
        b"POST /reconstruct HTTP/1.1\r\nHost: test\r\nContent-Length: 100000\r\n"
        b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n"
    )
    with connect(client) as sock:
        sock.sendall(head + bytes(1000))
        time.sleep(0.2)
    wait_for(
        lambda: (
            metric(client, "catvae_requests_total", endpoint="/reconstruct", status="499") > left
        )
    )
    after = metric(client, "catvae_request_errors_total", endpoint="/reconstruct", kind="server")
    assert after == errors["server"] and metric(client, "catvae_unhandled_exceptions_total") == 0
    assert (
        metric(client, "catvae_request_errors_total", endpoint="/reconstruct", kind="client")
        > errors["client"]
    )
    log = (workdir.parent / "server.log").read_text()
    assert "Traceback" not in log and "ClientDisconnect" not in log, log[-3000:]


def test_connections_that_stall_are_closed(server):
    """A client that connects and says nothing, one that stops in its headers and one that stops
    in its body (a half-open upload) held their connection forever: each is closed once it has
    sent nothing for --read_timeout_s (the upload ends as a 499, not a server error); a client
    that waits for its answer is not cut off."""
    client, _, _ = server
    server_errors = metric(client, "catvae_request_errors_total", kind="server")
    upload = (
        b"POST /reconstruct HTTP/1.1\r\nHost: test\r\nContent-Length: 100000\r\n"
        b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n"
    )
    stalls = [b"", b"GET /healthz HTTP/1.1\r\nHost: te", upload + bytes(1000)]
    socks = [connect(client) for _ in stalls]
    start = time.monotonic()
    for sock, data in zip(socks, stalls, strict=True):
        sock.sendall(data)
    for sock in socks:
        with sock:
            assert sock.recv(100) == b""  # closed by the server, nothing said
            assert READ_TIMEOUT_S - 0.5 < time.monotonic() - start < READ_TIMEOUT_S + 20
    assert metric(client, "catvae_request_errors_total", kind="server") == server_errors
    slow = client.get("/grid.png", params={"n": MAX_N, "seed": 1, "temperature": 0.5})
    assert slow.status_code == 200  # the timeout is on the client's bytes, not on the answer


def test_malformed_http_is_a_json_400(server):
    """What h11 cannot parse was uvicorn's text/plain 400: now the service's JSON error."""
    client, _, _ = server
    requests = [
        b"POST /reconstruct HTTP/1.1\r\nHost: test\r\nContent-Length: -5\r\n\r\n",
        b"POST /reconstruct HTTP/1.1\r\nHost: test\r\nContent-Length: 1e3\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: test\r\nBad Header\r\n\r\n",
        b"NOT HTTP AT ALL\r\n\r\n",
    ]
    for request in requests:
        with connect(client) as sock:
            sock.sendall(request)
            response = b""
            while chunk := sock.recv(4096):
                response += chunk
        head, _, body = response.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400 "), (request, response)
        assert b"content-type: application/json" in head.lower(), (request, response)
        assert "malformed HTTP request" in json.loads(body)["error"]


def test_metrics(server):
    client, _, _ = server
    client.get("/grid.png?n=1")
    assert client.get("/grid.png?n=0").status_code == 400  # this test's own 4xx: under xdist
    r = client.get("/metrics")  # the other tests on this server may run on another worker
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    latency = families["catvae_request_duration_seconds"]
    assert latency.type == "histogram"
    counts = {s.labels["endpoint"] for s in latency.samples if s.name.endswith("_count")}
    assert {"/grid.png", "/healthz"} <= counts
    assert families["catvae_ready"].samples[0].value == 1
    assert metric(client, "catvae_compute_seconds_count", op="generate") >= 1
    assert metric(client, "catvae_requests_total", endpoint="/grid.png", status="200") >= 1
    assert families["catvae_request_errors"].type == "counter"
    statuses = {s.labels["status"] for s in families["catvae_requests"].samples}
    assert "500" not in statuses and {"200", "400"} <= statuses  # 503s: /healthz while warming


def test_load_200_requests_8_concurrent(server, capsys):
    client, _, _ = server
    before = metric(client, "catvae_request_duration_seconds_count", endpoint="/grid.png")
    in_flight, stop = [], threading.Event()

    def watch() -> None:  # the server keeps answering /metrics while it generates
        while not stop.is_set():
            in_flight.append(metric(client, "catvae_requests_in_progress", endpoint="/grid.png"))

    def one(i: int) -> tuple[int, float]:
        start = time.perf_counter()
        r = client.get("/grid.png", params={"n": 64, "seed": i})
        return r.status_code, time.perf_counter() - start

    watcher = threading.Thread(target=watch)
    watcher.start()
    start = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(200)))
    wall = time.perf_counter() - start
    stop.set()
    watcher.join()
    statuses = [s for s, _ in results]
    assert statuses.count(200) == 200, {s: statuses.count(s) for s in set(statuses)}
    p50, p99 = np.percentile([t for _, t in results], [50, 99]) * 1000
    with capsys.disabled():
        print(
            f"\nserve load: 200 × /grid.png?n=64 at 16 px, 8 concurrent: p50 {p50:.1f} ms, "
            f"p99 {p99:.1f} ms, {200 / wall:.1f} requests/s"
        )
    after = metric(client, "catvae_request_duration_seconds_count", endpoint="/grid.png")
    assert after - before == 200
    assert max(in_flight) >= 2  # requests overlap: served while others compute


def test_a_damaged_sampler_degrades_the_server(trained_workdir, tmp_path):
    """No learned prior, a garbage gmm_<step>.npz and the training data gone (so no refit): the
    server serves the prior, says in /healthz that the gmm failed and why, shows no server path
    to a client, and logs no traceback. Before, the gmm's BadZipFile stopped the warm-up, and
    /healthz stayed at 503 for good."""
    workdir = tmp_path / "run"
    shutil.copytree(trained_workdir[0], workdir)
    for flow in workdir.glob("flow_*.npz"):
        flow.unlink()
        (workdir / flow.name.replace("flow", "gmm")).write_bytes(b"PK\x03\x04" + bytes(300))
    config = json.loads((workdir / "config.json").read_text())
    config["data"].update(source="folder", path=str(tmp_path / "gone"))
    (workdir / "config.json").write_text(json.dumps(config))
    log = tmp_path / "server.log"
    proc, url, _ = start_server(workdir, log)
    try:
        with httpx.Client(base_url=url, timeout=120) as client:
            r = client.get("/healthz")
            health = r.json()
            assert health["status"] == "degraded" and health["auto"] == "prior", health
            assert health["samplers"] == ["auto", "prior"] and list(health["failed"]) == ["gmm"]
            gmm = client.get("/grid.png", params={"n": 4, "sampler": "gmm"})
            assert gmm.status_code == 503 and "the gmm sampler is unavailable" in gmm.text
            for text in (r.text, gmm.text):
                assert str(tmp_path) not in text and "/gone" not in text, text
            assert client.get("/grid.png", params={"n": 4}).status_code == 200
    finally:
        stop_server(proc)
    text = log.read_text()
    assert "Traceback" not in text and "the gmm sampler is unavailable" in text, text[-3000:]


def test_cli_errors(server, tmp_path):
    """A bad flag, a missing workdir, a busy port: one line `error: ...`, exit code 2. An
    infinite upload limit or a step in other digits than 0-9 are refused before the model
    loads (they were an OverflowError and a ValueError traceback)."""
    port = str(httpx.URL(str(server[0].base_url)).port)
    workdir = ["--workdir", str(server[1]), "--port", "0"]
    cases = [
        (["--workdir", str(tmp_path), "--port", "x"], "error: flag --port=x: invalid literal"),
        (["--workdir", str(tmp_path / "nope"), "--port", "0"], "error: workdir"),
        (["--workdir", str(server[1]), "--port", port], "error: cannot listen on 127.0.0.1:"),
    ]
    for mb in ("inf", "nan", "-1", "0"):
        cases.append(([*workdir, f"--max_upload_mb={mb}"], "error: flag --max_upload_mb="))
        cases.append(([*workdir, f"--read_timeout_s={mb}"], "error: flag --read_timeout_s="))
    for step in ("\u00b2", "\u0663", "1.5", "-1", "", "newest"):  # ², an Arabic-Indic 3
        cases.append(([*workdir, f"--step={step}"], f"error: flag --step={step}: must be"))
    procs = run_cli_cases([("catvae_jax.serve", *args) for args, _ in cases])
    for proc, (_, message) in zip(procs, cases, strict=True):
        err = proc.stderr
        assert proc.returncode == 2 and err.startswith(message) and err.count("\n") == 1, err


class _StandIn:
    """A VaeModel stand-in: generation waits for `release` and raises `broken[sampler]`;
    reconstructing white is a bug, and 40% grey finds the server's data gone (a UserError)."""

    step, z_dim, image_shape, flow = 7, 2, (4, 4, 3), None  # flow: no learned prior
    bpd_range = None  # no bits/dim range: uploads are not judged
    config = types.SimpleNamespace(model=types.SimpleNamespace(name="stand-in"))

    def __init__(
        self, broken: dict[str, Exception] | None = None, flow: bool = False, chosen: str = ""
    ) -> None:
        self.release = threading.Event()
        self.broken = broken or {}
        self.flow = object() if flow else None
        self.choice = {"choice": chosen} if chosen else None  # a measured choice of `auto`
        self.calls: list[str] = []

    def generate(
        self, n: int, seed: int = 0, temperature: float = 1.0, sampler: str = "auto"
    ) -> np.ndarray:
        assert self.release.wait(30)
        self.calls.append(sampler)
        if sampler in self.broken:
            raise self.broken[sampler]
        return np.full((n, 4, 4, 3), 0.5, np.float32)

    def reconstruct(self, x: np.ndarray) -> np.ndarray:
        if x.max() > 0.9:
            raise RuntimeError("a bug")
        if abs(x.max() - 0.4) < 0.01:
            raise UserError("cannot read /srv/secret/cats/train.npz")
        return 1 - x


def _ready(client) -> dict:
    """/healthz once warm-up has ended (200, or 503 "failed")."""
    wait_for(lambda: client.get("/healthz").json()["status"] != "warming")
    return client.get("/healthz").json()


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_a_failed_sampler_is_reported_and_the_others_served():
    """A sampler whose warm-up raises (anything) is listed under "failed" with one line of why,
    "auto" falls back to the next one, and the server becomes ready; before, the warm-up error
    left /healthz at 503 for good. No reason shows the server's paths."""
    from fastapi.testclient import TestClient

    from catvae_jax.serve.app import create_app

    broken = {"flow": EOFError("truncated /srv/run/flow_7.npz"), "gmm": UserError("no /srv/x")}
    model = _StandIn(broken, flow=True)
    model.release.set()
    with TestClient(create_app("unused", model=model)) as client:
        health = _ready(client)
        assert health["status"] == "degraded" and health["auto"] == "prior", health
        assert health["samplers"] == ["auto", "prior"]
        assert health["failed"] == {"flow": "EOFError: truncated <path>", "gmm": "no <path>"}
        assert model.calls == ["flow", "gmm", "prior"]  # each tried once, in auto's order
        for sampler in ("gmm", "flow"):
            r = client.get("/grid.png", params={"n": 2, "sampler": sampler})
            assert r.status_code == 503 and "sampler is unavailable" in r.json()["error"]
            assert "/srv" not in r.text
        assert client.get("/grid.png?n=2&sampler=auto").status_code == 200
        assert 'value="gmm"' not in client.get("/").text and 'value="prior"' in client.get("/").text
    # One that fails on its first request (not used by auto, so not tried at warm-up).
    model = _StandIn({"gmm": np.linalg.LinAlgError("singular")}, flow=True)
    model.release.set()
    with TestClient(create_app("unused", model=model)) as client:
        assert _ready(client)["status"] == "ok" and _ready(client)["auto"] == "flow"
        r = client.get("/grid.png?n=2&sampler=gmm")
        assert r.status_code == 503 and r.json()["error"].endswith("LinAlgError: singular")
        assert _ready(client)["failed"] == {"gmm": "LinAlgError: singular"}
        assert client.get("/grid.png?n=2&sampler=gmm").status_code == 503  # not retried
        assert model.calls.count("gmm") == 1


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_auto_is_the_measured_choice_first_then_the_fixed_order():
    """ "auto" serves what `generate` draws for it: the checkpoint's measured choice (here gmm,
    though a flow is fitted); a chosen sampler that fails falls back to the fixed order."""
    from fastapi.testclient import TestClient

    from catvae_jax.serve.app import create_app

    model = _StandIn(flow=True, chosen="gmm")
    model.release.set()
    with TestClient(create_app("unused", model=model)) as client:
        assert _ready(client)["auto"] == "gmm" and model.calls == ["gmm"]
    model = _StandIn({"gmm": UserError("no data")}, flow=True, chosen="gmm")
    model.release.set()
    with TestClient(create_app("unused", model=model)) as client:
        health = _ready(client)
        assert health["auto"] == "flow" and model.calls == ["gmm", "flow"]
        assert health["failed"] == {"gmm": "no data"}
    # None works: failed, with each sampler's reason, and no grid.
    model = _StandIn({s: RuntimeError(f"{s} is broken") for s in ("gmm", "prior")})
    model.release.set()
    with TestClient(create_app("unused", model=model)) as client:
        health = _ready(client)
        assert client.get("/healthz").status_code == 503
        assert health == {
            "status": "failed",
            "error": "no sampler works",
            "failed": {
                "gmm": "RuntimeError: gmm is broken",
                "prior": "RuntimeError: prior is broken",
            },
        }
        assert client.get("/grid.png?n=2").status_code == 503


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_an_error_of_the_servers_own_state_keeps_its_paths():
    """A UserError inside a request comes from the server's state (the routes check the request
    themselves): it was a 400 that showed the server's path; now a generic 500, logged."""
    from fastapi.testclient import TestClient

    from catvae_jax.serve.app import create_app

    model = _StandIn()
    model.release.set()
    with TestClient(create_app("unused", model=model)) as client:
        _ready(client)
        grey = png_of(np.full((4, 4, 3), 102, np.uint8))
        r = client.post("/reconstruct", files={"file": ("grey.png", grey)})
        assert r.status_code == 500 and "/srv" not in r.text, r.text
        assert r.json()["error"] == "the server cannot serve this request now; its log says why"
        assert metric(client, "catvae_unhandled_exceptions_total") == 0  # not a bug


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_warming_and_the_catch_all():
    from fastapi.testclient import TestClient

    from catvae_jax.serve.app import create_app

    with pytest.raises(UserError, match="default_n"):
        create_app("unused", max_n=8, default_n=16, model=_StandIn())
    for mb in (float("inf"), float("nan"), -1.0):
        with pytest.raises(UserError, match="max_upload_mb must be a positive number"):
            create_app("unused", max_upload_mb=mb, model=_StandIn())
    broken = _StandIn()
    broken.reconstruct = None  # warm-up calls it: a TypeError, as a bug would raise
    broken.release.set()
    with TestClient(create_app("unused", model=broken)) as client:
        deadline = time.monotonic() + 30
        while client.get("/healthz").json()["status"] == "warming" and time.monotonic() < deadline:
            time.sleep(0.05)
        r = client.get("/healthz")
        assert r.status_code == 503 and r.json()["status"] == "failed"
        assert r.json()["error"].startswith("TypeError")
    documented = _StandIn()
    documented.release.set()
    with TestClient(create_app("unused", model=documented, api_docs=True)) as client:
        assert client.get("/docs").status_code == 200  # off unless asked (/docs: 404 above)
        assert "/grid.png" in client.get("/openapi.json").json()["paths"]
    model = _StandIn()
    with TestClient(create_app("unused", model=model), raise_server_exceptions=False) as client:
        r = client.get("/healthz")
        assert r.status_code == 503 and r.json() == {"status": "warming"}
        warming = metric(
            client, "catvae_request_errors_total", endpoint="/healthz", kind="unavailable"
        )
        assert warming >= 1  # a 503 while warming is not a server error
        assert (
            metric(client, "catvae_request_errors_total", endpoint="/healthz", kind="server") == 0
        )
        r = client.get("/grid.png?n=2")
        assert r.status_code == 503 and r.headers["retry-after"] == "2" and r.json()["error"]
        model.release.set()
        deadline = time.monotonic() + 30
        while client.get("/healthz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.get("/healthz").json()["step"] == 7
        assert "(4×4 px, checkpoint step 7)" in client.get("/").text
        r = client.get("/grid.png?n=3&seed=1")  # 2 × 2 tiles of 4 px, each 0.5 grey
        assert r.status_code == 200 and r.headers["x-seed"] == "1"
        assert decode(r.content).shape == (14, 14, 3) and decode(r.content)[2, 2, 0] == 128
        wide = png_of(np.full((3, 6, 3), 51, np.uint8))
        r = client.post("/reconstruct", files={"file": ("wide.png", wide)})
        assert r.headers["x-resized"] == "6x3 centre-cropped to 3x3, resized to 4x4"
        assert tuple(decode(r.content)[2, 2:9:6, 0]) == (51, 204)  # the input, then 1 - input
        white = png_of(np.full((4, 4, 3), 255, np.uint8))
        r = client.post("/reconstruct", files={"file": ("white.png", white)})
        assert r.status_code == 500 and r.json()["error"].startswith("internal error")
        assert metric(client, "catvae_unhandled_exceptions_total") == 1
        errors = metric(
            client, "catvae_request_errors_total", endpoint="/reconstruct", kind="server"
        )
        assert errors == 1  # the 500 above; 503s while warming are other endpoints
