"""WANDB_MODE in the environment wins over the config's wandb.mode (containers set it)."""

from __future__ import annotations

import sys
import types

import pytest
from conftest import tiny_config

from catvae_jax.errors import UserError
from catvae_jax.train.log import TrainingLog, check_wandb_login, wandb_run_id


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
    assert fake.inits == []  # the W&B run opens with the first line logged
    writer.write(1, 1, {"train_loss": 1.0})
    if expected is None:
        assert writer.run is None and fake.inits == []
    else:
        assert [call["mode"] for call in fake.inits] == [expected]
        assert fake.inits[0]["dir"] == str(tmp_path)
        assert fake.inits[0]["id"] == (tmp_path / "wandb_run_id").read_text().strip()
        assert fake.inits[0]["resume"] == "allow"
    writer.close()


def test_online_needs_a_key_from_the_environment_or_netrc(tmp_path, monkeypatch):
    """check_wandb_login: refused (UserError) without WANDB_API_KEY or a netrc entry for the
    W&B host; offline and disabled need none."""
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    config = tiny_config()
    config.wandb.mode = "online"
    with pytest.raises(UserError, match=r"no W&B API key for api\.wandb\.ai"):
        check_wandb_login(config)
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password abc123\n")
    check_wandb_login(config)
    (tmp_path / "netrc").write_text("machine other.host login user password abc123\n")
    with pytest.raises(UserError):
        check_wandb_login(config)
    monkeypatch.setenv("WANDB_API_KEY", "abc123")
    check_wandb_login(config)
    monkeypatch.delenv("WANDB_API_KEY")
    config.wandb.mode = "offline"
    check_wandb_login(config)


def test_the_run_id_is_made_once_and_kept_in_the_workdir(tmp_path):
    first = wandb_run_id(tmp_path)
    assert len(first) == 8 and first.isalnum() and first == first.lower()
    assert wandb_run_id(tmp_path) == first == (tmp_path / "wandb_run_id").read_text().strip()
