"""A trained model as one file, `NAME.catvae`: what `export` writes and every reader of a workdir
also reads (`catvae_jax.load`, generate, reconstruct, interpolate, evaluate, serve, and
`--config.init_from`).

A model file is a zip archive, or the same files in a folder (the Hugging Face model layout:
push the folder to a hub as it is):

    catvae.json        format, version, checkpoint step, storage dtype, package version
    config.json        the run's resolved config (WORKDIR/config.json)
    model.safetensors  the evaluation parameters (the EMA when trained with one), named
                       like "enc_blocks/0/0/conv1/kernel"; float32, or float16 to halve the file
    prior.safetensors  the checkpoint's learned prior (catvae_jax/priors/flow.py), if fitted;
                       its couplings' weights float16 in a float16 file since VERSION 3
    gmm.safetensors    its Gaussian mixture (catvae_jax/priors/gmm.py), if one was cached:
                       weights, means, and since VERSION 3 each covariance's principal
                       directions above its floor, float16 in a float16 file
                       (GaussianMixture.packed); VERSION 2 held packed Cholesky factors and
                       VERSION 1 float32 covariances, which readers still take
    bpd_range.json     its bits/dim range (catvae_jax/bpd_range.py), if computed
    eval.json          the evaluate command's metrics, if the workdir had them
    sampler_choice.json  the measured choice of the `auto` sampler (catvae_jax/priors/choice.py),
                       if the workdir had one for the checkpoint: keyed to the digest of the
                       parameters as stored here (`measured_params_sha256`: the checkpoint's it
                       was measured on, other ones with float16); without it `auto` takes the
                       fixed order (flow, else gmm, else N(0, I)). Optional: files without it,
                       and readers that predate it, work as before (it left VERSION at 1)
    README.md          the model card; samples.png: 64 samples of the shipped parameters
    checksums.sha256   the sha256 of every other file, in `sha256sum -c` format

Reading unpickles nothing (JSON and safetensors only) and checks every checksum before it uses
anything: a damaged or altered file, an unlisted member, or one over 1 GiB is refused in one line,
and so is a sampler choice of other parameters or of a sampler the file does not hold.

`pretrained:<name>` names a model file shipped inside the package,
catvae_jax/pretrained/<name>.catvae; the sha256 of the whole file is checked against the one in
<name>.json beside it (with the command that trained it and its metrics).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import pathlib
import re
import shutil
import uuid
import zipfile
from collections.abc import Callable
from typing import Any, TypeVar

import jax
import numpy as np
from etils import epath

from catvae_jax import atomic, bpd_range
from catvae_jax.config import latent_size
from catvae_jax.errors import UserError
from catvae_jax.priors import choice, flow, gmm, stored

FORMAT = "catvae"
VERSION = 3
SUFFIX = ".catvae"
PREFIX = "pretrained:"
MANIFEST = "checksums.sha256"
INFO, CONFIG, PARAMS = "catvae.json", "config.json", "model.safetensors"
PRIOR, MIXTURE, BPD_RANGE, METRICS, SAMPLER_CHOICE = (
    "prior.safetensors",
    "gmm.safetensors",
    "bpd_range.json",
    "eval.json",
    "sampler_choice.json",
)
REQUIRED = (INFO, CONFIG, PARAMS)
MAX_MEMBER_BYTES = 1 << 30
DTYPES = ("float32", "float16")
PRETRAINED_DIR = pathlib.Path(__file__).resolve().parent / "pretrained"
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed member times: the same model, the same bytes
T = TypeVar("T")


def is_model_file(source: str | os.PathLike) -> bool:
    """Whether `source` names a model file (`pretrained:<name>`, a file, or a folder holding a
    checksum manifest) rather than a training workdir."""
    text = os.fspath(source)
    if text.startswith(PREFIX):
        return True
    path = epath.Path(text)
    return path.is_file() or (path.is_dir() and (path / MANIFEST).exists())


def output_path(workdir: str | os.PathLike, name: str) -> epath.Path:
    """Where a command writes its output `name` by default: into a workdir, or into the current
    folder when `workdir` is a model file."""
    return epath.Path(name) if is_model_file(workdir) else epath.Path(workdir) / name


def pretrained_names() -> list[str]:
    """The names of the models shipped in the package."""
    return sorted(p.stem for p in PRETRAINED_DIR.glob(f"*{SUFFIX}"))


def pretrained_info(name: str) -> dict:
    """catvae_jax/pretrained/<name>.json: the shipped file's sha256 and size, the command that
    trained it and its metrics."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name not in pretrained_names():
        have = ", ".join(pretrained_names()) or "none"
        raise UserError(f"no pretrained model '{name}' (shipped: {have})")
    try:
        return json.loads((PRETRAINED_DIR / f"{name}.json").read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"pretrained model '{name}' has no readable {name}.json: {e}") from e


def locate(source: str | os.PathLike) -> epath.Path:
    """The path of model file `source`; for `pretrained:<name>` the shipped file, after its
    sha256 is checked against <name>.json (UserError when it differs)."""
    text = os.fspath(source)
    if not text.startswith(PREFIX):
        return epath.Path(text)
    name = text[len(PREFIX) :]
    want = pretrained_info(name).get("sha256")
    path = PRETRAINED_DIR / f"{name}{SUFFIX}"
    have = hashlib.sha256(path.read_bytes()).hexdigest()
    if have != want:
        raise UserError(
            f"pretrained model '{name}' is damaged: {path} has sha256 {have[:12]}…, "
            f"{name}.json says {str(want)[:12]}…; reinstall catvae_jax"
        )
    return epath.Path(path)


@dataclasses.dataclass(frozen=True)
class ModelFile:
    """The verified members of a model file, by name (bytes), and readers of each."""

    source: str
    files: dict[str, bytes]

    def json(self, name: str) -> Any:
        """Member `name` parsed as JSON, None when the file has no such member."""
        if name not in self.files:
            return None
        try:
            return json.loads(self.files[name])
        except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
            raise UserError(f"{self.source}: {name} is not JSON ({e})") from e

    @property
    def info(self) -> dict:
        return self.json(INFO)

    @property
    def step(self) -> int | None:
        step = self.info.get("step")
        return None if step is None else int(step)

    @property
    def config(self) -> dict:
        return self.json(CONFIG)

    def tensors(self, name: str) -> dict[str, np.ndarray] | None:
        """The arrays of a safetensors member, None when there is no such member."""
        if name not in self.files:
            return None
        return read_tensors(self.files[name], f"{self.source}: {name}")

    def params(self) -> dict[str, np.ndarray]:
        """The evaluation parameters by name (`flatten_params` names), as stored."""
        return self.tensors(PARAMS)

    def flow(self) -> flow.Flow | None:
        """The learned prior, or None when the file has none."""
        return self._prior(PRIOR, flow.Flow.from_arrays)

    def mixture(self) -> gmm.GaussianMixture | None:
        """The Gaussian mixture of the gmm sampler, or None when the file has none."""
        return self._prior(MIXTURE, gmm.GaussianMixture.from_arrays)

    def _prior(self, name: str, from_arrays: Callable[..., T]) -> T | None:
        """from_arrays(the arrays of member `name` as float32, z_dim) (checked as a sampler file
        is), or None when the file has no such member; a UserError when they are unusable."""
        arrays = self.tensors(name)
        if arrays is None:
            return None
        try:
            return from_arrays(as_float32(arrays), latent_size(self.config))
        except (stored.Unusable, KeyError, TypeError, ValueError) as e:
            raise UserError(f"{self.source}: {name} is unusable ({e})") from e

    def sampler_choice(self, params_sha256: str) -> dict | None:
        """The measured choice of `auto` (SAMPLER_CHOICE: a record whose `choice` is one of
        priors/choice.py's CHOOSABLE), None when the file has none; a UserError when it is not
        the choice of this checkpoint's parameters as loaded (digest `params_sha256`) or
        chooses a sampler the file does not hold."""
        record = self.json(SAMPLER_CHOICE)
        if record is None:
            return None
        why = choice.damage(record, self.step, params_sha256)
        held = {"flow": PRIOR, "gmm": MIXTURE}.get(record.get("choice"))  # prior: always drawn
        if not why and held is not None and held not in self.files:
            why = f"it chooses the {record['choice']} sampler, which the file does not hold"
        if why:
            raise UserError(f"{self.source}: {SAMPLER_CHOICE} is unusable ({why})")
        return record

    def bpd_range(self) -> bpd_range.BpdRange | None:
        """The bits/dim range, or None when the file has none."""
        found = self.json(BPD_RANGE)
        if found is None:
            return None
        try:
            return bpd_range.BpdRange.from_dict(found)
        except (KeyError, ValueError, TypeError) as e:
            raise UserError(f"{self.source}: {BPD_RANGE} is not a bits/dim range ({e})") from e


def read(source: str | os.PathLike) -> ModelFile:
    """The model file `source` (a .catvae archive, a model folder or `pretrained:<name>`), every
    member checked against the checksum manifest. UserError, in one line, for anything else."""
    path = locate(source)
    files = _read_folder(path) if path.is_dir() else _read_zip(path)
    _verify(files, os.fspath(source))
    model = ModelFile(os.fspath(source), files)
    info = model.info
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise UserError(f"{source} is not a catvae model file ({INFO} names another format)")
    if int(info.get("version", 0)) > VERSION:
        raise UserError(
            f"{source} is a version {info['version']} model file; this catvae_jax reads up to "
            f"version {VERSION}: upgrade catvae_jax"
        )
    if not isinstance(model.config, dict):
        raise UserError(f"{source}: {CONFIG} is not a config")
    return model


def _read_zip(path: epath.Path) -> dict[str, bytes]:
    try:
        with zipfile.ZipFile(io.BytesIO(path.read_bytes())) as archive:
            members = archive.infolist()
            for m in members:
                if m.is_dir() or not _plain(m.filename):
                    raise UserError(f"{path} has an unexpected member '{m.filename[:80]}'")
                if m.file_size > MAX_MEMBER_BYTES:
                    raise UserError(f"{path}: member {m.filename} is over 1 GiB unpacked")
            return {m.filename: archive.read(m) for m in members}
    except FileNotFoundError as e:
        raise UserError(f"model file {path} does not exist") from e
    except OSError as e:
        raise UserError(f"cannot read model file {path}: {e.strerror or e}") from e
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError) as e:
        raise UserError(f"{path} is not a catvae model file (not a readable zip: {e})") from e


def _read_folder(path: epath.Path) -> dict[str, bytes]:
    """The regular, non-hidden files of a model folder (a hub clone's .git and .gitattributes
    are not members)."""
    files = {}
    try:
        for entry in sorted(path.iterdir()):
            if entry.name.startswith(".") or entry.is_dir():
                continue
            if entry.stat().length > MAX_MEMBER_BYTES:
                raise UserError(f"{path}: {entry.name} is over 1 GiB")
            files[entry.name] = entry.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read model folder {path}: {e.strerror or e}") from e
    return files


def _plain(name: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name))


def _verify(files: dict[str, bytes], source: str) -> None:
    """Refuses a model file whose members do not match its manifest, one way or another."""
    if MANIFEST not in files:
        raise UserError(f"{source} is not a catvae model file (no {MANIFEST})")
    listed = {}
    for line in files[MANIFEST].decode("utf-8", "replace").splitlines():
        match = re.fullmatch(r"([0-9a-f]{64}) [ *](\S+)", line.strip())
        if not match:
            raise UserError(f"{source} is damaged: a line of {MANIFEST} is not 'sha256  name'")
        listed[match[2]] = match[1]
    for name in sorted(set(files) - {MANIFEST}):
        if name not in listed:
            raise UserError(f"{source} was altered: {name} is not in its {MANIFEST}")
        if hashlib.sha256(files[name]).hexdigest() != listed[name]:
            raise UserError(f"{source} is damaged or was altered: {name} fails its checksum")
    missing = [n for n in (*listed, *REQUIRED) if n not in files]
    if missing:
        raise UserError(f"{source} is incomplete: it has no {missing[0]}")


def manifest(files: dict[str, bytes]) -> bytes:
    """The checksums.sha256 of `files` (sorted by name)."""
    lines = [f"{hashlib.sha256(files[n]).hexdigest()}  {n}" for n in sorted(files)]
    return ("\n".join(lines) + "\n").encode()


def write(out: str | os.PathLike, files: dict[str, bytes]) -> epath.Path:
    """Writes `files` plus their manifest as a model file: a zip archive when `out` ends in
    .catvae, else a new folder. Atomic: a reader never sees a partial model file."""
    out = epath.Path(out)
    files = {**files, MANIFEST: manifest(files)}
    if out.name.endswith(SUFFIX):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
            for name in sorted(files):
                member = zipfile.ZipInfo(name, _ZIP_TIME)
                member.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(member, files[name])
        return atomic.write_atomic(out, buf.getvalue())
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} exists; a model folder is written to a new or empty folder")
    tmp = out.parent / f".{out.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        tmp.mkdir(parents=True)
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def tensors_bytes(arrays: dict[str, Any]) -> bytes:
    """`arrays` (numpy arrays or numbers: 0-d arrays) as safetensors bytes. No metadata: the
    safetensors writer orders it at random, and the same model must give the same bytes."""
    from safetensors.numpy import save  # lazily: only model files need it

    return save({k: np.asarray(v, order="C") for k, v in arrays.items()})


def read_tensors(data: bytes, where: str) -> dict[str, np.ndarray]:
    """The arrays of safetensors bytes; UserError when they are not safetensors."""
    from safetensors.numpy import load

    try:
        return load(data)
    except Exception as e:  # the safetensors reader raises its own error types
        raise UserError(f"{where} is not a safetensors file ({type(e).__name__}: {e})") from e


def as_float32(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`arrays` with float16 ones as float32, as the samplers compute."""
    return {k: v.astype(np.float32) if v.dtype == np.float16 else v for k, v in arrays.items()}


def _key_name(key: Any) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def param_names(params: Any) -> list[tuple[str, Any]]:
    """(name, leaf) of each parameter of an nnx.State, in tree order; names drop the trailing
    `value` of nnx Variables: "enc_blocks/0/0/conv1/kernel"."""
    out = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        parts = [_key_name(k) for k in path]
        if len(parts) > 1 and parts[-1] == "value":
            parts = parts[:-1]
        out.append(("/".join(parts), leaf))
    return out


def flatten_params(params: Any, dtype: str | None = None) -> dict[str, np.ndarray]:
    """The parameters of an nnx.State as {name: host array}, floats cast to `dtype` if given."""
    out = {}
    for name, leaf in param_names(params):
        array = np.asarray(jax.device_get(leaf))
        if dtype is not None and np.issubdtype(array.dtype, np.floating):
            array = array.astype(dtype)
        out[name] = array
    return out


def fill_params(like: Any, arrays: dict[str, np.ndarray], source: str) -> Any:
    """`like` (an nnx.State of arrays or ShapeDtypeStructs) with each leaf replaced by the array
    of the same name in `arrays`, cast to the leaf's dtype. A UserError naming the first
    parameter (in tree order) that `arrays` lacks or holds in another shape, then the first one
    `arrays` has that `like` lacks."""
    names = param_names(like)
    for name, leaf in names:
        if name not in arrays:
            raise UserError(f"{source} does not fit this model: it has no parameter '{name}'")
        have = tuple(arrays[name].shape)
        if have != tuple(leaf.shape):
            raise UserError(
                f"{source} does not fit this model: parameter '{name}' is {list(have)} there, "
                f"the model wants {list(leaf.shape)}"
            )
    extra = sorted(set(arrays) - {name for name, _ in names})
    if extra:
        raise UserError(
            f"{source} does not fit this model: it has parameter '{extra[0]}', the model has not"
        )
    leaves = iter(np.asarray(arrays[name], leaf.dtype) for name, leaf in names)
    return jax.tree.unflatten(jax.tree.structure(like), list(leaves))
