"""WANDB_MODE in the environment wins over the config's wandb.mode (containers set it)."""

from __future__ import annotations

import sys
import types

import pytest
from conftest import tiny_config

from catvae_jax.train.log import TrainingLog


class _FakeWandb(types.ModuleType):
    """Stands in for the wandb module: records wandb.init's keyword arguments."""

    def __init__(self):
        super().__init__("wandb")
        self.inits: list[dict] = []

    def init(self, **kwargs):
        self.inits.append(kwargs)
        return types.SimpleNamespace(finish=lambda: None, log=lambda *a, **k: None)


@pytest.mark.parametrize(
    ("env_mode", "config_mode", "expected"),
    [
        ("disabled", "offline", None),  # the environment turns W&B off
        ("offline", "disabled", "offline"),  # ... or on, whatever the config says
        ("online", "offline", "online"),
        (None, "offline", "offline"),  # no WANDB_MODE: the config decides
        ("", "disabled", None),  # an empty WANDB_MODE counts as unset
    ],
)
def test_wandb_mode_from_the_environment_wins(
    tmp_path, monkeypatch, env_mode, config_mode, expected
):
    fake = _FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    if env_mode is None:
        monkeypatch.delenv("WANDB_MODE", raising=False)
    else:
        monkeypatch.setenv("WANDB_MODE", env_mode)
    config = tiny_config()
    config.wandb.mode = config_mode
    writer = TrainingLog(tmp_path, config)
    if expected is None:
        assert writer.run is None and fake.inits == []
    else:
        assert [call["mode"] for call in fake.inits] == [expected]
        assert fake.inits[0]["dir"] == str(tmp_path)
    writer.close()
