"""A whole training run: `train_and_evaluate` = the loop, then `finish`, the end-of-training job
(the learned prior, the bits/dim range and the measured `auto` sampler of `best` and `latest`,
then samples.png and reconstructions.png; what is already there for the final step, as after a
re-run of a finished run, is kept). `fit_checkpoints` fits the learned prior and the range for
existing checkpoints (the fit_prior command).

For each checkpoint a reader picks by default (`best`, and `latest` when it differs) the flow
of catvae_jax/priors/flow.py is fitted to the posterior means of up to 10 000 training images and
written, atomically, to WORKDIR/flow_<step>.npz, where `inference.load` finds it. Two
processes fitting the same checkpoint at once both succeed (the fit is deterministic; the last
rename wins). The bits/dim range of the validation images (catvae_jax/bpd_range.py, what
reconstruct and the service judge an input against) goes to WORKDIR/bpd_<step>.json. Then
(`config.choose_sampler`) each sampler of those checkpoints is measured on the validation split
and the best is stored as WORKDIR/sampler_<step>.json for `auto`
(catvae_jax/evaluation/sampler_choice.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence

import ml_collections
import numpy as np
from etils import epath

from catvae_jax import bpd_range, images, inference, model_file
from catvae_jax.errors import UserError
from catvae_jax.evaluation import sampler_choice, typicality
from catvae_jax.priors import choice, flow, gmm, stored
from catvae_jax.train import loop, timing
from catvae_jax.train.hooks import say

DEFAULT_STEPS = ("best", "latest")
PICTURES = ("samples.png", "reconstructions.png")
STEP_KEY = "catvae_jax step"  # the PNG text entries naming the step a picture shows
PARAMS_KEY = "catvae_jax params_sha256"  # and the digest of the parameters that drew it


def fit_checkpoints(
    workdir: str | epath.Path,
    steps: Sequence[str | int] = DEFAULT_STEPS,
    max_images: int = gmm.DEFAULT_MAX_IMAGES,
) -> list[tuple[int, flow.Flow, float, bpd_range.BpdRange]]:
    """Fits and stores the flow and the bits/dim range of each checkpoint in `steps` ("best",
    "latest" or numbers; a step named twice is fitted once), saying when each fit starts and
    ends. Returns (step, flow, seconds of the flow fit, range) per fitted checkpoint."""
    if model_file.is_model_file(workdir):
        raise UserError(f"{workdir} is a model file: fit_prior writes into a training workdir")
    done: list[tuple[int, flow.Flow, float, bpd_range.BpdRange]] = []
    for name in steps:
        model = inference.load(workdir, name)
        if model.step in [step for step, *_ in done]:
            continue
        fitted, seconds = fit_prior(model, max_images)
        done.append((int(model.step), fitted, seconds, fit_range(model, workdir)))
    return done


def fit_prior(
    model: inference.VaeModel, max_images: int = gmm.DEFAULT_MAX_IMAGES
) -> tuple[flow.Flow, float]:
    """Fits `model`'s learned prior (`VaeModel.fit_flow`: encoding up to `max_images` training
    images, then the flow), with a line when it starts and one when it ends. Returns (the
    flow, seconds taken)."""
    say(
        f"checkpoint {model.step}: fitting the learned prior to the latents of up to "
        f"{max_images} training images ..."
    )
    start = time.perf_counter()
    fitted = model.fit_flow(max_images)
    seconds = time.perf_counter() - start
    where = f", wrote {flow.cache_path(model.workdir, model.step)}" if model.workdir else ""
    say(
        f"checkpoint {model.step}: learned prior fitted to {fitted.num_images} latents in "
        f"{seconds:.1f} s (held-out NLL {fitted.heldout_nll:.2f} nats){where}"
    )
    return fitted, seconds


def fit_range(model: inference.VaeModel, workdir: str | epath.Path) -> bpd_range.BpdRange:
    """Measures `model`'s bits/dim range (`typicality.fit_and_save`: its validation images) and
    writes it to WORKDIR/bpd_<step>.json, with a line when it starts and one when it ends."""
    say(f"checkpoint {model.step}: measuring the bits/dim of its validation images ...")
    start = time.perf_counter()
    fitted = typicality.fit_and_save(model, workdir)
    q = fitted.quantiles
    say(
        f"checkpoint {model.step}: bits/dim of {fitted.num_images} {fitted.split} images "
        f"{q[0]:.3f}-{q[-1]:.3f} (median {q[50]:.3f}) in {time.perf_counter() - start:.1f} s, "
        f"wrote {bpd_range.path(workdir, model.step)}"
    )
    return fitted


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    on_validation: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, float]:
    """Trains (`catvae_jax.train.loop.train_and_evaluate`), then `finish`es: the library's
    and the `main` command's entry point. Returns the final validation metrics plus `step`."""
    return loop.train_and_evaluate(config, workdir, on_validation, on_finish=finish)


def finish(run: loop.Finished) -> np.ndarray | None:
    """The end of a run (process 0): deletes the sampler files of checkpoints rotated away, fits
    the learned prior of `best` and `latest` unless `config.flow_prior` is off (the final
    model's one attached, so samples.png uses it), measures their bits/dim ranges
    (`_fit_ranges`) and which sampler `auto` uses for them unless `config.choose_sampler` is
    off (`_choose_samplers`; the final model's choice attached), then samples.png (8×8, the
    `auto` sampler, fixed seed) and reconstructions.png (inputs above outputs), each tagged
    with the step and the parameters' digest. A prior, range, choice or pictures already there
    for these parameters (a re-run of a finished run) are kept, and said so. Returns the
    samples grid (uint8 HWC) for the run's log, or None when the pictures were kept. Timed as
    `prior_fit` (the flow, or the gmm the default sampler falls back to), `sampler_choice` and
    `pictures` in the run's breakdown."""
    vae = inference.VaeModel(
        run.graphdef, run.params, run.config, step=run.step, workdir=run.workdir
    )
    if run.ckpts is not None:  # the sampler files of checkpoints rotated away go with them
        with timing.part(run.timing, "checkpoint"):
            run.ckpts.wait()
        stored.remove_stale(run.workdir, run.ckpts.steps())
    if run.config.flow_prior:
        with timing.part(run.timing, "prior_fit"):
            _fit_priors(run, vae)
    _fit_ranges(run, vae)
    if run.config.choose_sampler and run.ckpts is not None:
        with timing.part(run.timing, "sampler_choice"):
            _choose_samplers(run, vae)
    tag = {STEP_KEY: str(run.step), PARAMS_KEY: vae.params_sha256}
    if all(_tagged(run.workdir / name, tag) for name in PICTURES):
        say(f"{' and '.join(PICTURES)} of step {run.step} are already in {run.workdir}: kept")
        return None
    with timing.part(run.timing, "prior_fit"):
        vae.resolve_sampler()  # without a flow: the mixture of the training latents, fitted
    with timing.part(run.timing, "pictures"):
        samples = images.grid(vae.generate(64, seed=run.config.seed), ncols=8)
        images.save_png(run.workdir / "samples.png", samples, text=tag)
        x = run.originals.astype(np.float32) / 255.0
        both = np.concatenate([x, vae.reconstruct(x)])
        grid = images.grid(both, ncols=len(x))
        images.save_png(run.workdir / "reconstructions.png", grid, text=tag)
    return samples


def _tagged(path: epath.Path, tag: dict[str, str]) -> bool:
    """Whether the PNG at `path` carries `tag`: drawn at that step by those parameters (a
    workdir retrained with its checkpoints deleted reaches the same step with others)."""
    text = images.png_text(path)
    return all(text.get(key) == value for key, value in tag.items())


def _unfitted(
    run: loop.Finished,
    vae: inference.VaeModel,
    what: str,
    stored: Callable[[inference.VaeModel], object],
    where: Callable[[epath.Path, int], epath.Path],
) -> Iterator[inference.VaeModel]:
    """The models of `best` and `latest` (of `vae` alone when `run.ckpts` is None; `vae` itself
    for its own step) that have no usable stored `what` (`stored(model)` None). Says which keep
    theirs (at `where(workdir, step)`) and which cannot be loaded."""
    steps = [vae.step]
    if run.ckpts is not None:
        found = (run.ckpts.resolve("best"), run.ckpts.resolve("latest"))
        steps = sorted({s for s in found if s is not None})
    for step in steps:
        try:  # load() reads what is stored for that step, if usable
            model = vae if step == vae.step else inference.load(run.workdir, step)
        except UserError as e:  # e.g. a best checkpoint the manager has not kept
            say(f"warning: no {what} for checkpoint {step}: {e}")
            continue
        if stored(model) is not None:
            say(f"checkpoint {step}: {what} already in {where(run.workdir, step)}: kept")
            continue
        yield model


def _fit_priors(run: loop.Finished, vae: inference.VaeModel) -> None:
    """Fits the flow of `best` and `latest` once their checkpoints are written, unless a
    usable one (fitted on that checkpoint's parameters) is stored for that step; the one of
    `vae`'s step is attached to `vae`."""
    with timing.part(run.timing, "checkpoint"):
        run.ckpts.wait()
    vae.flow = inference.read_flow(vae)
    for model in _unfitted(run, vae, "learned prior", lambda m: m.flow, flow.cache_path):
        fit_prior(model)


def _fit_ranges(run: loop.Finished, vae: inference.VaeModel) -> None:
    """Measures the bits/dim range of `best` and `latest` once their checkpoints are written
    (of `vae` alone when there are none: `run.ckpts` None), unless a usable one is stored for
    that step; the one of `vae`'s step is attached to `vae`."""
    if run.ckpts is not None:
        run.ckpts.wait()
    vae.bpd_range = inference.read_bpd_range(vae)
    for model in _unfitted(run, vae, "bits/dim range", lambda m: m.bpd_range, bpd_range.path):
        fit_range(model, run.workdir)


def _choose_samplers(run: loop.Finished, vae: inference.VaeModel) -> None:
    """Measures and stores the `auto` sampler of `best` and `latest`, unless a usable choice
    (measured on that checkpoint's parameters) is stored for that step; the one of `vae`'s step
    is attached to `vae`. The networks and the held-out features are computed once."""
    if vae.flow is None:  # config.flow_prior off: a flow stored for this step still counts
        vae.flow = inference.read_flow(vae)
    vae.choice = choice.read(run.workdir, vae.step, vae.params_sha256)
    nets = reference = None
    for model in _unfitted(run, vae, "sampler choice", lambda m: m.choice, choice.cache_path):
        step = model.step
        say(f"checkpoint {step}: measuring its samplers for auto ...")
        if nets is None:
            try:
                held_out = sampler_choice.validation_images(model, run.config.choose_sampler_n)
            except UserError as e:  # too few: the run still ends well, auto keeps its order
                say(f"note: samplers not measured ({e}); auto uses flow, else gmm, else N(0, I)")
                return
            nets = sampler_choice.Nets.build()
            reference = sampler_choice.Reference.of(held_out, nets)
        record = sampler_choice.choose(model, reference.n, run.config.seed, nets, reference)
        say(sampler_choice.format_record(step, record))
