"""python -m catvae_jax.serve --workdir W [--host H] [--port P]: serves `create_app(W)` with
uvicorn on H:P (default 127.0.0.1:8000) until SIGTERM or Ctrl-C."""

from __future__ import annotations

import math
import re
import socket
import sys

import uvicorn
from absl import flags

from catvae_jax import cli
from catvae_jax.serve import protocol
from catvae_jax.serve.app import create_app

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines the flags of this command (called by `run`, so importing the module defines none)."""
    flags.DEFINE_string(
        "workdir", None, "Training run directory, model file (.catvae) or pretrained:NAME."
    )
    flags.DEFINE_string("step", "best", '"best", "latest" or a checkpoint number.')
    flags.DEFINE_string("host", "127.0.0.1", "Listen address (default: loopback).")
    flags.DEFINE_integer("port", 8000, "TCP port; 0 picks a free one.")
    flags.DEFINE_integer("max_n", 256, "Most images one grid may hold.")
    flags.DEFINE_integer("default_n", 64, "Grid size when n is not given.")
    flags.DEFINE_float("max_upload_mb", 10.0, "Upload size limit.")
    flags.DEFINE_integer("compute_slots", 1, "Model calls run at once.")
    flags.DEFINE_float(
        "read_timeout_s",
        protocol.DEFAULT_READ_TIMEOUT,
        "Seconds to wait for a client's next bytes (headers or body) before closing.",
    )
    flags.DEFINE_bool("api_docs", False, "Serve FastAPI's /docs, /redoc and /openapi.json.")
    levels = ["critical", "error", "warning", "info", "debug"]
    flags.DEFINE_enum("log_level", "warning", levels, "uvicorn log level.")
    flags.mark_flag_as_required("workdir")
    flags.register_validator(
        "step",
        lambda s: s in ("best", "latest") or re.fullmatch(r"[0-9]+", s) is not None,
        'must be "best", "latest" or a checkpoint number',
    )
    flags.register_validator(
        "max_upload_mb",
        lambda mb: math.isfinite(mb) and mb > 0,
        "must be a positive number of megabytes",
    )
    flags.register_validator(
        "read_timeout_s", lambda s: math.isfinite(s) and s > 0, "must be a positive number"
    )


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


def main(argv: list[str]) -> None:
    step = FLAGS.step if FLAGS.step in ("best", "latest") else int(FLAGS.step)
    sock = _listen(FLAGS.host, FLAGS.port)  # a busy port fails before the model loads
    with cli.user_errors():
        app = create_app(
            FLAGS.workdir, step, FLAGS.max_n, FLAGS.default_n, FLAGS.max_upload_mb,
            FLAGS.compute_slots, api_docs=FLAGS.api_docs,
        )  # fmt: skip
    host, port = sock.getsockname()[:2]
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    print(f"serving {FLAGS.workdir} (step {app.state.service.model.step}) at {url}", flush=True)
    config = uvicorn.Config(
        app,
        http=protocol.with_read_timeout(FLAGS.read_timeout_s),
        log_level=FLAGS.log_level,
        timeout_graceful_shutdown=5,
    )
    uvicorn.Server(config).run(sockets=[sock])


def run() -> None:
    cli.run_app(main, define_flags)


if __name__ == "__main__":
    sys.exit(run())
