"""Config validation and the resume comparison of configs."""

import importlib.util
import json
import os

import pytest

from catvae_jax import config as config_lib
from catvae_jax.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


@pytest.mark.parametrize("name", ["default", "quickstart", "long", "exp1", "exp2", "exp3"])
def test_shipped_configs_are_valid(name):
    config_lib.validate(_load(name))


def test_the_quickstart_is_the_default_recipe_for_fewer_steps():
    """Both shipped models (pretrained:quickstart and pretrained:default) are hvae, trained by
    one recipe that the quickstart cuts to 6 epochs at a constant learning rate."""
    default, quickstart = _load("default"), _load("quickstart")
    assert default.model.name == quickstart.model.name == "hvae"
    assert (quickstart.num_epochs, quickstart.lr_schedule) == (6, "constant")
    for field in ("num_epochs", "lr_schedule", "log_every_steps"):
        quickstart[field] = default[field]
    assert quickstart == default


def test_the_long_config_is_the_default_recipe_for_four_times_the_steps():
    default, long = _load("default"), _load("long")
    assert long.num_epochs == 4 * default.num_epochs
    long.num_epochs = default.num_epochs
    assert long == default


def test_an_old_config_json_is_upgraded_once_where_it_is_read(tmp_path):
    """A version-1 config.json (before lr_schedule, EMA, LPIPS, ...) reads as today's config,
    its added fields at what they meant then, its own values kept, lists back as tuples."""
    old = config_lib.get_config().to_dict()
    fields = ("lr_schedule", "ema_decay", "train_ssim_images", "flow_prior", "gmm_components")
    for field in (*fields, "config_version"):
        del old[field]
    del old["loss"]["lpips_weight"], old["loss"]["lpips_size"], old["wandb"]["group"]
    old["batch_size"], old["dataset"] = 4, {"name": "synthetic_cats", "config": "16px"}
    (tmp_path / "config.json").write_text(json.dumps(old))
    c = config_lib.read_json(tmp_path / "config.json")
    assert (c.lr_schedule, c.ema_decay, c.train_ssim_images, c.loss.lpips_weight) == (
        "constant",
        0.0,
        0,
        0.0,
    )
    assert c.config_version == config_lib.CONFIG_VERSION and c.batch_size == 4
    assert c.gmm_components == 10  # added in version 2, at the 10 of version 1's sampler
    assert c.model.widths == (8, 16, 32, 64) and c.dataset.config == "16px"
    config_lib.validate(c)
    current = config_lib.get_config()
    assert config_lib.upgrade(json.loads(json.dumps(current.to_dict()))) == current


@pytest.mark.parametrize(
    ("version", "saved", "components"),
    [(2, None, 10), (2, 50, 50), (3, None, 200), (3, 7, 7)],
)
def test_the_mixtures_components_read_as_the_version_that_wrote_them(version, saved, components):
    """Version 3 made 200 components the default: a version-2 config.json without the field
    (the shipped model files, earlier runs) keeps the 10 it meant; a saved K is kept."""
    old = {**config_lib.get_config().to_dict(), "config_version": version}
    del old["gmm_components"]
    if saved is not None:
        old["gmm_components"] = saved
    assert config_lib.upgrade(old).gmm_components == components


@pytest.mark.parametrize(
    "text,why",
    [("[1, 2]", "expected a JSON object"), ('{"model": 5}', "model"), ('{"seed": "x"}', "seed")],
)
def test_a_config_json_of_the_wrong_structure_is_one_user_error(tmp_path, text, why):
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(UserError, match=f"is not a catvae_jax config.json: .*{why}"):
        config_lib.read_json(tmp_path / "config.json")


@pytest.mark.parametrize("name,seed,epochs", [("exp1", 42, 50), ("exp2", 47, 500), ("exp3", 42, 5)])
def test_experiments_reproduce_the_original(name, seed, epochs):
    c = _load(name)
    assert (c.seed, c.num_epochs, c.batch_size, c.learning_rate) == (seed, epochs, 64, 0.01)
    assert c.lr_schedule == "constant"  # the original never changed its lr but on plateaus
    assert (c.model.name, c.model.h_dim, c.model.z_dim, c.image_size) == (
        "vae_cats_v1",
        1024,
        32,
        128,
    )
    assert (c.plateau.factor, c.plateau.patience, c.early_stop_patience) == (0.5, 10, 25)
    assert (c.loss.ssim_weight, c.loss.mse_weight, c.loss.beta) == (1.0, 0.0, 1.0)


@pytest.mark.parametrize(
    "field,value,named",
    [
        ("batch_size", 0, "batch_size"),
        ("learning_rate", -1.0, "learning_rate"),
        ("lr_schedule", "linear", "lr_schedule"),
        ("max_steps", -5, "max_steps"),
        ("image_size", 8, "image_size"),
        ("image_size", 40, "image_size"),  # resvae needs a multiple of 16
        ("model.name", "nope", "model.name"),
        ("data.source", "web", "data.source"),
        ("wandb.mode", "sometimes", "wandb.mode"),
        ("plateau.factor", 1.5, "plateau.factor"),
        ("train_ssim_images", -1, "train_ssim_images"),
        ("num_eval_images", 0, "num_eval_images"),
        ("early_stop_patience", 0, "early_stop_patience"),
        ("gmm_components", 0, "gmm_components"),
        ("plateau.patience", -1, "plateau.patience"),
        ("grad_clip_norm", -1.0, "grad_clip_norm"),
        ("weight_decay", -0.1, "weight_decay"),
        ("data.num_test", -3, "data.num_test"),
        ("model.widths", (8, 0), "model.widths"),
        ("model.widths", (), "model.widths"),
        ("model.widths", (8, 12), "model.widths"),  # 12 channels do not split into 8 groups
        ("model.blocks_per_stage", -1, "model.blocks_per_stage"),
        ("image_size", 48, "image_size"),  # not a multiple of 2^5 with five widths, below
        ("loss.lpips_weight", -1.0, "loss.lpips_weight"),
        ("loss.lpips_size", 16, "loss.lpips_size"),  # AlexNet's conv5 needs >= 32 px
        ("loss.adversarial_weight", -0.1, "loss.adversarial_weight"),
        ("loss.adversarial_start", -1, "loss.adversarial_start"),
        ("discriminator.width", 12, "discriminator.width"),  # GroupNorm's 8 groups
        ("discriminator.learning_rate", 0.0, "discriminator.learning_rate"),
        ("choose_sampler_n", 4, "choose_sampler_n"),
        # accepted before: an out-of-memory traceback, an average that never moved, a warm-up
        # read as none
        ("image_size", 2048, "image_size"),
        ("loss.lpips_size", 100_000, "loss.lpips_size"),
        ("ema_decay", 1.0, "ema_decay"),
        ("ema_decay", -0.5, "ema_decay"),
        ("loss.kl_warmup_steps", -5, "loss.kl_warmup_steps"),
    ],
)
def test_out_of_range_values_name_the_field(field, value, named):
    c = config_lib.get_config()
    if (field, value) == ("image_size", 48):
        c.model.widths = (8, 16, 32, 64, 64)
    if field == "loss.lpips_size":
        c.loss.lpips_weight = 1.0
    parent, _, leaf = field.rpartition(".")
    (c[parent] if parent else c)[leaf] = value
    with pytest.raises(UserError, match=f"'{named}'"):
        config_lib.validate(c)


def test_vae_cats_v1_needs_128():
    c = config_lib.get_config()
    c.model.name = "vae_cats_v1"
    with pytest.raises(UserError, match="128"):
        config_lib.validate(c)


def test_vae_cats_v1_needs_h_dim_1024():
    c = _load("exp1")
    c.model.h_dim = 512  # fixed by the architecture: 256 channels × 2 × 2 at 128²
    with pytest.raises(UserError, match=r"'model\.h_dim' must be 1024"):
        config_lib.validate(c)


def test_resvae_accepts_other_depths():
    c = config_lib.get_config()
    c.model.widths, c.image_size = (8, 16, 32), 40  # three halvings: a multiple of 8 is enough
    config_lib.validate(c)


def test_hvae_needs_two_widths_and_a_local_group():
    c = config_lib.get_config()
    c.model.name, c.model.widths, c.image_size = "hvae", (8, 16, 32), 40
    config_lib.validate(c)  # resvae's rules: three halvings, a multiple of 8
    assert config_lib.latent_size(c) == c.model.z_dim + 10 * 10 * c.model.local_channels
    c.model.local_channels = 0
    with pytest.raises(UserError, match=r"^config field 'model\.local_channels' must be positive"):
        config_lib.validate(c)
    c.model.local_channels, c.model.widths, c.image_size = 4, (8,), 16
    with pytest.raises(UserError, match=r"'model\.widths' must have at least 2 entries"):
        config_lib.validate(c)


def test_shape_changes_are_told_apart_from_others():
    old = config_lib.get_config().to_dict()
    new = config_lib.get_config()
    new.model.z_dim = 3
    new.num_epochs = 99
    new = new.to_dict()
    assert config_lib.shape_changes(old, new) == ["model.z_dim"]
    assert config_lib.other_changes(old, new) == ["num_epochs"]
