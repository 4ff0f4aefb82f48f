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


def _step(state, batch):
    return state + batch, {"loss": state}


def test_a_disabled_profiler_is_a_no_op(tmp_path, traces):
    profiler = hooks.Profiler(tmp_path / "profile", start=0, enabled=False)
    assert profiler.wrap(_step, first_step=0) is _step
    profiler.before(0)
    profiler.after(10, {})
    profiler.stop()
    assert traces == [] and not profiler.active
    assert not (tmp_path / "profile").exists()


def test_an_enabled_profiler_traces_its_steps_only(tmp_path, traces, capsys):
    logdir = tmp_path / "profile"
    profiler = hooks.Profiler(logdir, start=3, enabled=True, num_steps=2)
    step = profiler.wrap(_step, first_step=1)
    seen = []
    for i in range(1, 8):  # train steps 1..7: traced while running steps 3 and 4
        step(i, 0)
        seen.append((i, profiler.active))
    assert traces == [("start", str(logdir)), ("stop",)]
    assert [i for i, active in seen if active] == [3]  # stops after step 4 returns
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
