"""The sweep's default storage, the journal file W/study.journal, opened after a check.

Optuna appends each record as one JSON line under a lock file. A worker killed (or a disk that
filled) mid-write leaves a torn last line, which Optuna's reader skips and its next append glues
a record onto, damaging the journal for good. `open_storage` first sets a torn tail aside, into
`study.journal.torn` with a one-line warning, and refuses a journal damaged anywhere else with
one line (UserError); the records before the damage, the study's trials so far, are never
rewritten.
"""

from __future__ import annotations

import json
import os
import sys

from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock, JournalStorage

from catvae_jax.errors import UserError

# What Optuna's replay raises for a record of the wrong shape (no op_code, a missing field,
# an unknown operation).
_REPLAY_ERRORS = (AssertionError, AttributeError, IndexError, KeyError, TypeError, ValueError)


def open_storage(path: str) -> JournalStorage:
    """The JournalStorage of the journal at `path` (made when absent), its torn tail set aside;
    UserError when a record is damaged elsewhere."""
    lock = JournalFileSymlinkLock(path)  # Optuna's write lock: no append is under way
    lock.acquire()
    try:
        damaged = set_torn_tail_aside(path)
    finally:
        lock.release()
    if damaged is not None:
        number, following = damaged
        raise UserError(
            f"{path} line {number} is damaged (not a journal record) and {following} records "
            "follow it: repair or delete that line, or move the journal aside to start the "
            "study again"
        )
    try:
        return JournalStorage(JournalFileBackend(path, lock_obj=JournalFileSymlinkLock(path)))
    except _REPLAY_ERRORS as e:
        raise UserError(
            f"{path} holds a damaged record ({type(e).__name__}: {e}): move the journal aside "
            "to start the study again"
        ) from e


def set_torn_tail_aside(path: str) -> tuple[int, int] | None:
    """Moves a damaged end of the journal (a last line without its newline, or a last line
    that is not a record) to `path`.torn and warns; returns (line number, records after it) of
    a damaged line that complete records follow, which it leaves in place, else None."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    lines = data.split(b"\n")  # the last item is what follows the last newline: a torn line
    offset = 0
    for number, line in enumerate(lines[:-1], start=1):
        if not _is_record(line):
            following = sum(_is_record(rest) for rest in lines[number:-1])
            if following:
                return number, following
            break
        offset += len(line) + 1
    tail = data[offset:]
    if tail:
        with open(f"{path}.torn", "ab") as f:  # kept, not deleted: nothing is lost
            f.write(tail if tail.endswith(b"\n") else tail + b"\n")
            f.flush()
            os.fsync(f.fileno())
        os.truncate(path, offset)
        print(
            f"warning: {path}: its last {len(tail)} bytes are not a complete record (a write "
            f"that did not finish); moved to {path}.torn",
            file=sys.stderr,
            flush=True,
        )
    return None


def _is_record(line: bytes) -> bool:
    try:
        record = json.loads(line)
    except ValueError:  # not JSON, or not UTF-8
        return False
    return isinstance(record, dict) and "op_code" in record
