"""One writer per workdir: `WorkdirLock(workdir)` is held by training and import_torch.

A second live writer is refused with a UserError naming the holder (host, pid, start time). A
lock left by a dead process never blocks:

- Local workdirs: an exclusive `flock` on WORKDIR/.lock, which the kernel releases when the
  holding process dies (SIGKILL, crash; on power loss nothing survives). The file names the
  holder for the refusal message; it is never deleted (deleting a lock file another process
  has just opened would let two writers in), only emptied on release.
- Remote workdirs (gs://, s3://, ...: no flock): best effort. WORKDIR/.lock names the holder
  and a heartbeat time that a thread rewrites every HEARTBEAT_S seconds; a lock whose heartbeat
  is older than STALE_S is stale and taken over. There is no pid check across hosts, and two
  writers starting within the same second can both get in.

Readers (load, generate, evaluate, serve, ...) take no lock: Orbax commits a checkpoint by
renaming its finished directory, so they only ever see complete ones.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import threading
import time
from typing import Any

from etils import epath

from catvae_jax.errors import UserError, failed_write

LOCK_NAME = ".lock"
HEARTBEAT_S = 30.0
STALE_S = 300.0  # a remote lock whose heartbeat is older than this is stale


def _is_remote(path: epath.Path) -> bool:
    return "://" in os.fspath(path)


class WorkdirLock:
    """Context manager: holds WORKDIR/.lock for the block; raises UserError if another live
    writer holds it. `what` ("training", "import_torch") goes into the lock file."""

    def __init__(self, workdir: str | epath.Path, what: str = "training"):
        self.path = epath.Path(workdir) / LOCK_NAME
        self.info = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "what": what,
        }
        self._fd: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> WorkdirLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def acquire(self) -> None:
        if _is_remote(self.path):
            self._acquire_remote()
        else:
            self._acquire_local()

    def _refuse(self, holder: dict) -> None:
        who = (
            f"{holder.get('what', 'a writer')} (pid {holder.get('pid', '?')} on host "
            f"{holder.get('host', '?')}, started {holder.get('started', '?')})"
        )
        workdir = self.path.parent
        raise UserError(
            f"workdir {workdir} is in use by {who}; wait for it to finish, stop it, or use "
            f"another --workdir"
        )

    def _acquire_local(self) -> None:
        try:
            fd = os.open(os.fspath(self.path), os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:  # a read-only or full workdir, found at start: exit 1
            raise failed_write(e, self.path) from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _parse(os.read(fd, 4096))
            os.close(fd)
            self._refuse(holder)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(self.info) + "\n").encode(), 0)
        except OSError as e:  # a full disk
            os.close(fd)
            raise failed_write(e, self.path) from e
        self._fd = fd

    def _acquire_remote(self) -> None:
        if self.path.exists():
            holder = _parse(self.path.read_bytes())
            age = time.time() - float(holder.get("heartbeat", 0.0))
            if holder and age < STALE_S:
                self._refuse(holder)
        self._beat()
        self._thread = threading.Thread(target=self._heartbeat, name="workdir-lock", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        self.path.write_text(json.dumps({**self.info, "heartbeat": time.time()}) + "\n")

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            with contextlib.suppress(Exception):  # transient storage error: next beat retries
                self._beat()

    def release(self) -> None:
        """Releases the lock (idempotent)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):  # e.g. a full disk: released all the same
                os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            with contextlib.suppress(Exception):  # gone, or storage unreachable: goes stale
                self.path.unlink()


def _parse(data: bytes) -> dict:
    try:
        value = json.loads(data.decode() or "{}")
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return value if isinstance(value, dict) else {}
