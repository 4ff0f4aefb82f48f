"""Atomic writes (catvae_jax/atomic.py): whole files or none, no temporary file left behind, and
an OSError that names the path it failed on."""

from __future__ import annotations

import errno
import json

import numpy as np
import pytest
from etils import epath

from catvae_jax import atomic


def _names(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_write_atomic_replaces_the_whole_file_and_returns_its_path(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old contents, longer than the new ones")
    assert atomic.write_atomic(path, b"new") == epath.Path(path)
    assert path.read_bytes() == b"new"
    atomic.write_atomic(str(path), "text ünïcode")  # str data, str path
    assert path.read_text() == "text ünïcode"
    assert _names(tmp_path) == ["out.bin"]


def test_a_write_that_fails_halfway_keeps_the_old_file_and_names_the_path(tmp_path, disk_fills_up):
    path = tmp_path / "cache.npz"
    path.write_bytes(b"complete old file")
    with pytest.raises(OSError) as failed:
        atomic.write_atomic(path, b"x" * 1000)
    assert failed.value.errno == errno.ENOSPC
    assert failed.value.filename == str(path)  # the write named no file: `naming` adds it
    assert path.read_bytes() == b"complete old file"
    assert _names(tmp_path) == ["cache.npz"]  # the half-written temporary file is gone


def test_an_interrupt_during_the_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    def interrupted(self, data: str) -> int:  # Ctrl-C after part of the text is written
        with self.open("w") as f:
            f.write(data[:10])
        raise KeyboardInterrupt

    monkeypatch.setattr(type(epath.Path("/")), "write_text", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic.write_atomic(tmp_path / "new.txt", "y" * 1000)
    assert _names(tmp_path) == []  # neither the target nor a temporary file


def test_naming_keeps_a_filename_the_error_already_has(tmp_path):
    with pytest.raises(OSError) as named, atomic.naming(epath.Path(tmp_path / "outer")):
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "/inner")
    assert named.value.filename == "/inner"
    with pytest.raises(OSError) as plain, atomic.naming(epath.Path(tmp_path / "outer")):
        raise OSError("a message and no errno")  # not a system error: left as it is
    assert plain.value.filename is None


def test_write_npz_round_trips_arrays(tmp_path):
    arrays = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "n": np.int64(7)}
    path = atomic.write_npz(tmp_path / "a.npz", **arrays)
    with np.load(path) as back:
        assert sorted(back.files) == ["n", "w"]
        np.testing.assert_array_equal(back["w"], arrays["w"])
        assert back["w"].dtype == np.float32 and int(back["n"]) == 7
    assert _names(tmp_path) == ["a.npz"]


def test_write_json_round_trips_and_is_indented(tmp_path):
    obj = {"step": 3, "nested": {"loss": 0.5, "names": ["a", "b"]}}
    path = atomic.write_json(tmp_path / "c.json", obj)
    text = path.read_text()
    assert json.loads(text) == obj
    assert text.endswith("}\n") and '\n  "step": 3' in text


def test_a_device_or_pipe_is_never_replaced(tmp_path):
    """A rename onto /dev/null (as root) or a FIFO would replace it with a regular file: the
    write is refused in one line and the special file stays what it was. (A FIFO stands for
    every such file here: a failing check must not take this machine's /dev/null with it.)"""
    import os
    import stat

    from catvae_jax.errors import UserError

    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    with pytest.raises(UserError, match=f"cannot write {pipe}: it is not a regular file"):
        atomic.write_json(pipe, {"a": 1})
    assert stat.S_ISFIFO(os.stat(pipe).st_mode)
    assert _names(tmp_path) == ["pipe"]  # no temporary file either
    assert atomic.check_replaceable(tmp_path / "new.json") == epath.Path(tmp_path / "new.json")
