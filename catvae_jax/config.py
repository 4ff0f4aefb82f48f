"""Every setting of catvae_jax, in one ml_collections ConfigDict.

`get_config()` is the recommended default; files in `configs/` start from it and change a few
fields. `validate()` turns out-of-range values into a one-line :class:`UserError`.
"""

from __future__ import annotations

import json
import math

import ml_collections
from etils import epath

from catvae_jax.errors import UserError
from catvae_jax.models import MODELS

# Fields that change the model, the data or their shapes: a resumed run may not change them.
SHAPE_FIELDS = (
    "image_size",
    "model",
    "data.source",
    "data.path",
    "data.num_train",
    "data.seed",
    "dataset.name",  # written by train.py: a changed image folder changes the TFDS config name
    "dataset.config",
)


def get_config() -> ml_collections.ConfigDict:
    """The base every config starts from: a narrow `resvae` on synthetic cats at 64×64, batch
    16, SSIM + KL loss. The recommended setup (`recommended_config`, configs/default.py) adds the
    perceptual term and a wider net; tests and small images start from this base.

    Chosen for wall time to quality on CPU (benchmarks/README.md, "Time to quality"): at 128² a
    train step's progress hardly depended on the width, so the narrow net's ~6× more steps per
    minute win, and batch 16 buys more steps per image than 64. On accelerators raise
    `batch_size` (and `model.widths`).
    """
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.batch_size = 16
    c.learning_rate = 2e-3
    # cosine: the lr falls from learning_rate to 0 over the run (num_epochs, or max_steps if
    # sooner), times the plateau scale; constant: learning_rate throughout (the original's).
    c.lr_schedule = "cosine"
    c.weight_decay = 1e-4  # AdamW decoupled decay, multiplied by the learning rate as in PyTorch.
    c.grad_clip_norm = 1.0  # 0 disables clipping.
    # Exponential moving average of the parameters (0 = off), used for validation, samples and
    # evaluation; its decay warms up as min(ema_decay, (1 + t) / (10 + t)) at step t.
    c.ema_decay = 0.0
    c.num_epochs = 30
    c.max_steps = -1  # -1: no cap; otherwise stop after this many train steps.
    c.image_size = 64  # square images, H = W = image_size, 3 channels.

    c.model = ml_collections.ConfigDict()
    c.model.name = "resvae"  # one of catvae_jax.models.MODELS
    c.model.z_dim = 128
    c.model.h_dim = 1024  # vae_cats_v1 only: the flattened encoder output.
    c.model.widths = (8, 16, 32, 64)  # resvae only: channels at 1/2, 1/4, 1/8, 1/16 size.
    c.model.blocks_per_stage = 1  # resvae only

    c.loss = ml_collections.ConfigDict()
    c.loss.ssim_weight = 1.0  # weight of (1 - SSIM) x H*W*C per image
    c.loss.mse_weight = 0.0  # weight of the squared error summed over pixels
    c.loss.l1_weight = 0.0  # weight of the absolute error summed over pixels
    # weight of LPIPS-AlexNet(x, x̂) x H*W*C per image (catvae_jax/perceptual.py); 0 = off.
    c.loss.lpips_weight = 0.0
    c.loss.lpips_size = 0  # LPIPS on bilinear lpips_size² resizes; 0 = at image_size (>= 32)
    c.loss.beta = 0.5  # weight of the KL term, summed over latent dimensions
    c.loss.kl_warmup_steps = 200  # beta rises linearly from 0 over this many steps

    c.plateau = ml_collections.ConfigDict()
    c.plateau.factor = 0.5
    c.plateau.patience = 10  # validations without improvement before the lr is scaled
    c.early_stop_patience = 25  # validations without improvement before training stops

    c.data = ml_collections.ConfigDict()
    c.data.source = "synthetic"
    c.data.seed = 0  # which synthetic cats are drawn
    c.data.num_train = 4096
    c.data.num_validation = 256
    c.data.num_test = 256
    c.data.flip = True  # random horizontal flips of training batches
    c.data.path = ""  # folder of images (data.source = "folder"), prepared on first use
    c.data.data_dir = ""  # TFDS data_dir (any etils.epath path, gs:// too); empty = TFDS default
    c.data.download = True  # cats_vs_dogs/oxford_iiit_pet: try to build them if not in data_dir
    c.data.pipeline = "auto"  # device | grain | auto: device when the train split fits the budget
    c.data.device_memory_mb = 2048  # auto: largest train split (uint8) held on every device
    c.data.grain_threads = 8  # grain: threads reading and decoding examples
    c.data.prefetch_batches = 4  # grain: batches read ahead of the train step

    c.eval_every_steps = -1  # -1: validate at the end of every epoch
    c.checkpoint_every_steps = -1  # -1: at every validation; training end always saves
    c.log_every_steps = 20
    # train_ssim when SSIM is not in the loss: measured on this many images of each batch
    # (0 = all). A full-batch SSIM forward is 10-15 % of a vae_cats_v1 MSE step on CPU.
    c.train_ssim_images = 8
    c.num_eval_images = 8  # reconstructions shown in reconstructions.png
    # Fit the learned prior (catvae_jax/flow.py) of `best` and `latest` when training ends;
    # samples.png and the `auto` sampler use it. False: they use the gmm (or N(0, I)).
    c.flow_prior = True

    c.wandb = ml_collections.ConfigDict()
    c.wandb.mode = "offline"  # offline | online | disabled
    c.wandb.project = "catvae_jax"
    c.wandb.name = ""
    c.wandb.group = ""  # runs of one sweep share a group: the study's name

    c.progress_bar = True
    c.profile = False
    return c


def recommended_config() -> ml_collections.ConfigDict:
    """configs/default.py: the base plus an LPIPS term (AlexNet on 128² resizes), widths 16–128,
    z 64, batch 32, 12 epochs (cosine lr). Chosen for sample quality at a fixed CPU budget
    (benchmarks/README.md, "Sample quality"): LPIPS turns blurred faces into cats with pupils and
    whiskers, and it dominates a step's cost on CPU, so the wider net costs little more."""
    c = get_config()
    c.model.widths = (16, 32, 64, 128)
    c.model.z_dim = 64
    c.batch_size = 32
    c.num_epochs = 12
    c.loss.lpips_weight = 1.0
    c.loss.lpips_size = 128
    return c


def original_experiment(seed: int, num_epochs: int) -> ml_collections.ConfigDict:
    """The original VAE_cats experiments (configs/exp1–3.py differ only in seed and epochs):
    vae_cats_v1 at 128², batch 64, lr 0.01 constant, AdamW with PyTorch's default weight decay
    0.01, no gradient clipping; (1 − SSIM)·H·W·C per image + the KL (β = 1, no warm-up);
    plateau factor 0.5 / patience 10, early stopping patience 25; 1706 training images (the
    original's cat-face set), no flips."""
    c = get_config()
    c.seed = seed
    c.batch_size = 64
    c.learning_rate = 0.01
    c.lr_schedule = "constant"
    c.weight_decay = 0.01
    c.grad_clip_norm = 0.0
    c.ema_decay = 0.0  # the original had none
    c.num_epochs = num_epochs
    c.image_size = 128
    c.model.name = "vae_cats_v1"
    c.model.h_dim = 1024
    c.model.z_dim = 32
    c.loss.ssim_weight = 1.0
    c.loss.mse_weight = 0.0
    c.loss.beta = 1.0
    c.loss.kl_warmup_steps = 0
    c.plateau.factor = 0.5
    c.plateau.patience = 10
    c.early_stop_patience = 25
    c.data.num_train = 1706  # as many images as the original's cat-face set
    c.data.flip = False  # the original did not augment
    return c


def _fail(field: str, why: str) -> None:
    raise UserError(f"config field '{field}' {why}")


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises UserError naming the first field whose value is out of range (NaN and ±inf are
    out of every range)."""
    for field, value in flatten(config.to_dict()).items():
        if isinstance(value, float) and not math.isfinite(value):
            _fail(field, f"must be a finite number, got {value}")
    for field, seed in (("seed", config.seed), ("data.seed", config.data.seed)):
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
            _fail(field, f"must be an integer in [0, 2**32), got {seed!r}")
    if config.batch_size <= 0:
        _fail("batch_size", f"must be positive, got {config.batch_size}")
    if config.learning_rate <= 0:
        _fail("learning_rate", f"must be positive, got {config.learning_rate}")
    schedule = config.get("lr_schedule", "constant")  # absent in configs from before it
    if schedule not in ("cosine", "constant"):
        _fail("lr_schedule", f"must be cosine or constant, got '{schedule}'")
    if config.num_epochs <= 0:
        _fail("num_epochs", f"must be positive, got {config.num_epochs}")
    if config.max_steps == 0 or config.max_steps < -1:
        _fail("max_steps", f"must be -1 (no cap) or positive, got {config.max_steps}")
    if config.model.name not in MODELS:
        _fail("model.name", f"must be one of {sorted(MODELS)}, got '{config.model.name}'")
    if config.image_size < 11:
        _fail("image_size", f"must be at least 11 (the SSIM window), got {config.image_size}")
    if config.model.name == "vae_cats_v1" and config.image_size != 128:
        _fail("image_size", f"must be 128 for model vae_cats_v1, got {config.image_size}")
    if config.model.name == "vae_cats_v1" and config.model.h_dim != 1024:
        _fail(
            "model.h_dim", f"must be 1024 for model vae_cats_v1 (256×2×2), got {config.model.h_dim}"
        )
    if config.model.name == "resvae":
        _validate_resvae(config)
    if config.model.z_dim <= 0:
        _fail("model.z_dim", f"must be positive, got {config.model.z_dim}")
    if config.loss.beta < 0:
        _fail("loss.beta", f"must be >= 0, got {config.loss.beta}")
    weights = (config.loss.ssim_weight, config.loss.mse_weight, config.loss.l1_weight)
    if min(weights) < 0 or sum(weights) <= 0:
        _fail("loss.ssim_weight", "and mse_weight, l1_weight must be >= 0 with a positive sum")
    if config.loss.get("lpips_weight", 0.0) < 0:
        _fail("loss.lpips_weight", f"must be >= 0, got {config.loss.lpips_weight}")
    lpips_size = config.loss.get("lpips_size", 0) or config.image_size
    if config.loss.get("lpips_weight", 0.0) > 0 and lpips_size < 32:
        _fail("loss.lpips_size", f"(or image_size) must be >= 32 for LPIPS, got {lpips_size}")
    if not 0 < config.plateau.factor < 1:
        _fail("plateau.factor", f"must be in (0, 1), got {config.plateau.factor}")
    if config.plateau.patience < 0:
        _fail("plateau.patience", f"must be >= 0, got {config.plateau.patience}")
    if config.early_stop_patience < 1:
        _fail("early_stop_patience", f"must be at least 1, got {config.early_stop_patience}")
    for field in ("weight_decay", "grad_clip_norm"):
        if config[field] < 0:
            _fail(field, f"must be >= 0 (0 = off), got {config[field]}")
    if config.data.source not in ("synthetic", "folder", "cats_vs_dogs", "oxford_iiit_pet"):
        _fail("data.source", f"is not a known source: '{config.data.source}'")
    if config.data.source == "folder" and not config.data.path:
        _fail("data.path", "must name a folder of images when data.source is 'folder'")
    if config.data.pipeline not in ("auto", "device", "grain"):
        _fail("data.pipeline", f"must be auto, device or grain, got '{config.data.pipeline}'")
    if config.data.device_memory_mb < 0:
        _fail("data.device_memory_mb", f"must be >= 0, got {config.data.device_memory_mb}")
    if config.data.grain_threads < 1 or config.data.prefetch_batches < 1:
        _fail("data.grain_threads", "and data.prefetch_batches must be at least 1")
    for split in ("num_train", "num_validation"):
        if config.data[split] <= 0:
            _fail(f"data.{split}", f"must be positive, got {config.data[split]}")
    if config.data.num_test < 0:
        _fail("data.num_test", f"must be >= 0, got {config.data.num_test}")
    if config.wandb.mode not in ("offline", "online", "disabled"):
        _fail("wandb.mode", f"must be offline, online or disabled, got '{config.wandb.mode}'")
    if config.log_every_steps <= 0:
        _fail("log_every_steps", f"must be positive, got {config.log_every_steps}")
    if config.train_ssim_images < 0:
        _fail("train_ssim_images", f"must be >= 0 (0 = all), got {config.train_ssim_images}")
    if config.num_eval_images < 1:
        _fail("num_eval_images", f"must be at least 1, got {config.num_eval_images}")


def _validate_resvae(config: ml_collections.ConfigDict) -> None:
    """resvae halves the image once per entry of `model.widths`, down to a bottom grid."""
    widths = config.model.widths
    if not widths or any(isinstance(w, bool) or not isinstance(w, int) or w <= 0 for w in widths):
        _fail("model.widths", f"must be a non-empty tuple of positive ints, got {widths}")
    if any(w > 8 and w % 8 for w in widths):  # GroupNorm splits a width into min(8, w) groups
        _fail("model.widths", f"must each be at most 8 or a multiple of 8, got {widths}")
    if config.model.blocks_per_stage < 0:
        _fail("model.blocks_per_stage", f"must be >= 0, got {config.model.blocks_per_stage}")
    factor = 2 ** len(widths)
    if config.image_size % factor:
        _fail(
            "image_size",
            f"must be a multiple of {factor} for model resvae with {len(widths)} widths, "
            f"got {config.image_size}",
        )


def read_json(path: epath.Path) -> dict:
    """A workdir's config.json as a dict; UserError when it is unreadable or not JSON."""
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path} is not a readable config.json: {e}") from e


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"model": {"z_dim": 8}} → {"model.z_dim": 8}."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = list(value) if isinstance(value, tuple) else value
    return out


def shape_changes(old: dict, new: dict) -> list[str]:
    """Flattened fields in SHAPE_FIELDS whose value differs between two config dicts."""
    old_flat, new_flat = flatten(old), flatten(new)
    keys = sorted(set(old_flat) | set(new_flat))
    shaped = [k for k in keys if any(k == f or k.startswith(f + ".") for f in SHAPE_FIELDS)]
    return [k for k in shaped if old_flat.get(k) != new_flat.get(k)]


def other_changes(old: dict, new: dict) -> list[str]:
    """Flattened fields outside SHAPE_FIELDS whose value differs (accepted on resume)."""
    old_flat, new_flat = flatten(old), flatten(new)
    changed = [
        k for k in sorted(set(old_flat) | set(new_flat)) if old_flat.get(k) != new_flat.get(k)
    ]
    shaped = shape_changes(old, new)
    return [k for k in changed if k not in shaped and not k.startswith("dataset.")]
