"""The learned prior of a workdir's checkpoints: fitted at the end of training and by fit_prior.

For each checkpoint a reader picks by default (`best`, and `latest` when it differs) the flow
of catvae_jax/flow.py is fitted to the posterior means of up to 10 000 training images and
written, atomically, to WORKDIR/flow_<step>.npz, where `inference.load` finds it. Two
processes fitting the same checkpoint at once both succeed (the fit is deterministic; the last
rename wins).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import ml_collections
from etils import epath

from catvae_jax import flow, inference, sampling
from catvae_jax.checkpoint import Checkpoints
from catvae_jax.errors import UserError

DEFAULT_STEPS = ("best", "latest")


def fit_checkpoints(
    workdir: str | epath.Path,
    steps: Sequence[str | int] = DEFAULT_STEPS,
    max_images: int = sampling.DEFAULT_MAX_IMAGES,
) -> list[tuple[int, flow.Flow, float]]:
    """Fits and stores the flow of each checkpoint in `steps` ("best", "latest" or numbers;
    a step named twice is fitted once). Returns (step, flow, seconds) per fitted checkpoint."""
    done: list[tuple[int, flow.Flow, float]] = []
    for name in steps:
        model = inference.load(workdir, name)
        if model.step in [step for step, _, _ in done]:
            continue
        start = time.perf_counter()
        fitted = model.fit_flow(max_images)
        done.append((int(model.step), fitted, time.perf_counter() - start))
    return done


def fit_after_training(
    workdir: epath.Path,
    config: ml_collections.ConfigDict,
    ckpts: Checkpoints,
    vae: inference.VaeModel,
) -> None:
    """The end of `train_and_evaluate` (process 0): waits for the checkpoints, then fits the
    flow of `best` and `latest` unless `config.flow_prior` is off, and attaches the one of
    `vae`'s step to `vae` (a model of the final state), so its default sampler uses it.
    `vae` also gets the workdir, so a gmm fitted for it is cached there."""
    if vae.workdir is None:
        vae.workdir = workdir
    if not config.get("flow_prior", True):
        return
    ckpts.wait()
    steps = sorted({s for s in (ckpts.resolve("best"), ckpts.resolve("latest")) if s is not None})
    for step in steps:
        start = time.perf_counter()
        if step == vae.step:
            fitted = vae.fit_flow()
        else:
            try:
                fitted = inference.load(workdir, step).fit_flow()
            except UserError as e:  # e.g. a best checkpoint the manager has not kept
                print(f"warning: no learned prior for checkpoint {step}: {e}", flush=True)
                continue
        print(
            f"learned prior for checkpoint {step}: fitted to {fitted.num_images} latents in "
            f"{time.perf_counter() - start:.1f} s, held-out NLL {fitted.heldout_nll:.2f} nats",
            flush=True,
        )
