"""One writer per workdir (catvae_jax/train/lock.py): acquire and release, a second live holder
refused in one line, a dead holder's lock taken over, and the heartbeat of a remote lock."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO

from catvae_jax.errors import UserError
from catvae_jax.train import lock as lock_lib
from catvae_jax.train.lock import WorkdirLock

_HOLD = """
import sys
from catvae_jax.train.lock import WorkdirLock
WorkdirLock(sys.argv[1], "import_torch").acquire()
print("held", flush=True)
sys.stdin.read()
"""


def _holder(lock_file) -> dict:
    return json.loads(lock_file.read_text())


def test_acquire_writes_the_holder_and_release_empties_the_file(tmp_path):
    lock = WorkdirLock(tmp_path, "import_torch")
    lock.acquire()
    holder = _holder(tmp_path / ".lock")
    assert holder["pid"] == os.getpid() and holder["what"] == "import_torch"
    assert set(holder) == {"host", "pid", "started", "what"}
    lock.release()
    lock.release()  # idempotent
    assert (tmp_path / ".lock").read_text() == ""  # emptied, never deleted (local)
    with WorkdirLock(tmp_path) as again:  # free for the next writer
        assert _holder(tmp_path / ".lock")["what"] == "training"
    assert again._fd is None


def test_a_second_holder_is_refused_in_one_line_naming_the_first(tmp_path):
    with WorkdirLock(tmp_path, "training"):
        before = (tmp_path / ".lock").read_text()
        with pytest.raises(UserError) as refused:
            WorkdirLock(tmp_path, "import_torch").acquire()
        message = str(refused.value)
        assert "\n" not in message
        assert message.startswith(f"workdir {tmp_path} is in use by training (pid {os.getpid()}")
        assert "use another --workdir" in message
        assert (tmp_path / ".lock").read_text() == before  # the refused writer changed nothing


def test_a_lock_held_by_another_process_is_refused_until_that_process_dies(tmp_path):
    child = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(tmp_path)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline() == "held\n"
        with pytest.raises(UserError, match=rf"in use by import_torch \(pid {child.pid} on host"):
            WorkdirLock(tmp_path).acquire()
    finally:
        child.send_signal(signal.SIGKILL)  # no release: the kernel drops the flock
        child.wait(timeout=30)
    assert _holder(tmp_path / ".lock")["pid"] == child.pid  # the dead holder's file is left
    with WorkdirLock(tmp_path):  # ... and taken over
        assert _holder(tmp_path / ".lock")["pid"] == os.getpid()


def test_a_missing_workdir_is_one_line(tmp_path):
    missing = tmp_path / "no-such-folder"
    with pytest.raises(UserError) as refused:
        WorkdirLock(missing).acquire()
    assert str(refused.value) == f"cannot write {missing / '.lock'}: No such file or directory"


@pytest.fixture
def remote(monkeypatch):
    """The lock takes its remote (object store) path: no flock, a heartbeat in the file."""
    monkeypatch.setattr(lock_lib, "_is_remote", lambda path: True)
    monkeypatch.setattr(lock_lib, "HEARTBEAT_S", 0.02)
    return monkeypatch


def _wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def test_a_held_remote_lock_beats_and_its_release_stops_the_beat(tmp_path, remote):
    path = tmp_path / ".lock"
    lock = WorkdirLock(tmp_path)
    # Read as a second writer reads it (lock._parse): the simulated remote file is rewritten in
    # place, so a read can fall mid-write and see it empty (an object store's writes are atomic).
    beat = lambda: lock_lib._parse(path.read_bytes()).get("heartbeat", 0.0)
    lock.acquire()
    seen = set()  # the heartbeats read (0: a read that fell mid-write)
    assert _wait_for(lambda: seen.add(beat()) or len(seen - {0.0}) >= 2)  # it moved on
    thread = lock._thread
    assert thread is not None and thread.is_alive()
    lock.release()
    assert not thread.is_alive() and not path.exists()  # remote: removed on release
    time.sleep(0.1)
    assert not path.exists()  # no beat after the release writes it back


def test_a_failing_beat_is_retried_not_fatal(tmp_path, remote):
    lock = WorkdirLock(tmp_path)
    lock.acquire()
    beats = []

    def flaky_beat():
        beats.append(time.monotonic())
        if len(beats) == 1:
            raise OSError("storage unreachable")

    remote.setattr(lock, "_beat", flaky_beat)
    assert _wait_for(lambda: len(beats) >= 3)  # the thread survived the failed beat
    lock.release()


def test_a_remote_lock_is_refused_while_fresh_and_taken_over_when_stale(tmp_path, remote):
    path = tmp_path / ".lock"
    beat = time.time() - lock_lib.STALE_S + 60  # a minute before it would go stale
    path.write_text(json.dumps({"host": "h2", "pid": 9, "what": "training", "heartbeat": beat}))
    with pytest.raises(UserError, match=r"in use by training \(pid 9 on host h2, started \?\)"):
        WorkdirLock(tmp_path).acquire()
    remote.setattr(lock_lib, "STALE_S", 30.0)  # now the same heartbeat is stale
    with WorkdirLock(tmp_path):
        holder = _holder(path)
        assert holder["pid"] == os.getpid() and holder["heartbeat"] > beat


def test_a_damaged_remote_lock_file_is_taken_over(tmp_path, remote):
    (tmp_path / ".lock").write_bytes(b"\xff not json")
    with WorkdirLock(tmp_path):
        assert _holder(tmp_path / ".lock")["pid"] == os.getpid()
