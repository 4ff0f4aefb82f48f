"""A training workdir (catvae_jax/train/workdir.py): created, locked, bootstrapped with the run's
config.json, and a resume that changes the model or data shape refused in one line."""

from __future__ import annotations

import json
import os

import pytest
from conftest import tiny_config

from catvae_jax.errors import UserError
from catvae_jax.train import workdir as workdir_lib


def test_create_makes_parents_and_refuses_a_file(tmp_path):
    made = workdir_lib.create(tmp_path / "a" / "b")
    assert made.is_dir() and os.fspath(made) == str(tmp_path / "a" / "b")
    assert workdir_lib.create(made) == made  # an existing workdir is fine
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match=r"^workdir .*/file: a file, not a directory$"):
        workdir_lib.create(tmp_path / "file")
    with pytest.raises(UserError, match=r"^cannot write .*/file/sub: Not a directory$"):
        workdir_lib.create(tmp_path / "file" / "sub")


def test_lock_holds_the_workdir_for_one_writer(tmp_path):
    held = workdir_lib.lock(tmp_path, "training")
    try:
        with pytest.raises(UserError, match=r"in use by training \(pid"):
            workdir_lib.lock(tmp_path, "import_torch")
    finally:
        held.release()
    workdir_lib.lock(tmp_path, "import_torch").release()


def test_bootstrap_writes_the_config_with_its_dataset(tmp_path):
    config = tiny_config()
    written = workdir_lib.bootstrap(tmp_path, config)
    on_disk = json.loads((tmp_path / "config.json").read_text())
    assert on_disk == json.loads(json.dumps(written))  # the dict checkpoints store
    assert on_disk["dataset"]["name"] == "synthetic_cats" and on_disk["dataset"]["version"]
    assert on_disk["image_size"] == 16 and on_disk["model"]["widths"] == [8, 16]
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]  # no temporary file left


def _bootstrap_and_save(workdir) -> None:
    """bootstrap, then a committed checkpoint folder (its contents do not matter here)."""
    workdir_lib.bootstrap(workdir, tiny_config())
    (workdir / "checkpoints" / "12").mkdir(parents=True)


def test_a_resume_with_the_same_config_passes_silently(tmp_path, capsys):
    _bootstrap_and_save(tmp_path)
    workdir_lib.bootstrap(tmp_path, tiny_config())
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(
    ("field", "value", "was", "now"),
    [
        ("model.z_dim", 16, "8", "16"),
        ("image_size", 32, "16", "32"),
        ("data.num_train", 64, "96", "64"),
    ],
)
def test_a_resume_with_another_shape_is_refused_in_one_line(tmp_path, field, value, was, now):
    _bootstrap_and_save(tmp_path)
    before = (tmp_path / "config.json").read_text()
    changed = tiny_config()
    parent, _, leaf = field.rpartition(".")
    (changed[parent] if parent else changed)[leaf] = value
    with pytest.raises(UserError) as refused:
        workdir_lib.bootstrap(tmp_path, changed)
    assert str(refused.value) == (
        f"cannot resume {tmp_path} with a changed '{field}' (was {was}, now {now}); "
        "use a new workdir"
    )
    assert (tmp_path / "config.json").read_text() == before  # the old config is kept


def test_a_changed_data_set_alone_is_named(tmp_path):
    """Another data set under the same settings (an image folder whose files changed): the
    `dataset` record differs, and is named since no field of the user's did."""
    _bootstrap_and_save(tmp_path)
    path = tmp_path / "config.json"
    old = json.loads(path.read_text())
    old["dataset"]["config"] = "another"
    path.write_text(json.dumps(old))
    with pytest.raises(UserError, match=r"a changed 'dataset.config' \(was 'another', now '16px"):
        workdir_lib.bootstrap(tmp_path, tiny_config())


def test_a_resume_with_other_changes_lists_them_and_records_them(tmp_path, capsys):
    _bootstrap_and_save(tmp_path)
    changed = tiny_config()
    changed.learning_rate = 1e-3
    changed.num_epochs = 5
    workdir_lib.bootstrap(tmp_path, changed)
    out = capsys.readouterr().out
    assert out == "resuming with changed fields: learning_rate, num_epochs\n"
    on_disk = json.loads((tmp_path / "config.json").read_text())
    assert on_disk["learning_rate"] == 1e-3 and on_disk["num_epochs"] == 5


def test_a_config_left_by_a_start_that_saved_nothing_is_replaced_silently(tmp_path, capsys):
    """A first start that failed before its first checkpoint (a mistyped init_from, a full
    disk at step 3) left config.json: the next start trains from step 0 whatever it changed,
    so it neither refuses another shape nor calls itself a resume. A checkpoint being written
    (an Orbax tmp folder) is not a committed one."""
    workdir_lib.bootstrap(tmp_path, tiny_config())
    (tmp_path / "checkpoints" / "4.orbax-checkpoint-tmp-1").mkdir(parents=True)
    changed = tiny_config()
    changed.model.z_dim, changed.learning_rate = 16, 1e-3
    workdir_lib.bootstrap(tmp_path, changed)
    assert capsys.readouterr().out == ""
    on_disk = json.loads((tmp_path / "config.json").read_text())
    assert on_disk["model"]["z_dim"] == 16 and on_disk["learning_rate"] == 1e-3
