"""Shared fixtures: a tiny config and one tiny trained workdir that many tests reuse."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import struct
import subprocess
import sys
import tempfile
import zlib

import pytest

# Compiled programs are shared between tests and test subprocesses through JAX's persistent cache
# (JAX_COMPILATION_CACHE_DIR overrides its place, e.g. an empty directory to time a cold run).
# Every program is cached, however fast it compiled: each CLI subprocess otherwise recompiles
# some 40 small programs (~0.06 s each), about 1 s of every tiny training run.
_CACHE = os.path.join(tempfile.gettempdir(), "catvae_jax_test_jax_cache")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("WANDB_MODE", "disabled")

import jax  # noqa: E402

jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update(
    "jax_persistent_cache_min_compile_time_secs",
    float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]),
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config():
    """resvae at 16×16 on 96 synthetic cats: a few seconds per epoch on one CPU core."""
    from catvae_jax.config import get_config

    c = get_config()
    c.seed = 0
    c.image_size = 16
    c.batch_size = 8
    c.learning_rate = 3e-3
    c.num_epochs = 3
    c.model.z_dim = 8
    c.model.widths = (8, 16)
    c.loss.kl_warmup_steps = 10
    c.data.num_train = 96
    c.data.num_validation = 16
    c.data.num_test = 16
    c.log_every_steps = 4
    c.num_eval_images = 4
    c.wandb.mode = "disabled"
    c.progress_bar = False
    c.validation_pictures = False  # drawn in tests/train/test_report.py; here ~2 s of each run
    # The end-of-training sampler choice (AlexNet and VGG16 on 128² resizes): tested apart, in
    # tests/evaluation/test_sampler_choice.py; `auto` keeps its fixed order in the tiny run.
    c.choose_sampler = False
    return c


@pytest.fixture
def config():
    return tiny_config()


@pytest.fixture
def disk_fills_up(monkeypatch):
    """From here on every etils.epath `write_bytes` writes half its data, then fails as a full
    disk does (an OSError with errno ENOSPC that names no file)."""
    from etils import epath

    def write_bytes(self, data: bytes) -> int:
        with self.open("wb") as f:
            f.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(type(epath.Path("/")), "write_bytes", write_bytes)


@pytest.fixture(scope="session")
def trained_workdir(tmp_path_factory):
    """One tiny run (3 epochs × 12 steps) that output, load and resume tests read: trained once
    per session and shared by all pytest-xdist workers, so tests read it in place and one that
    writes into it (a cache, a damaged checkpoint, a resumed run) copies it first."""
    return train_once(tmp_path_factory, "tiny", tiny_config)


def train_once(tmp_path_factory, name: str, make_config) -> tuple:
    """(workdir, result) of train_and_evaluate(make_config()) in a directory of this session,
    trained by the first pytest-xdist worker that asks (the others wait on a file lock, then
    read its result), so that the workers do not each train the same run."""
    from catvae_jax.after_training import train_and_evaluate

    if "PYTEST_XDIST_WORKER" not in os.environ:  # one process: nothing to share
        root = tmp_path_factory.mktemp("run")
    else:  # the basetemp of each worker is <session tmp>/popen-gwN: its parent is shared
        root = tmp_path_factory.getbasetemp().parent / "shared_runs"
        root.mkdir(exist_ok=True)
    workdir, done = root / name, root / f"{name}.json"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not done.exists():
            result = train_and_evaluate(make_config(), str(workdir))
            done.write_text(json.dumps(result, default=float))
    return workdir, json.loads(done.read_text())


def main_cmd(workdir, *flags: str) -> list[str]:
    """The `python -m catvae_jax.main` command line for configs/quickstart.py plus `flags`."""
    main = [sys.executable, "-m", "catvae_jax.main", "--config", "configs/quickstart.py"]
    return [*main, "--workdir", str(workdir), *flags]


def subprocess_env(env: dict | None = None, measured: bool = True) -> dict:
    """os.environ plus `env`; with `measured=False` without coverage's subprocess hook (the
    COVERAGE_PROCESS_CONFIG that `[tool.coverage.run] patch = ["subprocess"]` sets). Coverage
    traces every Python call, which makes a subprocess that traces and compiles JAX programs
    ~45 % slower (a tiny training run: ~8.5 s -> ~12.5 s): the long multi-run tests (two
    processes, SIGKILL resume, sweep workers, the 8-device step, the notebook) run unmeasured,
    since in-process and shorter CLI tests measure the same code."""
    full_env = {**os.environ, **(env or {})}
    if not measured:
        full_env.pop("COVERAGE_PROCESS_CONFIG", None)
    return full_env


_SERVERS: dict[bool, _CliServer] = {}  # measured → the server


class _CliServer:
    """tests/cli_batch.py, started once per pytest worker (and measured or not): runs command
    lines in children it forks, so that each skips the ~2 s (~5 s under coverage) of imports."""

    def __init__(self, measured: bool):
        path = os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p)
        self.errors = tempfile.TemporaryFile("w+")  # noqa: SIM115 (as long as the server lives)
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(REPO, "tests", "cli_batch.py")], cwd=REPO,
            env=subprocess_env({"PYTHONPATH": path}, measured), stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self.errors, text=True,
        )  # fmt: skip

    @classmethod
    def of(cls, measured: bool) -> _CliServer:
        server = _SERVERS.get(measured)
        if server is None or server.proc.poll() is not None:
            server = _SERVERS[measured] = cls(measured)
        return server

    def run(self, jobs: list[dict], cwd: str, timeout: float) -> list[dict]:
        self.proc.stdin.write(json.dumps({"cases": jobs, "cwd": cwd, "timeout": timeout}) + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        if not answer:  # the server died: say why
            self.proc.wait()
            self.errors.seek(0)
            raise AssertionError(f"tests/cli_batch.py ended: {self.errors.read()[-3000:]}")
        return json.loads(answer)

    @classmethod
    def stop_all(cls) -> None:
        for server in _SERVERS.values():
            server.proc.stdin.close()
            server.proc.wait(timeout=60)
        _SERVERS.clear()


def pytest_sessionfinish(session, exitstatus) -> None:
    _CliServer.stop_all()  # the servers' own coverage data is written as they exit


def run_cli(
    *args: str, env: dict | None = None, timeout: int = 300, measured: bool = True
) -> subprocess.CompletedProcess:
    """Runs `python -m <args>` in the repository root and captures its output (in a child of
    tests/cli_batch.py: raises subprocess.TimeoutExpired after `timeout` seconds, as
    subprocess.run would)."""
    (proc,) = run_cli_cases([(args[0], args[1:], env or {})], timeout=timeout, measured=measured)
    return proc


def run_cli_cases(
    cases: list[tuple],
    cwd: str = REPO,
    timeout: int = 600,
    measured: bool = True,
    parse_only: bool = False,
    preload: tuple[str, ...] = (),
) -> list[subprocess.CompletedProcess]:
    """Runs each case `(module, *args)` or `(module, args, env)` as `python -m module args` in
    `cwd` with os.environ plus env, each in a child forked by tests/cli_batch.py after the heavy
    imports. `timeout`: seconds per case. `parse_only`: each command only parses its flags and
    config (exit 0 when they are valid) and runs nothing. `preload`: modules the server imports
    before forking (e.g. "sklearn.mixture" when the cases fit a gmm; each would import it
    again, ~1 s under coverage)."""
    jobs = []
    for case in cases:
        if len(case) == 3 and isinstance(case[1], (list, tuple)):
            module, args, env = case
        else:
            module, args, env = case[0], case[1:], {}
        env = subprocess_env(env, measured)
        args = [str(a) for a in args]
        jobs.append(
            dict(module=module, args=args, env=env, parse_only=parse_only, preload=list(preload))
        )
    results = _CliServer.of(measured).run(jobs, str(cwd), timeout)
    procs = []
    for job, r in zip(jobs, results, strict=True):
        cmd = [sys.executable, "-m", job["module"], *job["args"]]
        if r.pop("timed_out"):
            raise subprocess.TimeoutExpired(cmd, timeout, r["stdout"], r["stderr"])
        procs.append(subprocess.CompletedProcess(cmd, **r))
    return procs


def run_python(
    code: str, env: dict | None = None, timeout: int = 600, measured: bool = True
) -> subprocess.CompletedProcess:
    """Runs `python -c code` in the repository root (e.g. with XLA_FLAGS set before JAX starts)."""
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=subprocess_env(env, measured),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def bomb_png(width: int = 30_000, height: int = 30_000) -> bytes:
    """A PNG of under 100 bytes whose header declares width × height 1-bit pixels (a
    decompression bomb: decoded it would be gigabytes); never decoded by the tests."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


# The files that take longest (trainings in subprocesses, sweeps), longest first, from a suite
# run's --durations: collected first, so that with `--dist loadfile --no-loadscope-reorder`
# (make test) they start first and the short files fill in at the end, rather than one long file
# running alone while the other worker idles. The others keep pytest's order.
_LONG_FIRST = (
    "tests/sweep/test_study.py",
    "tests/e2e/test_reliability.py",
    "tests/e2e/test_scale.py",
    "tests/priors/test_sampler_files.py",
    "tests/e2e/test_outputs.py",
    "tests/train/test_init_from.py",
    "tests/train/test_adversarial.py",
    "tests/evaluation/test_sampler_choice.py",
    "tests/train/test_steps_per_call.py",
    "tests/evaluation/test_sample_quality.py",
    "tests/e2e/test_train.py",
    "tests/e2e/test_faults.py",
    "tests/serve/test_app.py",
    "tests/evaluation/test_likelihood.py",
    "tests/e2e/test_compile_cache.py",
    "tests/train/test_report.py",
)


def pytest_collection_modifyitems(config, items) -> None:
    def rank(item) -> int:
        path = item.nodeid.split("::")[0]
        return _LONG_FIRST.index(path) if path in _LONG_FIRST else len(_LONG_FIRST)

    items.sort(key=rank)  # stable: the order within a rank is pytest's
