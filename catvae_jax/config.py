"""Every setting of catvae_jax, in one ml_collections ConfigDict.

`get_config()` is the recommended default; files in `configs/` start from it and change a few
fields. `validate()` turns out-of-range values into a one-line :class:`UserError`.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import json
import math
import textwrap
import tokenize
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections
from etils import epath

from catvae_jax.errors import UserError

# The networks of catvae_jax.model.networks.MODELS, by name (that module checks it matches).
SEEDS = 2**32  # a seed is a 32-bit unsigned int: config.seed, data.seed, every --seed
MODEL_NAMES = ("vae_cats_v1", "resvae", "hvae")

# Fields that change the model, the data or their shapes: a resumed run may not change them.
SHAPE_FIELDS = (
    "image_size",
    "model",
    "data.source",
    "data.path",
    "data.num_train",
    "data.seed",
    "dataset.name",  # written by train/workdir.py: another image folder, another TFDS config
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

    Every field is documented by the comment on its line, or the comment lines just above it:
    `field_docs` reads them from here, and `python -m catvae_jax.main --show_config` prints them.
    """
    c = ml_collections.ConfigDict()
    c.seed = 0  # initial parameters, noise and the order of training batches
    c.batch_size = 16  # images per train step, over all devices (a multiple of their count)
    c.learning_rate = 2e-3  # peak AdamW learning rate
    # cosine: the lr falls from learning_rate to 0 over the run (num_epochs, or max_steps if
    # sooner), times the plateau scale; constant: learning_rate throughout (the original's).
    c.lr_schedule = "cosine"
    c.weight_decay = 1e-4  # AdamW decoupled decay, multiplied by the learning rate as in PyTorch.
    c.grad_clip_norm = 1.0  # 0 disables clipping.
    # Exponential moving average of the parameters (0 = off), used for validation, samples and
    # evaluation; its decay warms up as min(ema_decay, (1 + t) / (10 + t)) at step t.
    c.ema_decay = 0.0
    c.num_epochs = 30  # passes over the training split; training ends after the last
    c.max_steps = -1  # -1: no cap; otherwise stop after this many train steps, if sooner.
    c.image_size = 64  # square images, H = W = image_size, 3 channels.

    c.model = ml_collections.ConfigDict()
    # resvae (residual, any width), hvae (resvae with a second, local latent group) or
    # vae_cats_v1 (the original's net)
    c.model.name = "resvae"
    c.model.z_dim = 128  # latent dimensions
    c.model.h_dim = 1024  # vae_cats_v1 only: the flattened encoder output.
    c.model.widths = (8, 16, 32, 64)  # resvae only: channels at 1/2, 1/4, 1/8, 1/16 size.
    c.model.blocks_per_stage = 1  # resvae and hvae: residual blocks at each size
    # hvae only: channels of the local latent group, a grid at twice the bottom size (1/8 of the
    # image with four widths), drawn top-down given the global latent (`latent_size`). 1 measured
    # better than 4 in both feature spaces (benchmarks/README.md, "Sample quality").
    c.model.local_channels = 1

    c.loss = ml_collections.ConfigDict()
    c.loss.ssim_weight = 1.0  # weight of (1 - SSIM) x H*W*C per image
    c.loss.mse_weight = 0.0  # weight of the squared error summed over pixels
    c.loss.l1_weight = 0.0  # weight of the absolute error summed over pixels
    # weight of LPIPS-AlexNet(x, x̂) x H*W*C per image (catvae_jax/model/perceptual.py); 0 = off.
    c.loss.lpips_weight = 0.0
    c.loss.lpips_size = 0  # LPIPS on bilinear lpips_size² resizes; 0 = at image_size (>= 32)
    c.loss.beta = 0.5  # weight of the KL term, summed over latent dimensions
    c.loss.kl_warmup_steps = 200  # beta rises linearly from 0 over this many steps
    # Adversarial term (catvae_jax/model/discriminator.py): the decoder's hinge generator loss,
    # scaled by an adaptive weight (‖∇ recon‖ / ‖∇ adversarial‖ at the decoder's last layer,
    # VQGAN's) times adversarial_weight; 0 = off (no discriminator is built or checkpointed).
    c.loss.adversarial_weight = 0.0
    c.loss.adversarial_start = 0  # train step from which the discriminator and the term act

    # The patch discriminator of the adversarial term (loss.adversarial_weight > 0 only).
    c.discriminator = ml_collections.ConfigDict()
    c.discriminator.width = 32  # channels of its first conv; doubled by each of the next two
    c.discriminator.learning_rate = 2e-4  # Adam (b1 0.5, b2 0.9), constant

    c.plateau = ml_collections.ConfigDict()
    c.plateau.factor = 0.5  # the lr is multiplied by this after `patience` bad validations
    c.plateau.patience = 10  # validations without improvement before the lr is scaled
    c.early_stop_patience = 25  # validations without improvement before training stops

    c.data = ml_collections.ConfigDict()
    c.data.source = "synthetic"  # synthetic | folder | cats_vs_dogs | oxford_iiit_pet
    c.data.seed = 0  # which synthetic cats are drawn
    c.data.num_train = 4096  # synthetic only: images per split (a folder: 8/1/1 by file name)
    c.data.num_validation = 256  # synthetic only
    c.data.num_test = 256  # synthetic only
    c.data.flip = True  # random horizontal flips of training batches
    c.data.path = ""  # folder of images (data.source = "folder"), prepared on first use
    c.data.data_dir = ""  # TFDS data_dir (any etils.epath path, gs:// too); empty = TFDS default
    c.data.download = True  # catalog sets, oxford_cat_faces: fetch what is not in data_dir
    c.data.archives = ""  # oxford_cat_faces: folder of images.tar.gz, annotations.tar.gz
    c.data.face_margin = 0.2  # oxford_cat_faces: added on every side, × the head box's side
    c.data.pipeline = "auto"  # device | grain | auto: device when the train split fits the budget
    c.data.device_memory_mb = 2048  # auto: largest train split (uint8) held on every device
    c.data.grain_threads = 8  # grain: threads reading and decoding examples
    c.data.prefetch_batches = 4  # grain: batches read ahead of the train step

    c.eval_every_steps = -1  # -1: validate at the end of every epoch
    c.checkpoint_every_steps = -1  # -1: at every validation; training end always saves
    c.log_every_steps = 20  # train metrics (metrics.jsonl, W&B, the bar) every this many steps
    # train_ssim when SSIM is not in the loss: measured on this many images of each batch
    # (0 = all). A full-batch SSIM forward is 10-15 % of a vae_cats_v1 MSE step on CPU.
    c.train_ssim_images = 8
    c.num_eval_images = 8  # reconstructions shown in reconstructions.png
    # Fit the learned prior (catvae_jax/priors/flow.py) of `best` and `latest` when training ends;
    # samples.png and the `auto` sampler use it. False: they use the gmm (or N(0, I)).
    c.flow_prior = True
    # Components of the gmm sampler's full-covariance mixture over the training latents, capped at
    # one per 20 latents (catvae_jax/priors/gmm.py, `components`). 200 drew better cats than 10 in
    # both networks (benchmarks/README.md, "K2 with more components"); configs before version 3: 10.
    c.gmm_components = 200
    # Fine-tuning: start from another model's parameters (not its optimizer state or step):
    # "WORKDIR" or "WORKDIR:STEP" (best, latest or a number; default best), a model file
    # (NAME.catvae) or "pretrained:NAME". Empty: random initialisation. A resumed run ignores it.
    c.init_from = ""
    # When training ends, measure each sampler (prior, gmm, flow) of those checkpoints on the
    # validation split in AlexNet, VGG16 and pixel statistics (catvae_jax/evaluation/
    # sampler_choice.py), and store the best for the `auto` sampler. False: auto keeps its fixed
    # order (flow, else gmm, else N(0, I)).
    c.choose_sampler = True
    c.choose_sampler_n = 256  # samples per sampler, against as many validation images (or all)

    c.wandb = ml_collections.ConfigDict()
    # offline (WORKDIR/wandb: `wandb sync` it later) | online (needs `wandb login`) | disabled;
    # the WANDB_MODE environment variable wins. A resumed run continues its W&B run.
    c.wandb.mode = "offline"
    c.wandb.project = "catvae_jax"  # the W&B project the run is logged to
    c.wandb.name = ""  # the W&B run name; empty: the workdir's name
    c.wandb.group = ""  # runs of one sweep share a group: the study's name

    # Train steps per compiled call: a loop of up to this many steps runs on the device between
    # two returns to Python (1: one step per call). Log, validation and checkpoint steps end a
    # call, so a run's steps, batches and outputs do not depend on it. 8–32 on a GPU or TPU;
    # keep 1 on CPU (XLA:CPU runs a loop's steps 3–5× slower: benchmarks/README.md).
    c.steps_per_call = 1
    # auto | cpu | plain: the CPU-tuned kernels (banded-matmul SSIM blur, sub-pixel transposed
    # and upsampling convolutions, im2col convolutions, glibc malloc reuse) or the plain ones
    # (dm-pix's SSIM filter, XLA's convolutions); auto: cpu on the CPU backend, else plain.
    c.kernels = "auto"
    # float32 | bfloat16: the activations and convolutions of the model and of the LPIPS term;
    # parameters, optimizer state and the loss's reductions stay float32. bfloat16 is for GPUs
    # and TPUs (slower on CPU).
    c.dtype = "float32"
    # JAX's persistent compilation cache in ~/.cache/catvae_jax/jax (catvae_jax/compile_cache.py).
    c.compilation_cache = True

    # TensorBoard event files in WORKDIR/tensorboard too (`tensorboard --logdir WORKDIR`).
    c.tensorboard = False
    c.progress_bar = True  # a bar of train steps on the terminal
    # At each validation: progress/samples.png, progress/reconstructions.png and metrics.png
    # (False: the validation line only, e.g. for tiny runs, where drawing costs more than training).
    c.validation_pictures = True
    c.profile = False  # a jax.profiler trace of 5 train steps in WORKDIR/profile
    c.config_version = CONFIG_VERSION  # of config.json (`upgrade` reads older ones)
    return c


def field_docs() -> dict[str, str]:
    """{"model.z_dim": "latent dimensions", ...}: the documentation of every field `get_config`
    sets, from its source: the comment on the assignment's lines, after the comment lines just
    above it (contiguous, no blank line between)."""
    source = textwrap.dedent(inspect.getsource(get_config))
    comments: dict[int, str] = {}  # line number → comment text
    code: set[int] = set()  # lines holding code
    skip = (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT)
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
        elif token.type not in (*skip, tokenize.ENDMARKER):
            code.update(range(token.start[0], token.end[0] + 1))
    docs = {}
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Attribute)):
            continue
        above, line = [], node.lineno - 1
        while line in comments and line not in code:
            above.insert(0, comments[line])
            line -= 1
        trailing = [comments[i] for i in range(node.lineno, node.end_lineno + 1) if i in comments]
        docs[_dotted(node.targets[0])] = " ".join(above + trailing)
    return docs


def _dotted(target: ast.Attribute) -> str:
    """`c.model.z_dim` → "model.z_dim"."""
    names = []
    while isinstance(target, ast.Attribute):
        names.insert(0, target.attr)
        target = target.value
    return ".".join(names)


def describe(config: ml_collections.ConfigDict, width: int = 100) -> str:
    """Every field of `config` as `field = value  # documentation` (from `field_docs`), one
    field per line (long documentation wrapped below it), in the config's order."""
    docs = field_docs()
    rows = [(name, f"{name} = {value!r}") for name, value in _leaves(config)]
    column = min(44, max(len(text) for _, text in rows)) + 2
    lines = []
    for name, text in rows:
        doc = docs.get(name, "")
        wrapped = textwrap.wrap(doc, max(30, width - column - 2)) or [""]
        first = f"{text:<{column}}# {wrapped[0]}" if doc else text
        if len(text) >= column and doc:  # a long value: the documentation below it
            lines.append(text)
            first = " " * column + f"# {wrapped[0]}"
        lines.append(first)
        lines += [" " * column + f"# {more}" for more in wrapped[1:]]
    return "\n".join(lines)


def _leaves(config: ml_collections.ConfigDict, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted name, value) of every non-ConfigDict field, depth first, in the config's order."""
    out = []
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            out += _leaves(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out


def recommended_config() -> ml_collections.ConfigDict:
    """configs/default.py: the base plus an LPIPS term (AlexNet on 128² resizes), hvae (a global
    z of 64 and a local 8×8 latent group) with widths 16–128, batch 32, 12 epochs (cosine lr).
    Chosen for sample quality at a fixed CPU budget (benchmarks/README.md, "Sample quality"):
    LPIPS turns blurred faces into cats with pupils and whiskers, and it dominates a step's cost
    on CPU, so the wider net costs little more; hvae drew better cats than resvae: over three
    seeds at both budgets a tie in VGG16 (the network the loss does not use), −15 % or more FD
    in AlexNet and more recall."""
    c = get_config()
    c.model.name = "hvae"
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
    c.plateau.factor = 0.5  # the lr is multiplied by this after `patience` bad validations
    c.plateau.patience = 10
    c.early_stop_patience = 25
    c.data.num_train = 1706  # as many images as the original's cat-face set
    c.data.flip = False  # the original did not augment
    return c


def latent_size(config: Mapping[str, Any]) -> int:
    """Dimensions of a model's latent vector z (what the samplers draw and `decode` takes): z_dim,
    plus for hvae its local group, local_channels at (image_size / 2^(len(widths) − 1))² places.
    `config`: a ConfigDict or a config.json's dict."""
    m = config["model"]
    if m["name"] != "hvae":
        return int(m["z_dim"])
    side = int(config["image_size"]) // 2 ** (len(m["widths"]) - 1)
    return int(m["z_dim"]) + side * side * int(m["local_channels"])


def _fail(field: str, why: str) -> None:
    raise UserError(f"config field '{field}' {why}")


def is_seed(v: Any) -> bool:
    """Whether `v` is a seed: an int (not a bool) in [0, SEEDS)."""
    return not isinstance(v, bool) and isinstance(v, int) and 0 <= v < SEEDS


def _widths(v) -> bool:
    return bool(v) and all(not isinstance(w, bool) and isinstance(w, int) and w > 0 for w in v)


def _resvae_factor(c: ml_collections.ConfigDict) -> int:
    """resvae halves the image once per entry of `model.widths`, down to a bottom grid."""
    return 2 ** len(c.model.widths)


@dataclasses.dataclass(frozen=True)
class Check:
    """One rule of `validate`: `ok(value, config)` must hold for `field` (when `applies`);
    otherwise the one-line error is "config field '<field>' <why>", with `why` formatted with
    `v` (the value) and `c` (the config)."""

    field: str
    ok: Callable[[Any, ml_collections.ConfigDict], bool]
    why: str
    applies: Callable[[ml_collections.ConfigDict], bool] = lambda c: True


def _is_resvae(c: ml_collections.ConfigDict) -> bool:
    """resvae and hvae (resvae's networks plus a local latent group) share their fields."""
    return c.model.name in ("resvae", "hvae")


def _is_hvae(c: ml_collections.ConfigDict) -> bool:
    return c.model.name == "hvae"


def _is_v1(c: ml_collections.ConfigDict) -> bool:
    return c.model.name == "vae_cats_v1"


SOURCES = ("synthetic", "folder", "oxford_cat_faces", "cats_vs_dogs", "oxford_iiit_pet")
KERNELS = ("auto", "cpu", "plain")
DTYPES = ("float32", "bfloat16")
MAX_IMAGE_SIZE = 1024  # image_size and loss.lpips_size: larger is an out-of-memory, not a model

# In order: the first failing check is the one reported.
CHECKS = (
    Check("seed", lambda v, c: is_seed(v), "must be an integer in [0, 2**32), got {v!r}"),
    Check("data.seed", lambda v, c: is_seed(v), "must be an integer in [0, 2**32), got {v!r}"),
    Check("batch_size", lambda v, c: v > 0, "must be positive, got {v}"),
    Check("learning_rate", lambda v, c: v > 0, "must be positive, got {v}"),
    Check("lr_schedule", lambda v, c: v in ("cosine", "constant"),
          "must be cosine or constant, got '{v}'"),
    Check("num_epochs", lambda v, c: v > 0, "must be positive, got {v}"),
    Check("max_steps", lambda v, c: v == -1 or v > 0, "must be -1 (no cap) or positive, got {v}"),
    Check("model.name", lambda v, c: v in MODEL_NAMES,
          f"must be one of {sorted(MODEL_NAMES)}, got '{{v}}'"),
    Check("image_size", lambda v, c: v >= 11, "must be at least 11 (the SSIM window), got {v}"),
    Check("image_size", lambda v, c: v <= MAX_IMAGE_SIZE,
          f"must be at most {MAX_IMAGE_SIZE}, got {{v}}"),
    Check("image_size", lambda v, c: v == 128, "must be 128 for model vae_cats_v1, got {v}",
          _is_v1),
    Check("model.h_dim", lambda v, c: v == 1024,
          "must be 1024 for model vae_cats_v1 (256×2×2), got {v}", _is_v1),
    Check("model.widths", lambda v, c: _widths(v),
          "must be a non-empty tuple of positive ints, got {v}", _is_resvae),
    Check("model.widths", lambda v, c: all(w <= 8 or w % 8 == 0 for w in v),  # GroupNorm groups
          "must each be at most 8 or a multiple of 8, got {v}", _is_resvae),
    Check("model.blocks_per_stage", lambda v, c: v >= 0, "must be >= 0, got {v}", _is_resvae),
    Check("image_size", lambda v, c: v % _resvae_factor(c) == 0,
          "must be a multiple of {factor} for model {c.model.name} with {n} widths, got {v}",
          _is_resvae),
    Check("model.widths", lambda v, c: len(v) >= 2,
          "must have at least 2 entries for model hvae (its local latents sit one size above the "
          "bottom), got {v}", _is_hvae),
    Check("model.local_channels", lambda v, c: v > 0, "must be positive, got {v}", _is_hvae),
    Check("model.z_dim", lambda v, c: v > 0, "must be positive, got {v}"),
    Check("loss.beta", lambda v, c: v >= 0, "must be >= 0, got {v}"),
    Check("loss.ssim_weight",
          lambda v, c: min(w := (v, c.loss.mse_weight, c.loss.l1_weight)) >= 0 and sum(w) > 0,
          "and mse_weight, l1_weight must be >= 0 with a positive sum"),
    Check("loss.lpips_weight", lambda v, c: v >= 0, "must be >= 0, got {v}"),
    Check("loss.lpips_size", lambda v, c: (v or c.image_size) >= 32,
          "(or image_size) must be >= 32 for LPIPS, got {size}", lambda c: c.loss.lpips_weight > 0),
    Check("loss.lpips_size", lambda v, c: v <= MAX_IMAGE_SIZE,
          f"must be at most {MAX_IMAGE_SIZE}, got {{v}}"),
    Check("loss.kl_warmup_steps", lambda v, c: v >= 0, "must be >= 0 (0 = none), got {v}"),
    Check("ema_decay", lambda v, c: 0 <= v < 1,
          "must be in [0, 1) (0 = off; at 1 the average would never move), got {v}"),
    Check("loss.adversarial_weight", lambda v, c: v >= 0, "must be >= 0 (0 = off), got {v}"),
    Check("loss.adversarial_start", lambda v, c: v >= 0, "must be >= 0, got {v}"),
    Check("discriminator.width", lambda v, c: v > 0 and (v <= 8 or v % 8 == 0),
          "must be positive and at most 8 or a multiple of 8, got {v}"),
    Check("discriminator.learning_rate", lambda v, c: v > 0, "must be positive, got {v}"),
    Check("choose_sampler_n", lambda v, c: v >= 8, "must be at least 8, got {v}"),
    Check("gmm_components", lambda v, c: v > 0, "must be positive, got {v}"),
    Check("plateau.factor", lambda v, c: 0 < v < 1, "must be in (0, 1), got {v}"),
    Check("plateau.patience", lambda v, c: v >= 0, "must be >= 0, got {v}"),
    Check("early_stop_patience", lambda v, c: v >= 1, "must be at least 1, got {v}"),
    Check("weight_decay", lambda v, c: v >= 0, "must be >= 0 (0 = off), got {v}"),
    Check("grad_clip_norm", lambda v, c: v >= 0, "must be >= 0 (0 = off), got {v}"),
    Check("data.source", lambda v, c: v in SOURCES, "is not a known source: '{v}'"),
    Check("data.path", lambda v, c: bool(v),
          "must name a folder of images when data.source is 'folder'",
          lambda c: c.data.source == "folder"),
    Check("data.face_margin", lambda v, c: 0 <= v <= 2, "must be in [0, 2], got {v}"),
    Check("data.pipeline", lambda v, c: v in ("auto", "device", "grain"),
          "must be auto, device or grain, got '{v}'"),
    Check("data.device_memory_mb", lambda v, c: v >= 0, "must be >= 0, got {v}"),
    Check("data.grain_threads", lambda v, c: v >= 1 and c.data.prefetch_batches >= 1,
          "and data.prefetch_batches must be at least 1"),
    Check("data.num_train", lambda v, c: v > 0, "must be positive, got {v}"),
    Check("data.num_validation", lambda v, c: v > 0, "must be positive, got {v}"),
    Check("data.num_test", lambda v, c: v >= 0, "must be >= 0, got {v}"),
    Check("wandb.mode", lambda v, c: v in ("offline", "online", "disabled"),
          "must be offline, online or disabled, got '{v}'"),
    Check("log_every_steps", lambda v, c: v > 0, "must be positive, got {v}"),
    Check("train_ssim_images", lambda v, c: v >= 0, "must be >= 0 (0 = all), got {v}"),
    Check("steps_per_call", lambda v, c: not isinstance(v, bool) and isinstance(v, int) and v >= 1,
          "must be a positive integer, got {v!r}"),
    Check("kernels", lambda v, c: v in KERNELS,
          f"must be one of {', '.join(KERNELS)}, got '{{v}}'"),
    Check("dtype", lambda v, c: v in DTYPES, f"must be one of {', '.join(DTYPES)}, got '{{v}}'"),
    Check("num_eval_images", lambda v, c: v >= 1, "must be at least 1, got {v}"),
)  # fmt: skip


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises UserError naming the first field whose value is out of range: any non-finite
    number, then the first failing entry of CHECKS."""
    flat = flatten(config.to_dict())
    for field, value in flat.items():
        if isinstance(value, float) and not math.isfinite(value):
            _fail(field, f"must be a finite number, got {value}")
    for check in CHECKS:
        try:
            if not check.applies(config):
                continue
            value = _get(config, check.field)
            ok = check.ok(value, config)
        except (TypeError, KeyError, AttributeError, ValueError):  # e.g. null, "8", a list
            _fail(check.field, _wrong_type(config, check.field))
        if not ok:
            _fail(check.field, _why(check, value, config))


def _why(check: Check, value: Any, config: ml_collections.ConfigDict) -> str:
    """The reason of a failed `check`, with its placeholders filled in."""
    try:
        size = config.loss.lpips_size or config.image_size
        n = len(config.model.widths)
    except (TypeError, KeyError, AttributeError):  # a config of the wrong structure
        size = n = "?"
    factor = 2**n if isinstance(n, int) else "?"
    return check.why.format(v=value, c=config, factor=factor, n=n, size=size)


def _wrong_type(config: ml_collections.ConfigDict, field: str) -> str:
    """Why `field` cannot be checked: it is missing, or its value has the wrong type."""
    try:
        return f"has a value of the wrong type: {_get(config, field)!r}"
    except (TypeError, KeyError, AttributeError):
        return "is missing"


def _get(config: ml_collections.ConfigDict, field: str) -> Any:
    for name in field.split("."):
        config = config[name]
    return config


# config.json records the version of the config that wrote it (version 1: no `config_version`
# field). EARLIER_VALUES[v]: fields that version v added or changed, with what they meant in the
# configs before it; `upgrade` writes them into an older config before its saved values.
CONFIG_VERSION = 3
EARLIER_VALUES = {
    2: {
        "lr_schedule": "constant",
        "ema_decay": 0.0,
        "train_ssim_images": 0,
        "flow_prior": True,
        "loss.lpips_weight": 0.0,
        "loss.lpips_size": 0,
        "wandb.group": "",
    },
    3: {"gmm_components": 10},
}


def read_json(path: epath.Path) -> ml_collections.ConfigDict:
    """A workdir's config.json, upgraded to today's ConfigDict (`upgrade`) and validated;
    UserError when it is unreadable, not JSON, not a config (a field of the wrong type, at any
    depth) or holds a value `validate` refuses (e.g. an unknown model.name)."""
    try:
        saved = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path} is not a readable config.json: {e}") from e
    try:
        config = upgrade(saved)
    except (TypeError, ValueError, AttributeError, KeyError) as e:
        raise UserError(f"{path} is not a catvae_jax config.json: {_one_line(e)[:200]}") from e
    try:  # the right structure with an impossible value (an unknown model, z_dim -3, ...)
        validate(config)
    except UserError as e:
        raise UserError(f"{path} is not a usable config.json: {e}") from e
    return config


def upgrade(saved: dict) -> ml_collections.ConfigDict:
    """A config dict of any version as today's ConfigDict: today's defaults, then what each
    field added or changed since its version meant then (EARLIER_VALUES), then the saved
    values; `config_version` is set to CONFIG_VERSION. Fields today's config lacks (e.g. the
    `dataset` a run records) are kept."""
    if not isinstance(saved, dict):
        raise TypeError(f"expected a JSON object, got {type(saved).__name__}")
    version = saved.get("config_version", 1)
    config = get_config()
    for since, fields in EARLIER_VALUES.items():
        if version < since:
            for field, value in fields.items():
                _set(config, field, value)
    _merge(config, saved)
    config.config_version = CONFIG_VERSION
    return config


def _set(config: ml_collections.ConfigDict, field: str, value) -> None:
    *parents, leaf = field.split(".")
    for name in parents:
        config = config[name]
    config[leaf] = value


def _merge(config: ml_collections.ConfigDict, saved: dict) -> None:
    """Writes `saved` (nested dicts) into `config`; lists become tuples where the default is one."""
    for key, value in saved.items():
        if isinstance(value, dict):
            if not isinstance(config.get(key), ml_collections.ConfigDict):
                config[key] = ml_collections.ConfigDict()
            _merge(config[key], value)
        elif isinstance(value, list) and isinstance(config.get(key), tuple):
            config[key] = tuple(value)
        elif key in config and config[key] is not None and value is not None:
            config[key] = type(config[key])(value) if _widens(config[key], value) else value
        else:
            with config.ignore_type():
                config[key] = value


def _widens(default, value) -> bool:
    """An int saved where today's default is a float (JSON writes 1.0 as 1.0, but a user's
    --config.x=1 may have been saved as 1)."""
    return isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


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
