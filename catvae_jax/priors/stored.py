"""Sampler files (WORKDIR/flow_<step>.npz, WORKDIR/gmm_<step>.npz) read as untrusted input.

A sampler file is derived from one checkpoint's parameters and stores their digest
(`params_sha256`, see `catvae_jax.train.state.params_digest`); a reader compares it with the
parameters it holds. `read_npz` checks each array's header against the bytes the archive
really holds before it allocates anything (a header may declare 2⁴⁰ elements), accepts only
plain numeric and string arrays (nothing pickled) and only stored, uncompressed members (what
`atomic.write_npz` writes). Every kind of damage is an `Unusable` with a one-line reason;
`read_or_none` turns it into a warning, so that callers treat the file as absent.
"""

from __future__ import annotations

import contextlib
import math
import re
import sys
import zipfile
from collections.abc import Callable, Iterable
from typing import TypeVar

import numpy as np
from etils import epath

DIGEST_KEY = "params_sha256"
# flow.cache_path, gmm.cache_path, bpd_range.path (a checkpoint's bits/dim range) and
# choice.cache_path (its measured sampler choice)
_FILE_NAME = re.compile(r"(?:flow|gmm)_(\d+)\.npz|(?:bpd|sampler)_(\d+)\.json")
MAX_FILE_BYTES = 1 << 30  # far above any sampler file (a flow of z = 512 is ~5 MB)
_KINDS = "fiub" + "U"  # float, int, unsigned, bool, and str (the digest)

T = TypeVar("T")


class Unusable(ValueError):
    """A sampler file that cannot be used; the message is one line saying why."""


def read_npz(path: str | epath.Path) -> dict[str, np.ndarray]:
    """{name: array} of an uncompressed .npz, each header checked before its data is read;
    Unusable for anything else (missing, truncated, not a zip, compressed, pickled objects,
    a header that does not match the bytes)."""
    path = epath.Path(path)
    try:
        with path.open("rb") as f, zipfile.ZipFile(f) as archive:
            members = archive.infolist()
            total = sum(info.file_size for info in members)
            if total > MAX_FILE_BYTES:
                raise Unusable(f"it declares {total} bytes of arrays")
            return {_name(info): _read_member(archive, info) for info in members}
    except Unusable:
        raise
    except Exception as e:  # untrusted bytes: BadZipFile, EOFError, OSError, ValueError, ...
        raise Unusable(_reason(e)) from e


def _name(info: zipfile.ZipInfo) -> str:
    return info.filename.removesuffix(".npy")


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    """One array, after checking that its header's shape × itemsize is the bytes it holds."""
    name = _name(info)
    if info.compress_type != zipfile.ZIP_STORED:
        raise Unusable(f"array '{name}' is compressed (sampler files are stored uncompressed)")
    with archive.open(info) as member:
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(member)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(member)
        else:
            raise Unusable(f"array '{name}' has .npy format version {version}")
        if dtype.kind not in _KINDS or dtype.fields is not None or dtype.subdtype is not None:
            raise Unusable(f"array '{name}' has dtype {dtype}, not a plain number or string")
        declared = math.prod(shape) * dtype.itemsize
        held = info.file_size - member.tell()
        if declared != held:
            raise Unusable(f"array '{name}' declares shape {shape} but holds {held} bytes")
        data = member.read(declared)  # reading to the end checks the member's CRC
        if len(data) != declared:
            raise Unusable(f"array '{name}' is cut short")
    order = "F" if fortran else "C"
    return np.frombuffer(data, dtype).reshape(shape, order=order).copy()


def _reason(e: BaseException) -> str:
    first = next((line.strip() for line in str(e).splitlines() if line.strip()), "")
    return f"{type(e).__name__}: {first[:160]}" if first else type(e).__name__


def array(
    arrays: dict[str, np.ndarray], name: str, shape: Iterable[int | None], kind: str = "f"
) -> np.ndarray:
    """arrays[name], checked: present, of a dtype kind in `kind`, of `shape` (None: any size
    on that axis) and, for floats, finite; Unusable otherwise."""
    if name not in arrays:
        raise Unusable(f"it has no '{name}'")
    value = arrays[name]
    shape = tuple(shape)
    if value.dtype.kind not in kind:
        raise Unusable(f"'{name}' has dtype {value.dtype}")
    if value.ndim != len(shape) or any(
        w not in (None, h) for w, h in zip(shape, value.shape, strict=True)
    ):
        want = "[" + ", ".join("N" if w is None else str(w) for w in shape) + "]"
        raise Unusable(f"'{name}' has shape {list(value.shape)}, expected {want}")
    if value.dtype.kind == "f" and not np.isfinite(value).all():
        raise Unusable(f"'{name}' holds non-finite values")
    return value


def count(arrays: dict[str, np.ndarray], name: str, minimum: int = 0) -> int:
    """A scalar integer entry that is at least `minimum`; Unusable otherwise."""
    value = int(array(arrays, name, (), "iu"))
    if value < minimum:
        raise Unusable(f"'{name}' is {value}, expected at least {minimum}")
    return value


def read_fitted(
    path: str | epath.Path, params_sha256: str | None
) -> tuple[dict[str, np.ndarray], str]:
    """(arrays, their stored digest) of a sampler file fitted on the parameters with digest
    `params_sha256` (None: any); Unusable when it is damaged, has no digest (written before
    sampler files recorded one) or another one."""
    arrays = read_npz(path)
    if DIGEST_KEY not in arrays:
        raise Unusable("it was written before sampler files recorded their checkpoint's digest")
    stored = str(array(arrays, DIGEST_KEY, (), "U"))
    if params_sha256 is not None and stored != params_sha256:
        raise Unusable(
            "it was fitted on other parameters than this checkpoint's (another run or an "
            "older checkpoint of this step)"
        )
    return arrays, stored


def read_or_none(
    path: epath.Path, what: str, read: Callable[[epath.Path], T], then: str
) -> T | None:
    """read(path), or None when there is no file (silently) or it is unusable (with a one-line
    warning on stderr: "warning: ignoring <what> <path>: <why>; <then>")."""
    try:
        if not path.exists():
            return None
        return read(path)
    except (Unusable, OSError) as e:
        print(f"warning: ignoring {what} {path}: {e}; {then}", file=sys.stderr, flush=True)
        return None


def remove_stale(workdir: str | epath.Path, kept: Iterable[int]) -> list[epath.Path]:
    """Deletes the sampler files (and bits/dim ranges, bpd_<step>.json, and sampler choices,
    sampler_<step>.json) of WORKDIR whose checkpoint step is not in `kept` (rotated away, or
    being written anew); returns them. A file that cannot be deleted stays (it is ignored by
    its digest)."""
    kept, removed = set(kept), []
    for path in epath.Path(workdir).iterdir():
        match = _FILE_NAME.fullmatch(path.name)
        if match and int(match[1] or match[2]) not in kept:
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path)
    return removed
