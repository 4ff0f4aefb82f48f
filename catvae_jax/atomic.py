"""Files written atomically (`write_atomic`, `write_npz`, `write_json`): a reader never sees
half a file, a failed write leaves no temporary file behind, and what is not a regular file (a
device such as /dev/null, a pipe, a socket) is never replaced by one."""

from __future__ import annotations

import contextlib
import io
import json
import os
import stat
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
from etils import epath

from catvae_jax.errors import UserError


def write_atomic(path: str | epath.Path, data: bytes | str) -> epath.Path:
    """Writes `data` to `path` through a temporary file and a rename; returns the path. The
    temporary name is unique, so writers racing on one path all succeed (the last rename wins)."""
    path = check_replaceable(path)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    with naming(path):
        try:
            if isinstance(data, str):
                tmp.write_text(data)
            else:
                tmp.write_bytes(data)
            tmp.replace(path)
        except BaseException:
            with contextlib.suppress(OSError):  # no half-written file left behind
                tmp.unlink(missing_ok=True)
            raise
    return path


def check_replaceable(path: str | epath.Path) -> epath.Path:
    """`path`, or a UserError when it names something other than a regular file or a folder:
    a rename onto a device, a pipe or a socket would replace it (as root, /dev/null itself)."""
    path = epath.Path(path)
    try:
        mode = os.stat(os.fspath(path)).st_mode
    except (OSError, ValueError):  # missing, unreadable or not a local path: nothing to keep
        return path
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise UserError(
            f"cannot write {path}: it is not a regular file (a device, pipe or socket), "
            "which writing here would replace; give a file name"
        )
    return path


@contextlib.contextmanager
def naming(path: epath.Path) -> Iterator[None]:
    """An OSError inside the block names `path` (a failed write() names no file)."""
    try:
        yield
    except OSError as e:
        if not e.filename and e.errno is not None:  # epath's own errors carry only a message
            e.filename = os.fspath(path)
        raise


def write_npz(path: str | epath.Path, **arrays: Any) -> epath.Path:
    """Writes `arrays` as an uncompressed .npz file, atomically; returns the path."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return write_atomic(path, buf.getvalue())


def write_json(path: str | epath.Path, obj: Any) -> epath.Path:
    """Writes `obj` as indented JSON, atomically; returns the path."""
    return write_atomic(path, json.dumps(obj, indent=2) + "\n")
