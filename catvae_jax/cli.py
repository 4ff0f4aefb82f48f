"""What every command-line entry point shares: one-line user errors with exit code 2."""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Callable

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from catvae_jax import compile_cache, config_files
from catvae_jax import config as config_lib
from catvae_jax.errors import (
    EnvironmentFailure,
    NonFiniteError,
    Preempted,
    StorageError,
    UserError,
    exit_with,
)


def config_file(name: str) -> str:
    """The path of the shipped config `name` (e.g. "default.py"), for a default --config that
    works from any directory and in an installed wheel (`config_files.shipped`)."""
    return str(config_files.shipped(name))


def define_config_file(default: str, help_text: str, **kwargs) -> flags.FlagHolder:
    """DEFINE_config_file("config") with the shipped config `default` (e.g. "default.py").

    ml_collections loads the default and types its `--config.<field>` overrides from sys.argv
    while it defines the flag, i.e. before `parse_flags` runs: an override of a field the default
    lacks is a one-line error with exit code 2 here, not a traceback at import."""
    try:
        return config_flags.DEFINE_config_file("config", config_file(default), help_text, **kwargs)
    except Exception as e:
        fail(_override_error(e, sys.argv))
        raise  # unreachable: fail exits


def define_seed(help_text: str, default: int | None = 0) -> flags.FlagHolder:
    """DEFINE_integer("seed") bounded to [0, 2**32): a seed outside is the flag's one-line error,
    exit 2, before anything runs (not an OverflowError where the key is made)."""
    return flags.DEFINE_integer(
        "seed", default, help_text, lower_bound=0, upper_bound=config_lib.SEEDS - 1
    )


def run_app(
    main: Callable[[list[str]], None],
    define_flags: Callable[[], None] | None = None,
    positional: bool = False,
) -> None:
    """Runs an absl command: defines its flags, parses them (errors: one line, exit 2), keeps
    INFO logs quiet, turns on JAX's persistent compilation cache (`compile_cache`; off with a
    --config whose `compilation_cache` is False) and calls `main(argv)`. Positional arguments
    are an error unless `positional`."""
    if define_flags is not None:
        define_flags()

    def run(argv: list[str]) -> None:
        if len(argv) > 1 and not positional:
            fail(f"unexpected arguments: {' '.join(argv[1:])}")
        quiet_logs()
        config = flags.FLAGS["config"].value if "config" in flags.FLAGS else None
        compile_cache.enable(bool(getattr(config, "get", {}.get)("compilation_cache", True)))
        main(argv)

    app.run(run, flags_parser=parse_flags)


def plural(count: int, noun: str, plural_form: str | None = None) -> str:
    """'1 file', '2 files', '0 files' (`plural_form` for nouns not made with an s)."""
    return f"{count} {noun if count == 1 else plural_form or noun + 's'}"


def print_or_quiet(text: str) -> None:
    """Prints `text` to stdout; a reader that stops early (`| head`, `| less` quit) ends the
    command quietly, without a traceback."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        sys.exit(0)


def fail(message: str) -> None:
    """Prints `error: message` on one line and exits with code 2."""
    exit_with(message, 2)


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing that turns any flag, config-file or config-override error into one line,
    exit 2. A --config name that does not exist from here is looked up among the shipped
    configs (`config_files.resolve`)."""
    has_config = "config" in flags.FLAGS
    index, argument = _config_argument(argv) if has_config else (None, None)
    if argument is not None:
        resolved = config_files.resolve(argument)
        if index is not None and resolved != argument:
            argv = [*argv[:index], argv[index].replace(argument, resolved), *argv[index + 1 :]]
        problem = config_files.source_problem(resolved.partition(":")[0])
        if problem:
            fail(problem.replace(resolved.partition(":")[0], argument.partition(":")[0]))
    try:
        rest = flags.FLAGS(argv)
        if has_config:  # config files load lazily: load it now, inside the try
            value = flags.FLAGS["config"].value
            value.keys()
            problem = config_files.not_a_config(argument or "", value)
            if problem:
                fail(problem)
        return rest
    except Exception as e:
        problem = config_files.run_problem(config_files.resolve(argument)) if argument else None
        fail(problem or _override_error(e, argv))
    return []


def _config_argument(argv: list[str]) -> tuple[int | None, str | None]:
    """(index in argv, value) of the last --config FILE / --config=FILE; (None, the default's
    value) when argv has none."""
    found = (None, None)
    for i, arg in enumerate(argv):
        match = re.fullmatch(r"--?config(=(.*))?", arg, re.S)
        if match and match[1]:
            found = (i, match[2])
        elif match and i + 1 < len(argv):
            found = (i + 1, argv[i + 1])
    if found[0] is None:
        default = flags.FLAGS["config"].default_as_str or ""
        return None, default.strip("'") or None
    return found


def _override_error(e: Exception, argv: list[str]) -> str:
    """The one-line message of a flag or config-override error."""
    if isinstance(e, KeyError | AttributeError):  # an override of a field the config lacks
        key, suggestion = _missing_key(e)
        overrides = [a.lstrip("-").split("=")[0] for a in argv if re.match(r"--?config\.", a)]
        field = next((o[len("config.") :] for o in overrides if key in o.split(".")), key)
        if not suggestion:
            return f"unknown config field '{field}'"
        parent = field.rpartition(".")[0]
        return f"unknown config field '{field}' (did you mean '{_join(parent, suggestion)}'?)"
    return _first_line(e)


def _missing_key(e: BaseException) -> tuple[str, str | None]:
    """(the missing key, ml_collections' suggestion or None) of a KeyError / AttributeError
    raised for a field a ConfigDict lacks. Its message is the key's repr, then, when a field
    is close, a line 'Did you mean "batch_size" instead of "batchsize"?'."""
    inner = e.__context__ if isinstance(e.__context__, KeyError) else e
    text = str(inner.args[0]) if inner.args else str(inner)
    first, _, rest = text.partition("\n")
    suggestion = re.search(r'Did you mean "([^"]+)"', rest)
    return first.strip("'\""), suggestion[1] if suggestion else None


def _join(parent: str, name: str) -> str:
    return f"{parent}.{name}" if parent else name


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    if len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":  # a quoted message
        text = text[1:-1]
    text = re.sub(r"^flags (\w+=[^,:]*, )*\w+=[^,:]*: ", "", text)  # a multi-flag validator's
    bad = re.match(r"flag --config\.([\w.]+)=(.*?): (.*)", text, re.S)
    if bad:  # a value of the wrong type for a config field
        return f"config field '{bad[1]}' cannot take the value {bad[2]!r}: {bad[3].splitlines()[0]}"
    text = re.sub(r"\s+", " ", text)
    return text[:300] or type(e).__name__


OOM_HINT = (
    "lower batch_size, image_size or loss.lpips_size (--config.FIELD=VALUE); "
    "the last complete checkpoint is intact"
)


def out_of_memory(e: BaseException) -> bool:
    """Whether `e` is the host (MemoryError) or an XLA device (RESOURCE_EXHAUSTED) running out
    of memory: a config too large for this machine, not a bug."""
    return isinstance(e, MemoryError) or "RESOURCE_EXHAUSTED" in str(e)


@contextlib.contextmanager
def user_errors():
    """Turns UserError into a one-line message with exit code 2, a diverged run into a last
    line naming the step with exit code 1, and running out of host or device memory into one
    line with exit code 1."""
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
    except EnvironmentFailure as e:  # no network, an unwritable data_dir: no checkpoint involved
        exit_with(str(e), 1)
    except Preempted as e:
        print(f"stopped: {e}", flush=True)
        sys.exit(e.exit_code)
    except (MemoryError, jax.errors.JaxRuntimeError) as e:
        if not out_of_memory(e):
            raise
        detail = _first_line(e) if str(e) else "host memory"
        exit_with(f"out of memory ({detail}): {OOM_HINT}", 1)
    except KeyboardInterrupt:  # Ctrl-C outside a training loop
        print("stopped: interrupted", file=sys.stderr, flush=True)
        sys.exit(130)


def quiet_logs() -> None:
    """Keeps absl/JAX/Orbax INFO chatter off the terminal; warnings still show."""
    logging.set_verbosity(logging.WARNING)


def init_distributed(
    coordinator: str | None, num_processes: int | None, process_id: int | None
) -> None:
    """Joins a multi-process (multi-host) run before anything else touches JAX.

    Flags win over the environment variables JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
    JAX_PROCESS_ID. Nothing happens for a single-process run. On CPU the collectives use gloo.
    """
    named = "--coordinator" if coordinator else "JAX_COORDINATOR_ADDRESS"
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
    check_coordinator(coordinator, named)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, num_processes, process_id)


def check_coordinator(address: str, named: str = "--coordinator") -> None:
    """One line, exit 2, unless `address` (given as `named`) is HOST:PORT with a port in
    1–65535: jax.distributed fails on anything else with an IndexError, or a segfault."""
    host, _, port = address.rpartition(":")
    if not host or not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
        fail(f"{named} must be HOST:PORT with a port in 1-65535, got '{address}'")


def _env_int(name: str, value: str | None) -> int | None:
    """An integer environment variable, None when unset; a one-line error when not a number."""
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        fail(f"{name} must be an integer, got '{value}'")
