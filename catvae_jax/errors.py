"""The exceptions every command turns into one line and an exit code (`cli.user_errors`).

Library code raises :class:`UserError` for mistakes a user can fix (bad config, missing workdir,
bad value): exit 2. Training raises :class:`NonFiniteError` when the loss diverges (exit 1) and
:class:`Preempted` after SIGTERM or Ctrl-C saved a checkpoint (exit 143 or 130), and
:class:`StorageError` when the disk fills or turns unwritable (exit 1). :class:`EnvironmentFailure`
is another failure of the machine, not of the user (no network for a download, an unwritable
data_dir): exit 1. Library callers get ordinary exceptions. This module imports nothing of
catvae_jax, so every command can catch them without loading the training stack.
"""

from __future__ import annotations

import re
import signal
import sys


class UserError(ValueError):
    """A mistake in the user's input, reported as one line with exit code 2 by the CLIs."""


class Preempted(RuntimeError):
    """SIGTERM (exit code 143) or Ctrl-C / SIGINT (130) arrived: a checkpoint of `step` was
    saved and the run stopped."""

    def __init__(self, step: int, signum: int = signal.SIGTERM):
        what = "interrupted" if signum == signal.SIGINT else "preempted"
        super().__init__(f"{what} at step {step}; checkpoint saved, re-run to resume")
        self.step = step
        self.exit_code = 128 + int(signum)


class NonFiniteError(RuntimeError):
    """The loss or gradient norm became NaN/inf at `step`; the run stops (exit code 1)."""

    def __init__(self, step: int):
        super().__init__(f"non-finite loss or gradient norm at step {step}; training stopped")
        self.step = step


def exit_with(message: str, code: int = 2) -> None:
    """Prints `message` as one line on stderr and exits with `code`."""
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
    sys.exit(code)


class EnvironmentFailure(RuntimeError):
    """The machine failed the command, not the user's input (no network for a download, a
    read-only or full data_dir): one line, exit code 1, nothing partial left behind."""


class StorageError(RuntimeError):
    """Writing to the workdir failed (disk full, read-only or unwritable file system): an
    environment failure, reported as one line with exit code 1. The last complete checkpoint
    is intact and a re-run resumes from it."""


# errno values and the words TensorStore/Orbax use for them, in wrapped error messages.
_STORAGE_ERRNOS = {
    28: "No space left on device",
    30: "Read-only file system",
    13: "Permission denied",
    122: "Disk quota exceeded",
}
_STORAGE_WORDS = ("No space left on device", "Read-only file system", "Disk quota exceeded")
_PATH_IN_MESSAGE = re.compile(r'(?:writing|write|file|open) (?:local file )?"([^"]+)"', re.I)


def storage_error(e: BaseException, where: str = "the workdir") -> StorageError | None:
    """A StorageError naming the path and what failed if `e` (or an exception it wraps) is a
    failed write to a file system (full, read-only, unwritable); None otherwise. `where` names
    the place when the error itself names no file."""
    seen = 0
    while e is not None and seen < 10:
        if isinstance(e, StorageError):
            return e
        if isinstance(e, OSError) and e.errno in _STORAGE_ERRNOS:
            return StorageError(f"cannot write {e.filename or where}: {_STORAGE_ERRNOS[e.errno]}")
        text = str(e)
        code = re.search(r"os_error_code='(\d+)'", text)
        what = _STORAGE_ERRNOS.get(int(code[1])) if code else None
        what = what or next((w for w in _STORAGE_WORDS if w in text), None)
        if what:
            path = _PATH_IN_MESSAGE.search(text)
            return StorageError(f"cannot write {path[1] if path else where}: {what}")
        e, seen = e.__cause__ or e.__context__, seen + 1
    return None


def failed_write(e: BaseException, path: object) -> EnvironmentFailure | UserError:
    """What a failed write of `path` (an output file, a workdir) is for the user: an
    EnvironmentFailure (exit 1) when the file system refused it (full, read-only, no
    permission, quota), else a UserError (exit 2: a file where a folder should be, a name too
    long, ...). Both name `path`; raise the result `from e`."""
    if isinstance(e, OSError) and e.errno in _STORAGE_ERRNOS:
        return EnvironmentFailure(f"cannot write {path}: {_STORAGE_ERRNOS[e.errno]}")
    failed = storage_error(e, where=str(path))  # wrapped, e.g. by an object-store client
    if failed is not None:
        return EnvironmentFailure(str(failed))
    return UserError(f"cannot write {path}: {getattr(e, 'strerror', None) or e}")
