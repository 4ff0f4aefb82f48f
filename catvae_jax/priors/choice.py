"""The measured choice of the `auto` sampler of one checkpoint: WORKDIR/sampler_<step>.json.

Written by catvae_jax/evaluation/sampler_choice.py (at the end of training, or by the
choose_sampler command) with every figure it measured; read by `inference.load`, whose `auto`
then uses the chosen sampler. Like the sampler files (catvae_jax/priors/stored.py) it records
the digest of the checkpoint parameters it was measured on (`params_sha256`); also the sha256
of its own body and of the sampler files (flow_<step>.npz, gmm_<step>.npz) it measured. A file
that does not parse, whose digest does not match, that belongs to other parameters or another
step, names an unknown sampler, or whose chosen sampler's file has changed since (refitted) is
treated as absent, with a one-line warning (`stored.read_or_none`, as for the sampler files),
and `auto` falls back to its fixed order (flow, else gmm, else N(0, I)). It is deleted with the
sampler files when its checkpoint rotates away (`stored.remove_stale`). `export` copies it into
the model file, keyed to the parameters as stored there (`rekeyed`).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from etils import epath

from catvae_jax import atomic
from catvae_jax.priors import flow, gmm, stored

CHOOSABLE = ("prior", "gmm", "flow")
DIGEST_KEY = "sha256"
MAX_FILE_BYTES = 1 << 20  # far above a choice's figures (~2 kB)


def cache_path(workdir: str | epath.Path, step: int | None) -> epath.Path:
    """WORKDIR/sampler_<step>.json, where the sampler choice of checkpoint `step` is stored."""
    return epath.Path(workdir) / f"sampler_{step if step is not None else 'none'}.json"


def sampler_files(workdir: str | epath.Path, step: int | None) -> dict[str, epath.Path]:
    """{sampler: its file} for the samplers of checkpoint `step` that are stored in files."""
    return {"gmm": gmm.cache_path(workdir, step), "flow": flow.cache_path(workdir, step)}


def file_digest(path: epath.Path) -> str | None:
    """sha256 of a file's bytes, or None when there is no such file."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


def _body_digest(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def write(
    workdir: str | epath.Path, step: int, params_sha256: str, record: dict[str, Any]
) -> epath.Path:
    """Writes `record` (with `choice` one of CHOOSABLE) as the choice of checkpoint `step`,
    whose parameters have the digest `params_sha256`, atomically, adding `step`, that digest,
    the digests of its sampler files (`files`) and its own."""
    if record.get("choice") not in CHOOSABLE:
        raise ValueError(f"choice must be one of {CHOOSABLE}, got {record.get('choice')!r}")
    files = {name: file_digest(path) for name, path in sampler_files(workdir, step).items()}
    body = {k: v for k, v in record.items() if k != DIGEST_KEY}  # a record read back: rewritten
    body |= {"step": int(step), stored.DIGEST_KEY: params_sha256, "files": files}
    return atomic.write_json(cache_path(workdir, step), {**body, DIGEST_KEY: _body_digest(body)})


def read(
    workdir: str | epath.Path, step: int, params_sha256: str | None = None
) -> dict[str, Any] | None:
    """The stored choice of checkpoint `step` (the record, `choice` in CHOOSABLE), or None: no
    file (silently), or one that is damaged, stale or measured on other parameters than those
    of digest `params_sha256` (None: not checked), with a one-line warning on stderr
    (`stored.read_or_none`, as for the sampler files)."""

    def parse(path: epath.Path) -> dict[str, Any]:
        record = _parse(path)
        why = _damage(record, workdir, step, params_sha256)
        if why:
            raise stored.Unusable(why)
        return record

    then = "auto uses flow, else gmm, else N(0, I)"
    return stored.read_or_none(cache_path(workdir, step), "the sampler choice", parse, then)


def _parse(path: epath.Path) -> Any:
    """The JSON value of an untrusted file of at most MAX_FILE_BYTES; Unusable otherwise."""
    with path.open("rb") as f:
        data = f.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise stored.Unusable(f"it is larger than {MAX_FILE_BYTES} bytes")
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise stored.Unusable(f"not JSON ({type(e).__name__})") from e


def _damage(record: Any, workdir: str | epath.Path, step: int, params_sha256: str | None) -> str:
    """Why `record` cannot be used for checkpoint `step` of `workdir` ("" when it can)."""
    why = damage(record, step, params_sha256)
    if why:
        return why
    name = record["choice"]
    path = sampler_files(workdir, step).get(name)
    files = record.get("files")
    recorded = files.get(name) if isinstance(files, dict) else None
    if path is not None and recorded is not None and file_digest(path) not in (None, recorded):
        return f"{path.name} has changed since it was measured"
    return ""


def damage(record: Any, step: int | None, params_sha256: str | None) -> str:
    """Why the parsed `record` is not a choice of checkpoint `step` measured on the parameters
    of digest `params_sha256` (None: not checked) ("" when it is); its sampler files are not
    checked (a model file's are checked by its manifest)."""
    if not isinstance(record, dict) or DIGEST_KEY not in record:
        return "no digest"
    body = {k: v for k, v in record.items() if k != DIGEST_KEY}
    if _body_digest(body) != record[DIGEST_KEY]:
        return "its digest does not match its contents"
    if record.get("step") != step:
        return f"it is the choice of step {record.get('step')}"
    if params_sha256 is not None and record.get(stored.DIGEST_KEY) != params_sha256:
        return (
            "it was measured on other parameters than this checkpoint's (another run or an "
            "older checkpoint of this step)"
        )
    name = record.get("choice")
    if name not in CHOOSABLE:
        return f"unknown sampler {name!r}"
    return ""


def rekeyed(record: dict[str, Any], params_sha256: str, **fields: Any) -> dict[str, Any]:
    """The choice `record` of a workdir as a model file stores it (SAMPLER_CHOICE in
    catvae_jax/model_file.py): keyed to the digest `params_sha256` of the parameters as stored
    there, the digest it was measured on kept as `measured_params_sha256`, without the workdir's
    sampler file digests (the file's manifest covers its samplers), plus `fields`; its own
    digest recomputed."""
    body = {k: v for k, v in record.items() if k not in (DIGEST_KEY, "files")}
    body["measured_params_sha256"] = record[stored.DIGEST_KEY]
    body |= {**fields, stored.DIGEST_KEY: params_sha256}
    return {**body, DIGEST_KEY: _body_digest(body)}
