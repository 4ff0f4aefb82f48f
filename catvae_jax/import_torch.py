"""Import a checkpoint of the original PyTorch VAE_cats `Model` into a catvae_jax workdir.

    python -m catvae_jax.import_torch --ckpt model.ckpt --workdir runs/imported \
        [--config configs/exp1.py]

The file is read with ``torch.load(weights_only=True)``: tensors and plain containers only, never
pickled code. A PyTorch Lightning ``.ckpt`` (a dict with ``state_dict``) and a bare state_dict are
both accepted. Its weights become the parameters of `vae_cats_v1` (layouts below); the workdir
gets config.json and one Orbax checkpoint with a fresh optimizer state, so `catvae_jax.load`,
generate, evaluate, serve and resumed training all accept it.

Layouts (PyTorch → flax.nnx):
- Conv2d weight ``(out, in, kh, kw)`` → nnx.Conv kernel ``(kh, kw, in, out)``:
  transpose(2, 3, 1, 0).
- Linear weight ``(out, in)`` → nnx.Linear kernel ``(in, out)``: transpose.
- ConvTranspose2d weight ``(in, out, kh, kw)`` → layers.ConvTranspose kernel ``(kh, kw, in, out)``:
  transpose(2, 3, 0, 1), no spatial flip (checked against PyTorch in
  tests/e2e/test_import_torch.py).
"""

from __future__ import annotations

import sys
import warnings
import zipfile
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags
from etils import epath

from catvae_jax import cli
from catvae_jax import config as config_lib
from catvae_jax.errors import UserError
from catvae_jax.model import networks
from catvae_jax.model.networks import VaeCatsV1
from catvae_jax.train import state as state_lib
from catvae_jax.train import workdir as workdir_lib
from catvae_jax.train.checkpoint import Checkpoints

# (PyTorch module name, path of the nnx module in VaeCatsV1, weight permutation).
_CONV, _LINEAR, _CONV_T = (2, 3, 1, 0), (1, 0), (2, 3, 0, 1)
LAYOUT: list[tuple[str, tuple[Any, ...], tuple[int, ...]]] = [
    *[(f"encode.{2 * i}", ("encode_layers", i), _CONV) for i in range(4)],
    ("FC_mean", ("FC_mean",), _LINEAR),
    ("FC_var", ("FC_var",), _LINEAR),
    ("fc", ("fc",), _LINEAR),
    *[(f"decode.{2 * i + 1}", ("decode_layers", i), _CONV_T) for i in range(5)],
]


def _load_error(e: Exception) -> str:
    """The reason in torch.load's error: the unpickler's own line, not its long preamble."""
    text = str(e)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(e).__name__)
    return first[:160]


MAX_STEP = 2**31 - 1  # a checkpoint's step is an int32


def read_state_dict(path: str | epath.Path) -> tuple[dict[str, np.ndarray], int]:
    """(state_dict as float32 numpy arrays, the checkpoint's global_step or 0) of a torch file.

    Raises UserError when the file is missing, is not a weights-only torch file (e.g. it would
    run pickled code), holds no state_dict, a tensor with NaN or inf, or a global_step outside
    [0, 2**31 - 1].
    """
    path = epath.Path(path)
    if path.is_dir():
        raise UserError(f"checkpoint file {path} is a folder, not a file")
    if not path.is_file():
        raise UserError(f"checkpoint file {path} does not exist")
    try:
        import torch  # an optional extra (catvae_jax[torch]), slow to import: only when used
    except ImportError as e:
        raise UserError(
            "importing PyTorch checkpoints needs torch: pip install 'catvae_jax[torch]'"
        ) from e
    try:
        with warnings.catch_warnings():  # e.g. torch's note on an unusual pickle protocol
            warnings.simplefilter("ignore")
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, RuntimeError, EOFError, zip errors, ...
        zipped = "" if zipfile.is_zipfile(str(path)) else " (not the zip archive torch.save writes)"
        raise UserError(
            f"cannot read {path} as a weights-only PyTorch checkpoint (nothing pickled is run): "
            f"{_load_error(e)}{zipped}. If you trust the file, save its tensors alone with "
            f"torch.save(ckpt['state_dict'], 'weights.pt') and import that"
        ) from e
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        step = obj.get("global_step", 0)
        state_dict, step = obj["state_dict"], step if isinstance(step, int) else 0
        if not 0 <= step <= MAX_STEP:
            raise UserError(
                f"{path} has global_step {step}; a step must be in [0, {MAX_STEP}] "
                "(save the checkpoint with a valid global_step, or its state_dict alone)"
            )
    elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state_dict, step = obj, 0
    else:
        raise UserError(f"{path} holds neither a Lightning checkpoint nor a state_dict")
    arrays = {}
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise UserError(f"state_dict entry '{key}' in {path} is not a tensor")
        arrays[key] = value.detach().to(torch.float32).numpy()
        if not np.isfinite(arrays[key]).all():
            raise UserError(f"state_dict entry '{key}' in {path} holds NaN or inf values")
    return arrays, step


def _strip_prefix(state_dict: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Drops a common wrapper prefix such as ``model.`` (keys then start with ``encode.0``)."""
    for key in state_dict:
        if key.endswith("encode.0.weight") and key != "encode.0.weight":
            prefix = key[: -len("encode.0.weight")]
            if all(k.startswith(prefix) for k in state_dict):
                return {k[len(prefix) :]: v for k, v in state_dict.items()}
    return state_dict


def load_into(model: VaeCatsV1, state_dict: dict[str, np.ndarray]) -> None:
    """Copies the original Model's `state_dict` into a VaeCatsV1 `model` in place.

    Raises UserError naming the first missing, unexpected or mis-shaped key.
    """
    state_dict = _strip_prefix(state_dict)
    expected = set()
    for torch_name, path, perm in LAYOUT:
        module = model
        for part in path:
            module = module[part] if isinstance(part, int) else getattr(module, part)
        for name, param, axes in (("weight", module.kernel, perm), ("bias", module.bias, (0,))):
            key = f"{torch_name}.{name}"
            expected.add(key)
            if key not in state_dict:
                raise UserError(
                    f"checkpoint has no '{key}': not a checkpoint of the original Model"
                )
            value = state_dict[key]
            want = tuple(param[...].shape[i] for i in np.argsort(axes))
            if value.shape != want:
                raise UserError(
                    f"checkpoint key '{key}' has shape {tuple(value.shape)} but the config's "
                    f"model needs {want} (model.h_dim/z_dim or image channels differ)"
                )
            param[...] = jnp.asarray(np.ascontiguousarray(value.transpose(axes)))
    extra = sorted(set(state_dict) - expected)
    if extra:
        raise UserError(f"checkpoint key '{extra[0]}' is not part of the original Model")


def import_checkpoint(
    ckpt: str | epath.Path, workdir: str | epath.Path, config: ml_collections.ConfigDict
) -> int:
    """Writes `workdir` (config.json + one Orbax checkpoint) from the torch checkpoint `ckpt`.

    `config` must name model `vae_cats_v1`. Returns the step of the written checkpoint (the
    Lightning global_step, or 0). Raises UserError for any input a user can fix.
    """
    config_lib.validate(config)
    if config.model.name != "vae_cats_v1":
        raise UserError(
            f"config field 'model.name' must be 'vae_cats_v1' to import the original model, "
            f"got '{config.model.name}'"
        )
    workdir = epath.Path(workdir)
    _refuse_checkpoints(workdir)
    state_dict, step = read_state_dict(ckpt)
    model = networks.init_compiled(config)
    load_into(model, state_dict)
    _, state = state_lib.init_state(config, model)
    state = state.replace(step=jax.numpy.asarray(step, jax.numpy.int32))

    workdir = workdir_lib.create(workdir)
    lock = workdir_lib.lock(workdir, "import_torch")  # no training may write here meanwhile
    try:
        _refuse_checkpoints(workdir)  # again: one may have appeared meanwhile
        config_dict = workdir_lib.bootstrap(workdir, config)
        ckpts = Checkpoints(workdir)
        try:
            origin = str(epath.Path(ckpt).resolve())
            progress = workdir_lib.Progress()
            workdir_lib.save(
                ckpts, step, state, progress, config_dict, float("inf"), imported_from=origin
            )
            ckpts.wait()
        finally:
            ckpts.close()
    finally:
        lock.release()
    return step


def _refuse_checkpoints(workdir: epath.Path) -> None:
    if (workdir / "checkpoints").exists() and any((workdir / "checkpoints").iterdir()):
        raise UserError(f"workdir {workdir} already holds checkpoints; use a new workdir")


def define_flags() -> None:
    """Defines the flags of this command (called by `run`, so importing the module defines none)."""
    cli.define_config_file("exp1.py", "Config of the vae_cats_v1 model to import into.")
    flags.DEFINE_string("ckpt", None, "PyTorch Lightning .ckpt or state_dict file.")
    flags.DEFINE_string("workdir", None, "New catvae_jax workdir to write.")
    flags.mark_flags_as_required(["ckpt", "workdir"])


def main(argv: list[str]) -> None:
    f = flags.FLAGS
    with cli.user_errors():
        step = import_checkpoint(f.ckpt, f.workdir, f.config)
    print(f"imported {f.ckpt} as step {step} into {f.workdir}", flush=True)


def run() -> None:
    cli.run_app(main, define_flags)


if __name__ == "__main__":
    sys.exit(run())
