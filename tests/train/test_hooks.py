"""What the training loop consults besides its steps (catvae_jax/train/hooks.py): the SIGTERM /
Ctrl-C notice, the profiler and the progress bar."""

from __future__ import annotations

import os
import signal
import threading

import jax
import pytest
from conftest import tiny_config

from catvae_jax.train import hooks


@pytest.fixture
def handlers():
    """The SIGTERM and SIGINT handlers before the test; put back after it whatever happens."""
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    yield before
    for signum, handler in before.items():
        signal.signal(signum, handler)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_becomes_a_flag_and_the_handlers_come_back(handlers, signum):
    notice = hooks.PreemptionNotice()
    try:
        assert not notice.reached(0)
        os.kill(os.getpid(), signum)  # delivered to the main thread before kill returns
        assert notice.reached(1) and notice.flag and notice.signum == signum
    finally:
        notice.restore()
    assert {s: signal.getsignal(s) for s in handlers} == handlers
    assert notice.previous == {}
    notice.restore()  # twice: nothing left to restore


def test_off_the_main_thread_no_handler_is_installed(handlers):
    made = []
    thread = threading.Thread(target=lambda: made.append(hooks.PreemptionNotice()))
    thread.start()
    thread.join()
    assert made[0].previous == {} and not made[0].reached(0)
    assert {s: signal.getsignal(s) for s in handlers} == handlers


@pytest.fixture
def traces(monkeypatch):
    """The jax.profiler calls the Profiler makes, recorded instead of run."""
    calls = []
    monkeypatch.setattr(jax.profiler, "start_trace", lambda logdir: calls.append(("start", logdir)))
    monkeypatch.setattr(jax.profiler, "stop_trace", lambda: calls.append(("stop",)))
    return calls


def test_a_disabled_profiler_is_a_no_op(tmp_path, traces):
    profiler = hooks.Profiler(tmp_path / "profile", start=0, enabled=False)
    profiler.before(0)
    profiler.after(10, {})
    profiler.stop()
    assert traces == [] and not profiler.active
    assert not (tmp_path / "profile").exists()


@pytest.mark.parametrize("steps_per_call", [1, 2])
def test_an_enabled_profiler_traces_its_steps_only(tmp_path, traces, capsys, steps_per_call):
    """The loop's calls: before(steps done), a call of `steps_per_call` steps, after(steps
    done). Tracing starts with the first call from step index 3 on and stops after the call
    that makes num_steps=2 traced steps: whole calls, once."""
    logdir = tmp_path / "profile"
    profiler = hooks.Profiler(logdir, start=3, enabled=True, num_steps=2)
    traced, done = [], 0
    while done < 12:
        profiler.before(done)
        if profiler.active:
            traced.extend(range(done, done + steps_per_call))
        done += steps_per_call
        profiler.after(done, {"loss": jax.numpy.ones(())})
    assert traces == [("start", str(logdir)), ("stop",)]
    assert traced == ([3, 4] if steps_per_call == 1 else [4, 5])
    assert not profiler.active and profiler.done
    profiler.stop()  # the loop's closer stops it again: nothing more is written
    assert traces == [("start", str(logdir)), ("stop",)]
    assert capsys.readouterr().out == f"profile trace written to {logdir}\n"


@pytest.mark.parametrize(
    ("enabled", "in_config", "shown"),
    [(True, True, True), (True, False, False), (False, True, False)],
)
def test_the_progress_bar_shows_only_when_asked_on_process_0(enabled, in_config, shown):
    config = tiny_config()
    config.progress_bar = in_config
    bar = hooks.progress_bar(config, total=12, initial=5, enabled=enabled)
    try:
        assert bar.disable is not shown
        assert (bar.total, bar.n) == (12, 5)
        bar.update(2)
        assert bar.n == (7 if shown else 5)  # a disabled bar counts nothing
    finally:
        bar.close()
