"""What every command-line entry point shares: one-line user errors with exit code 2."""

from __future__ import annotations

import contextlib
import pathlib
import re
import sys
from collections.abc import Callable

from absl import flags

from catvae_jax.errors import UserError, exit_with


def config_file(name: str) -> str:
    """Absolute path of `configs/NAME` in this source checkout, so that a default --config
    works from any directory."""
    return str(pathlib.Path(__file__).resolve().parents[1] / "configs" / name)


def run_app(
    main: Callable[[list[str]], None],
    define_flags: Callable[[], None] | None = None,
    positional: bool = False,
) -> None:
    """Runs an absl command: defines its flags, parses them (errors: one line, exit 2), keeps
    INFO logs quiet and calls `main(argv)`. Positional arguments are an error unless
    `positional`."""
    from absl import app

    if define_flags is not None:
        define_flags()

    def run(argv: list[str]) -> None:
        if len(argv) > 1 and not positional:
            fail(f"unexpected arguments: {' '.join(argv[1:])}")
        quiet_logs()
        main(argv)

    app.run(run, flags_parser=parse_flags)


def fail(message: str) -> None:
    """Prints `error: message` on one line and exits with code 2."""
    exit_with(message, 2)


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing that turns any flag or config-override error into one line, exit 2."""
    try:
        rest = flags.FLAGS(argv)
        if "config" in flags.FLAGS:  # config files load lazily: load it now, inside the try
            flags.FLAGS["config"].value.keys()
        return rest
    except (KeyError, AttributeError) as e:  # an override of a field the config does not have
        key = str(e.__context__ or e).strip("'\"")
        overrides = [a[2:].split("=")[0] for a in argv if a.startswith("--config.")]
        field = next((o[len("config.") :] for o in overrides if key in o.split(".")), key)
        fail(f"unknown config field '{field}'")
    except OSError:
        path = flags.FLAGS["config"].serialize().split("=", 1)[-1]
        fail(f"cannot load config file '{path}'")
    except (flags.Error, TypeError, ValueError) as e:
        fail(_first_line(e))
    return []


def _first_line(e: BaseException) -> str:
    text = str(e).strip().strip('"').strip("'")
    bad = re.match(r"flag --config\.([\w.]+)=(.*?): (.*)", text, re.S)
    if bad:  # a value of the wrong type for a config field
        return f"config field '{bad[1]}' cannot take the value {bad[2]!r}: {bad[3].splitlines()[0]}"
    text = re.sub(r"\s+", " ", text)
    return text[:300] or type(e).__name__


@contextlib.contextmanager
def user_errors():
    """Turns UserError into a one-line message with exit code 2, and a diverged run into
    a last line naming the step with exit code 1."""
    from catvae_jax.errors import StorageError
    from catvae_jax.train import NonFiniteError, Preempted

    try:
        yield
    except UserError as e:
        fail(str(e))
    except NonFiniteError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        print(f"stopped: non-finite loss at step {e.step}", flush=True)
        sys.exit(1)
    except StorageError as e:  # an environment failure: the disk, not the user
        print(
            f"error: {e}; the last complete checkpoint is intact, re-run to resume",
            file=sys.stderr,
            flush=True,
        )
        sys.exit(1)
    except Preempted as e:
        print(f"stopped: {e}", flush=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:  # Ctrl-C outside a training loop
        print("stopped: interrupted", file=sys.stderr, flush=True)
        sys.exit(130)


def quiet_logs() -> None:
    """Keeps absl/JAX/Orbax INFO chatter off the terminal; warnings still show."""
    from absl import logging

    logging.set_verbosity(logging.WARNING)


def init_distributed(
    coordinator: str | None, num_processes: int | None, process_id: int | None
) -> None:
    """Joins a multi-process (multi-host) run before anything else touches JAX.

    Flags win over the environment variables JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
    JAX_PROCESS_ID. Nothing happens for a single-process run. On CPU the collectives use gloo.
    """
    import os

    coordinator = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS")
    env_n, env_id = os.environ.get("JAX_NUM_PROCESSES"), os.environ.get("JAX_PROCESS_ID")
    num_processes = num_processes or _env_int("JAX_NUM_PROCESSES", env_n)
    process_id = process_id if process_id is not None else _env_int("JAX_PROCESS_ID", env_id)
    if not coordinator and not num_processes:
        return
    if not (coordinator and num_processes and process_id is not None):
        fail("a multi-process run needs --coordinator, --num_processes and --process_id")
    if not 0 <= process_id < num_processes:
        fail(f"--process_id must be in [0, {num_processes}), got {process_id}")
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, num_processes, process_id)


def _env_int(name: str, value: str | None) -> int | None:
    """An integer environment variable, None when unset; a one-line error when not a number."""
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        fail(f"{name} must be an integer, got '{value}'")
