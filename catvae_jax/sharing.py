"""Sharing a trained model: `export` writes one checkpoint of a workdir as a model file
(catvae_jax/model_file.py) with its model card, and `ship` describes one for the package's
`pretrained:` models (catvae_jax/pretrained/<name>.json).

Exporting reads the workdir and writes nothing in it. The model card (README.md) names the data
set, the commands that trained the run (WORKDIR/command.txt, written by `catvae_jax.main`), the
evaluate metrics (WORKDIR/eval.json, when it is of the exported checkpoint) and shows 64 samples
of the stored parameters (samples.png) drawn by the sampler `auto` uses: the workdir's measured
choice (WORKDIR/sampler_<step>.json, catvae_jax/priors/choice.py), which the file carries, or
else the fixed order. float16 storage halves the file; the card and the samples are of the
parameters as stored, the sampler choice was measured on the checkpoint's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys

import numpy as np
from etils import epath

import catvae_jax
from catvae_jax import config as config_lib
from catvae_jax import images, inference, model_file
from catvae_jax.errors import UserError
from catvae_jax.evaluation import sample_quality, typicality
from catvae_jax.priors import choice, flow, gmm
from catvae_jax.train import workdir as workdir_lib

NUM_SAMPLES = 64
FD_CHECK_N = 200
METRIC_ROWS = (  # eval.json key, label
    ("fd", "FD (AlexNet features) of samples"),
    ("kid", "KID of samples"),
    ("precision", "precision"),
    ("recall", "recall"),
    ("diversity", "diversity (LPIPS between samples)"),
    ("fd_recon", "FD of reconstructions (the decoder's limit)"),
    ("fd_floor", "FD of held-out real images (the floor)"),
    ("kid_floor", "KID of held-out real images"),
    ("bits_per_dim", "bits/dim (IW bound)"),
    ("neg_elbo_nats", "-ELBO (nats/image)"),
    ("ssim", "SSIM of reconstructions"),
    ("psnr", "PSNR of reconstructions (dB)"),
    ("ms_ssim", "MS-SSIM of reconstructions"),
    ("active_units", "active latent units"),
)


@dataclasses.dataclass(frozen=True)
class Exported:
    """What `export` wrote: the model file, its checkpoint, size and members."""

    path: epath.Path
    step: int
    num_bytes: int
    num_params: int
    dtype: str
    members: tuple[str, ...]
    sampler: str
    commands: tuple[str, ...]  # that trained the run (WORKDIR/command.txt), oldest first


def export(
    workdir: str | os.PathLike,
    out: str | os.PathLike,
    step: str | int = "best",
    dtype: str = "float32",
) -> Exported:
    """Writes checkpoint `step` of `workdir` as the model file `out` (a zip when it ends in
    .catvae, else a new folder), parameters stored as `dtype` (float32 or float16)."""
    if dtype not in model_file.DTYPES:
        raise UserError(f"dtype must be one of {', '.join(model_file.DTYPES)}, got '{dtype}'")
    if model_file.is_model_file(workdir):
        raise UserError(f"{workdir} is a model file already; export reads a training workdir")
    parent = epath.Path(out).parent
    if not parent.is_dir():
        raise UserError(f"cannot write {out}: folder {parent} does not exist")
    model = inference.load(workdir, step)
    stored = model_file.flatten_params(model.params, dtype)
    mixture = _cached_mixture(model)
    packed_mixture = None if mixture is None else mixture.packed(dtype)
    flow_arrays = None if model.flow is None else model.flow.tensors(dtype)
    shared = _as_stored(model, stored, flow_arrays, packed_mixture)
    shared.choice = _shipped_choice(model, shared, dtype)
    files = {
        model_file.INFO: _json(_info(shared, dtype, len(stored))),
        model_file.CONFIG: _json(shared.config.to_dict()),
        model_file.PARAMS: model_file.tensors_bytes(stored),
    }
    if flow_arrays is not None:
        files[model_file.PRIOR] = model_file.tensors_bytes(flow_arrays)
    if packed_mixture is not None:
        files[model_file.MIXTURE] = model_file.tensors_bytes(packed_mixture)
    if shared.bpd_range is not None:
        files[model_file.BPD_RANGE] = _json(shared.bpd_range.to_dict())
    metrics = _metrics(workdir, shared.step)
    if metrics is not None:
        files[model_file.METRICS] = _json(metrics)
    if shared.choice is not None:
        files[model_file.SAMPLER_CHOICE] = _json(shared.choice)
    sampler = shared.resolve_sampler("auto")
    samples = shared.generate(NUM_SAMPLES, seed=int(shared.config.seed), sampler=sampler)
    files["samples.png"] = images.png_bytes(images.grid(samples, ncols=8))
    commands = tuple(workdir_lib.read_commands(workdir))
    card = model_card(shared, epath.Path(out).name, dtype, stored, metrics, commands, sampler)
    files["README.md"] = card.encode()
    path = model_file.write(out, files)
    size = sum(f.stat().length for f in path.iterdir()) if path.is_dir() else path.stat().length
    members = (*sorted(files), model_file.MANIFEST)
    count = _count(stored)
    return Exported(path, int(shared.step), size, count, dtype, members, sampler, commands)


def _as_stored(
    model: inference.VaeModel,
    stored: dict[str, np.ndarray],
    flow_arrays: dict[str, np.ndarray] | None,
    packed_mixture: dict[str, np.ndarray] | None,
) -> inference.VaeModel:
    """A copy of `model` as a reader will load it: its parameters `stored`, the checkpoint's
    flow and cached mixture as stored (`flow_arrays`, Flow.tensors; `packed_mixture`,
    GaussianMixture.packed) and the bits/dim range (measured now when the workdir has none and
    its data can be read)."""
    params = model_file.fill_params(model.params, stored, "the stored parameters")
    shared = inference.VaeModel(model.graphdef, params, model.config, step=model.step)
    if flow_arrays is not None:
        shared.flow = flow.Flow.from_arrays(model_file.as_float32(flow_arrays), model.z_dim)
    if packed_mixture is not None:
        arrays = model_file.as_float32(packed_mixture)
        shared.gmm = gmm.GaussianMixture.from_arrays(arrays, model.z_dim)
    shared.bpd_range = model.bpd_range
    if shared.bpd_range is None:
        try:
            shared.bpd_range = typicality.fit_range(shared)
        except (UserError, OSError) as e:
            print(f"warning: the model file gets no bits/dim range: {e}", file=sys.stderr)
    return shared


def _shipped_choice(
    model: inference.VaeModel, shared: inference.VaeModel, dtype: str
) -> dict | None:
    """The workdir's measured choice of `auto` for the exported checkpoint (read and checked
    against its parameters' digest by `load`), keyed to the parameters as stored
    (`choice.rekeyed`): a ranking of samplers, which float16 storage does not redo. None when
    there is none, or when the file will not hold the chosen sampler (a warning)."""
    if model.choice is None:
        return None
    name = model.choice["choice"]
    held = {"flow": shared.flow, "gmm": shared.gmm}  # prior: always drawn
    if name in held and held[name] is None:
        print(
            f"warning: the model file gets no sampler choice: its chosen {name} sampler is not "
            f"stored for checkpoint {model.step}; auto uses flow, else gmm, else N(0, I)",
            file=sys.stderr,
        )
        return None
    return choice.rekeyed(model.choice, shared.params_sha256, stored_dtype=dtype)


def _cached_mixture(model: inference.VaeModel) -> gmm.GaussianMixture | None:
    """The gmm sampler's mixture cached in the workdir for the model's step, if any."""
    if model.workdir is None:
        return None
    path = gmm.cache_path(model.workdir, model.step)
    k, cap = model.config.gmm_components, gmm.DEFAULT_MAX_IMAGES
    return gmm.read_cached(path, k, cap, model.z_dim, model.params_sha256)


def _metrics(workdir: str | os.PathLike, step: int) -> dict | None:
    """WORKDIR/eval.json when it is of checkpoint `step` (else a warning and None)."""
    path = epath.Path(workdir) / "eval.json"
    if not path.exists():
        return None
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        print(f"warning: ignoring unreadable {path}: {e}", file=sys.stderr)
        return None
    if metrics.get("checkpoint_step") != step:
        print(
            f"warning: {path} is of checkpoint {metrics.get('checkpoint_step')}, not {step}: "
            "the model file gets no metrics",
            file=sys.stderr,
        )
        return None
    return metrics


def _info(model: inference.VaeModel, dtype: str, num_arrays: int) -> dict:
    return {
        "format": model_file.FORMAT,
        "version": model_file.VERSION,
        "step": int(model.step),
        "dtype": dtype,
        "arrays": num_arrays,
        "catvae_jax": catvae_jax.__version__,
    }


def _json(obj) -> bytes:
    return (json.dumps(obj, indent=2) + "\n").encode()


def _count(stored: dict[str, np.ndarray]) -> int:
    return int(sum(a.size for a in stored.values()))


def model_card(
    model: inference.VaeModel,
    name: str,
    dtype: str,
    stored: dict[str, np.ndarray],
    metrics: dict | None,
    commands: tuple[str, ...],
    sampler: str,
) -> str:
    """The README.md of a model file: front matter for model hubs, then what the model is, how
    to use it, how it was trained, its metrics, its bits/dim range and its files."""
    c = model.config
    dataset = c.get("dataset") or {}
    data_name = dataset.get("name", c.data.source)
    arch = f"{c.model.name}, latent size {config_lib.latent_size(c)}"
    if c.model.name in ("resvae", "hvae"):
        arch += f", widths {'–'.join(str(w) for w in (c.model.widths[0], c.model.widths[-1]))}"
    size_mb = sum(a.nbytes for a in stored.values()) / 1e6
    lines = [
        "---",
        "library_name: catvae_jax",
        "pipeline_tag: unconditional-image-generation",
        "tags: [vae, jax, flax, cats]",
        "---",
        "",
        f"# {name}",
        "",
        f"A catvae_jax variational autoencoder ({arch}) "
        f"that draws {c.image_size}×{c.image_size} cat images, trained on **{data_name}** "
        f"({dataset.get('config', '')}, version {dataset.get('version', '?')}); checkpoint "
        f"step {model.step}, {_count(stored):,} parameters stored as {dtype} "
        f"({size_mb:.1f} MB).",
        "",
        f"![{NUM_SAMPLES} samples, sampler {sampler}, seed {c.seed}](samples.png)",
        "",
        "## Use",
        "",
        "```sh",
        "pip install catvae_jax    # or, in a checkout of its repository: pip install .",
        f"python -m catvae_jax.generate --workdir {name} --n 64 --out cats.png",
        f"python -m catvae_jax.reconstruct --workdir {name} --images my_cat.jpg --resize",
        f"python -m catvae_jax.serve --workdir {name}",
        "```",
        "",
        "```python",
        "import catvae_jax",
        f'model = catvae_jax.load("{name}")',
        f"cats = model.generate(16, seed=0)  # [16, {c.image_size}, {c.image_size}, 3] in [0, 1]",
        "```",
        "",
        f"Fine-tune it on your own photos: `python -m catvae_jax.main --workdir W "
        f"--config.init_from={name} --config.data.source=folder --config.data.path=PHOTOS`.",
        "",
        "## Training",
        "",
    ]
    if commands:
        lines += ["Trained with:", "", "```sh", *commands, "```"]
    else:
        lines += ["The training command was not recorded; `config.json` holds the full config."]
    lines += [
        "",
        f"Config (`config.json`): batch {c.batch_size}, learning rate {c.learning_rate:g} "
        f"({c.lr_schedule}), {c.num_epochs} epochs, loss SSIM {c.loss.ssim_weight:g} + LPIPS "
        f"{c.loss.lpips_weight:g} + MSE {c.loss.mse_weight:g}, β {c.loss.beta:g}.",
        "",
        "## Sampler",
        "",
        *_sampler_lines(model.choice, sampler, dtype),
        "",
        "## Evaluation",
        "",
    ]
    lines += _metric_lines(metrics)
    lines += ["", "## Inputs far from the training data", ""]
    lines += _range_lines(model)
    lines += [
        "",
        "## Files",
        "",
        "`config.json` the run's config · `model.safetensors` the parameters · "
        "`prior.safetensors` the learned prior (if fitted) · `gmm.safetensors` the latent "
        "mixture (if cached) · `bpd_range.json` the bits/dim range · `eval.json` the metrics · "
        "`sampler_choice.json` the measured choice of `auto` (if measured) · "
        "`catvae.json` the format · `checksums.sha256` the sha256 of every file, checked on "
        "load (`sha256sum -c checksums.sha256`). Nothing is pickled.",
        "",
    ]
    return "\n".join(lines)


def _sampler_lines(record: dict | None, sampler: str, dtype: str) -> list[str]:
    """The card's lines on the sampler `auto` uses (`sampler`): measured (`record`, its
    figures in a table) or the fixed order."""
    uses = (
        f"`auto` (the default of generate, serve and `generate()`) uses the **{sampler}** sampler"
    )
    if record is None:
        return [
            f"{uses}: no measured choice was stored for this checkpoint, so the fixed order "
            "(flow, else gmm, else N(0, I))."
        ]
    rule = record.get("rule")
    lines = [
        f"{uses}, measured best for this checkpoint on {record.get('n', '?')} "
        f"{record.get('split', 'validation')} images (`sampler_choice.json`)"
        + (f": {rule}." if isinstance(rule, str) else ".")
    ]
    figures, ranks = _dict(record.get("figures")), _dict(record.get("ranks"))
    if figures:
        lines += [
            "",
            "| sampler | KID AlexNet | KID VGG16 | colour/edge histograms | mean rank |",
            "|---|---|---|---|---|",
        ]
    for name, fig in figures.items():
        fig, mean = _dict(fig), _dict(ranks.get(name)).get("mean")
        cells = [fig.get("kid_alexnet"), fig.get("kid_vgg16"), fig.get("pixels"), mean]
        lines.append(f"| {name} | " + " | ".join(_cell(v) for v in cells) + " |")
    if dtype != "float32":
        lines += [
            "",
            f"Measured on the checkpoint's parameters, before they were stored as {dtype}.",
        ]
    return lines


def _dict(value) -> dict:
    return value if isinstance(value, dict) else {}


def _cell(value) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:.4g}"
    return "–"


def _metric_lines(metrics: dict | None) -> list[str]:
    if metrics is None:
        return ["Not evaluated (no eval.json of this checkpoint when it was exported)."]
    split = metrics.get("split", "?")
    n = metrics.get("sample_metrics_n")
    head = f"`python -m catvae_jax.evaluate` on the {split} split"
    head += f" ({n} samples of the {metrics.get('sampler')} sampler):" if n else ":"
    rows = [head, "", "| metric | value |", "|---|---|"]
    for key, label in METRIC_ROWS:
        value = metrics.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            rows.append(f"| {label} | {value:.4g} |")
    return rows


def _range_lines(model: inference.VaeModel) -> list[str]:
    r = model.bpd_range
    if r is None:
        return ["No bits/dim range: reconstruct and serve cannot flag unfamiliar inputs."]
    q = r.quantiles
    return [
        f"`reconstruct` and `serve` flag an input whose bits/dim under the model is outside "
        f"the range of {r.num_images} {r.split} images: {q[0]:.3f}–{q[100]:.3f} "
        f"(median {q[50]:.3f}, 1st–99th percentile {q[1]:.3f}–{q[99]:.3f}).",
    ]


def ship(
    path: str | os.PathLike, commands: tuple[str, ...], n: int = FD_CHECK_N, seed: int = 0
) -> dict:
    """The description of model file `path` that `pretrained:<name>` verifies and the tests
    check: its sha256 and size, the commands that trained it, its metrics and the FD of `n`
    samples of the file as loaded (`sample_quality.sample_fd`, seed `seed`)."""
    path = epath.Path(path)
    contents = model_file.read(path)
    model = inference.load_model_file(path)
    return {
        "file": path.name,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "bytes": path.stat().length,
        "step": contents.step,
        "dtype": contents.info.get("dtype"),
        "commands": list(commands),
        "evaluate": contents.json(model_file.METRICS),
        "fd_check": {
            "n": n,
            "seed": seed,
            "split": "test",
            "sampler": model.resolve_sampler("auto"),
            "fd": sample_quality.sample_fd(model, n, seed),
        },
    }
