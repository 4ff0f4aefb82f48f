"""Runs `python -m catvae_jax.<command> ARGS` cases as the command line would, but each in a
child forked from one interpreter that has already imported the heavy libraries.

A command-line start costs ~2 s of imports (~5 s under coverage's tracer); a forked child
starts in well under one. conftest.run_cli and conftest.run_cli_cases start one such server per
pytest worker (one measured by coverage, one not) and keep it for the session: each request is
one line of JSON on stdin, {"cases": [...], "cwd": DIR, "timeout": SECONDS}, each case
{"module", "args", "env", "parse_only", "preload"}; the answer is one line of JSON on stdout, a
list of {"returncode", "stdout", "stderr", "timed_out"}. `preload`: modules to import before
forking (and kept), e.g. sklearn.mixture for cases that fit a gmm. A `parse_only` case stops
with exit code 0 once its flags and config parsed (errors are still the command's own one line,
exit 2): nothing runs. The server never starts a JAX backend, so a case's XLA_FLAGS (e.g. a
simulated device count) still apply in its child, and it never runs a command itself, so every
child starts from the same state.
"""

from __future__ import annotations

import importlib
import json
import os
import runpy
import signal
import sys
import tempfile
import time
import traceback

# Library modules only: a command module imported here would define its absl flags twice when
# the child runs it as __main__.
import fastapi  # noqa: F401  (serve)
import tensorflow_datasets  # noqa: F401  (data)

import catvae_jax.cli
import catvae_jax.inference
import catvae_jax.train.loop

# Imported before forking only once a case needs them: each costs ~1 s of every case that
# imports it itself (optuna and matplotlib for the sweep), and nothing after the first.
NEEDS = {
    "catvae_jax.sweep": ("catvae_jax.sweep.study",),
    "catvae_jax.serve": ("catvae_jax.serve.app", "uvicorn"),
}


def _child(case: dict, cwd: str, out: str, err: str) -> None:
    """Runs one case in this (forked) process and leaves with its exit code."""
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)  # the server's requests are not the command's
    for fd, path in ((1, out), (2, err)):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    os.chdir(cwd)
    os.environ.clear()  # the environment the test asked for: os.environ of its time + env
    os.environ.update(case["env"])
    if case.get("parse_only"):  # cli.run_app calls quiet_logs once the flags parsed, before main
        catvae_jax.cli.quiet_logs = lambda: sys.exit(0)
    sys.argv = [case["module"], *case["args"]]
    code = 0
    try:
        runpy.run_module(case["module"], run_name="__main__", alter_sys=True)
    except SystemExit as e:  # what the interpreter would make of it
        if isinstance(e.code, int) or e.code is None:
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # coverage's `_exit` patch saves the child's data first


def _wait(pid: int, timeout: float) -> tuple[int, bool]:
    """(exit code, timed out?) of child `pid`, killed after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status), False
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            return os.waitstatus_to_exitcode(status), True
        time.sleep(0.02)


def run_cases(cases: list[dict], cwd: str, timeout: float) -> list[dict]:
    """Each case in its own forked child, one after another: their results."""
    needed = {name for case in cases for name in case.get("preload", ())}
    needed |= {name for case in cases for name in NEEDS.get(case["module"], ())}
    for name in sorted(needed):
        importlib.import_module(name)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, case in enumerate(cases):
            out, err = os.path.join(tmp, f"{i}.out"), os.path.join(tmp, f"{i}.err")
            pid = os.fork()
            if pid == 0:
                _child(case, cwd, out, err)
            code, timed_out = _wait(pid, timeout)
            with open(out) as o, open(err) as e:
                results.append(
                    {"returncode": code, "stdout": o.read(), "stderr": e.read(),
                     "timed_out": timed_out}
                )  # fmt: skip
    return results


def main() -> None:
    channel = os.fdopen(os.dup(1), "w")  # the answers; the children's fd 1 is their own
    for line in sys.stdin:
        request = json.loads(line)
        results = run_cases(request["cases"], request["cwd"], request["timeout"])
        channel.write(json.dumps(results) + "\n")
        channel.flush()


if __name__ == "__main__":
    main()
