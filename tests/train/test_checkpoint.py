"""Checkpoints (catvae_jax/train/checkpoint.py) of a tiny TrainState built in the test: which
steps are kept, what 'best' and 'latest' resolve to, a restore equal to what was saved, and
damaged or mismatched checkpoints."""

from __future__ import annotations

import functools
import gc
import logging
import shutil
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from catvae_jax.config import get_config
from catvae_jax.errors import StorageError, UserError
from catvae_jax.train import checkpoint
from catvae_jax.train.checkpoint import Checkpoints, LayoutMismatch
from catvae_jax.train.state import TrainState, make_optimizer, make_plateau

VAL_LOSSES = {1: 3.0, 2: 1.0, 3: 2.0, 4: 2.1, 5: 2.2}  # step 2 is the best, 4 the next


def _state(fill: float, ema: bool = False, width: int = 3) -> TrainState:
    """A TrainState of a 2×width dense layer whose parameters are all `fill`."""
    kernel, bias = jnp.full((2, width), fill, jnp.float32), jnp.full((width,), fill, jnp.float32)
    params = {"dense": {"kernel": kernel, "bias": bias}}
    config = get_config()
    return TrainState(
        step=jnp.asarray(int(fill), jnp.int32),
        params=params,
        opt_state=make_optimizer(config).init(params),
        plateau=make_plateau(config).init(params),
        ema=jax.tree.map(lambda p: p + 0.5, params) if ema else None,
    )


def _save(ckpts: Checkpoints, step: int, ema: bool = False) -> None:
    meta = {"step": step, "progress": {"bad_evals": step % 2}}
    ckpts.save(step, _state(step, ema), meta, {"seed": step}, VAL_LOSSES[step])


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A workdir whose checkpoints 1..5 were saved with VAL_LOSSES (the last one with EMA)."""
    workdir = tmp_path_factory.mktemp("ckpt") / "w"
    ckpts = Checkpoints(workdir)
    try:
        for step in VAL_LOSSES:
            _save(ckpts, step, ema=step == 5)
        ckpts.wait()
    finally:
        ckpts.close()
    return workdir


@pytest.fixture
def reader(saved):
    ckpts = Checkpoints(saved, read_only=True)
    yield ckpts
    ckpts.close()


def _copy(saved, tmp_path):
    shutil.copytree(saved, tmp_path / "w")
    return tmp_path / "w"


def _damage(workdir, step: int) -> None:
    """Truncates the array data files of checkpoint `step` to half (a half-written save)."""
    for data in (workdir / "checkpoints" / str(step) / "state").rglob("d/*"):
        data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])


def test_the_best_and_the_two_latest_are_kept(saved, reader):
    assert reader.steps() == [2, 4, 5]
    assert sorted(p.name for p in (saved / "checkpoints").iterdir()) == ["2", "4", "5"]


def test_best_latest_and_numbers_resolve(reader):
    assert reader.resolve("best") == 2 and reader.resolve("latest") == 5
    assert reader.candidates("best") == [2, 4, 5]  # by validation loss, not age
    assert reader.candidates("latest") == [5, 4, 2]  # newest first
    assert reader.candidates(4) == [4] and reader.candidates("4") == [4]
    with pytest.raises(UserError, match=r"^no checkpoint at step 3; have \[2, 4, 5\]$"):
        reader.candidates(3)
    with pytest.raises(UserError, match="step must be 'best', 'latest' or a number, got 'newest'"):
        reader.candidates("newest")


def test_restore_gives_back_what_was_saved(reader):
    state, meta, config = reader.restore(4, checkpoint.abstract_like(_state(0)))
    want = _state(4)
    assert isinstance(state, TrainState) and state.ema is None
    for got, expected in zip(jax.tree.leaves(state), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))
    assert meta == {"step": 4, "progress": {"bad_evals": 0}} and config == {"seed": 4}


def test_the_ema_is_its_own_item_and_optional(reader):
    with_ema = checkpoint.abstract_like(_state(0, ema=True))
    assert reader.has_ema(5) and not reader.has_ema(4)
    state, _, _ = reader.restore(5, with_ema)
    np.testing.assert_array_equal(state.ema["dense"]["bias"], np.full(3, 5.5, np.float32))
    np.testing.assert_array_equal(state.params["dense"]["bias"], np.full(3, 5.0, np.float32))
    state, _, _ = reader.restore(4, with_ema)  # a checkpoint written without EMA
    assert state.ema is None
    np.testing.assert_array_equal(state.params["dense"]["kernel"], np.full((2, 3), 4.0))


def test_a_checkpoint_of_another_shape_is_a_layout_mismatch(saved, reader):
    other = checkpoint.abstract_like(_state(0, width=4))
    want = r"/dense/bias: the checkpoint has shape \(3,\), the model wants \(4,\)$"
    with pytest.raises(LayoutMismatch, match=want):
        reader.restore(5, other)
    with pytest.raises(LayoutMismatch):  # not taken for damage: raised, not skipped
        reader.restore_for_reading("latest", other)
    writer = Checkpoints(saved)
    try:
        with pytest.raises(UserError, match=r"checkpoint 5 in .* does not fit this model"):
            writer.restore_newest_readable(other)
    finally:
        writer.close()
    assert sorted(p.name for p in (saved / "checkpoints").iterdir()) == ["2", "4", "5"]


def test_a_reader_skips_a_damaged_newest_step_and_moves_nothing(saved, tmp_path, capsys):
    workdir = _copy(saved, tmp_path)
    _damage(workdir, 5)
    listing = sorted(str(p) for p in workdir.rglob("*"))
    ckpts = Checkpoints(workdir, read_only=True)
    try:
        abstract = checkpoint.abstract_like(_state(0))
        step, state, meta, _ = ckpts.restore_for_reading("latest", abstract)
        assert step == 4 and meta["step"] == 4
        np.testing.assert_array_equal(state.params["dense"]["bias"], np.full(3, 4.0))
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("warning: skipping unreadable checkpoint")
        assert f"{workdir / 'checkpoints' / '5'} (" in lines[0]
        with pytest.raises(UserError, match=r"checkpoint .*/5 is unreadable \(") as refused:
            ckpts.restore_for_reading(5, abstract)
        assert "\n" not in str(refused.value)
    finally:
        ckpts.close()
    assert sorted(str(p) for p in workdir.rglob("*")) == listing


def test_a_resume_moves_a_damaged_newest_step_aside(saved, tmp_path, capsys):
    workdir = _copy(saved, tmp_path)
    _damage(workdir, 5)
    ckpts = Checkpoints(workdir)
    try:
        step, _, meta, config = ckpts.restore_newest_readable(checkpoint.abstract_like(_state(0)))
        assert (step, meta["step"], config) == (4, 4, {"seed": 4})
        assert ckpts.steps() == [2, 4]
    finally:
        ckpts.close()
    assert "skipping unreadable checkpoint at step 5" in capsys.readouterr().out
    names = sorted(p.name for p in (workdir / "checkpoints").iterdir())
    assert names[:2] == ["2", "4"] and names[2].startswith("unreadable-5-")


def test_no_checkpoint_resolves_to_none_and_a_reader_creates_nothing(tmp_path):
    ckpts = Checkpoints(tmp_path / "empty", read_only=True)
    try:
        assert ckpts.steps() == [] and ckpts.resolve("best") is None
        assert ckpts.restore_for_reading("latest", checkpoint.abstract_like(_state(0))) is None
    finally:
        ckpts.close()
    assert not (tmp_path / "empty").exists()


def test_a_save_that_would_not_fit_is_refused_before_writing(tmp_path, monkeypatch):
    ckpts = Checkpoints(tmp_path / "w")
    try:
        usage = shutil.disk_usage(tmp_path)._replace(free=1000)
        monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda path: usage)
        with pytest.raises(StorageError, match=r"step 1 .*: No space left on device \(0\.0 MiB"):
            _save(ckpts, 1)
        assert ckpts.steps() == []
    finally:
        ckpts.close()


def test_checkpoint_dir_is_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert str(checkpoint.checkpoint_dir("w")) == str(tmp_path / "w" / "checkpoints")
    assert str(checkpoint.checkpoint_dir("gs://b/w")) == "gs://b/w/checkpoints"


_ABANDONED_READ = """
import types

@types.coroutine
def pause():
    yield

async def read():
    try:
        await pause()
    except GeneratorExit:
        raise RuntimeError("Encountered error while reading array index")
"""


def _abandon_a_read_in(filename: str) -> None:
    """Starts a coroutine whose code lives in `filename` (as Orbax's read coroutines live in
    orbax/) and drops it half-way: collecting it raises inside it, an "Exception ignored"."""
    namespace: dict = {}
    exec(compile(_ABANDONED_READ, filename, "exec"), namespace)
    read = namespace["read"]()
    read.send(None)
    del read
    gc.collect()


class _DroppedWhile:
    """An object whose collection raises `message` (an unraisable error, like TensorStore's
    callbacks that find asyncio's loop closed after a failed read)."""

    def __init__(self, message: str):
        self.message = message

    def __del__(self):
        raise RuntimeError(self.message)


def test_abandoned_orbax_reads_are_silent_and_other_unraisables_still_print(monkeypatch, capsys):
    """A failing Orbax read leaves debris that Python prints with tracebacks at times of its
    own choosing (a CLI's stderr held them in CI): read coroutines collected unfinished,
    callbacks that find the event loop closed, asyncio's "exception was never retrieved",
    coroutines never awaited. Readers drop those, and only those."""
    monkeypatch.setattr(sys, "unraisablehook", sys.__unraisablehook__)
    _abandon_a_read_in("/site-packages/orbax/checkpoint/_src/serialization/fake.py")
    assert "Traceback" in capsys.readouterr().err  # what a CLI printed before
    asyncio_log = logging.getLogger("asyncio")
    before = list(asyncio_log.filters)
    try:
        with warnings.catch_warnings(record=True) as seen:
            checkpoint._silence_abandoned_reads()
            checkpoint._silence_abandoned_reads()  # idempotent: one filter, not a chain of them
            assert sys.unraisablehook._drops_orbax_reads
            _abandon_a_read_in("/site-packages/orbax/checkpoint/_src/serialization/fake.py")
            _DroppedWhile("Event loop is closed")
            gc.collect()
            warn = functools.partial(warnings.warn, category=RuntimeWarning, stacklevel=1)
            warn("coroutine '_read_array_index' was never awaited")
            assert capsys.readouterr().err == "" and not seen
            unretrieved = logging.LogRecord(
                "asyncio", logging.ERROR, "base_events.py", 1771,
                "Future exception was never retrieved\nfuture: <...>", None, None,
            )  # fmt: skip
            assert not asyncio_log.filter(unretrieved)
            _abandon_a_read_in("/site-packages/someone_else/reader.py")
            _DroppedWhile("something else broke")
            gc.collect()
            warn("another warning")
            err = capsys.readouterr().err
            assert "Encountered error while reading" in err and "something else broke" in err
            assert [str(w.message) for w in seen] == ["another warning"]
    finally:
        asyncio_log.filters[:] = before
