"""Runs many `python -m catvae_jax.<command> ARGS` cases in one interpreter: the heavy imports
once, then each case in its own child forked after them, as `python -m` would run it.

Used by conftest.run_cli_cases: the cases come as JSON on stdin, a list of
{"module", "args", "env", "parse_only"}; the results go to stdout as JSON, a list of
{"returncode", "stdout", "stderr"}. A `parse_only` case stops with exit code 0 once its flags
and config parsed (errors are still the command's own one line, exit 2): nothing runs. A
command-line start costs ~5 s of importing under coverage's tracer; a forked case costs well
under one. The parent never starts a JAX backend,
so a case's XLA_FLAGS (e.g. a simulated device count) still apply in its child.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
import tempfile
import traceback

# Library modules only: a command module imported here would define its absl flags twice when
# the child runs it as __main__.
import fastapi  # noqa: F401  (serve)
import tensorflow_datasets  # noqa: F401  (data)

import catvae_jax.cli
import catvae_jax.inference
import catvae_jax.train.loop


def _child(
    module: str, args: list[str], env: dict, out: str, err: str, parse_only: bool = False
) -> None:
    """Runs one case in this (forked) process and leaves with its exit code."""
    for fd, path in ((1, out), (2, err)):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    os.environ.update(env)
    if parse_only:  # cli.run_app calls quiet_logs once the flags parsed, right before main
        catvae_jax.cli.quiet_logs = lambda: sys.exit(0)
    sys.argv = [module, *args]
    code = 0
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
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


def main() -> None:
    cases = json.load(sys.stdin)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, case in enumerate(cases):
            out, err = os.path.join(tmp, f"{i}.out"), os.path.join(tmp, f"{i}.err")
            sys.stdout.flush()
            pid = os.fork()
            if pid == 0:
                _child(
                    case["module"], case["args"], case.get("env", {}), out, err,
                    case.get("parse_only", False),
                )  # fmt: skip
            _, status = os.waitpid(pid, 0)
            with open(out) as o, open(err) as e:
                results.append(
                    {"returncode": os.waitstatus_to_exitcode(status), "stdout": o.read(),
                     "stderr": e.read()}
                )  # fmt: skip
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
