"""Sample metrics of one checkpoint under the levers that need no retraining (issue 30 item 4):
EMA on/off, sampler, temperature and the learned prior's size, in AlexNet and VGG16 features.

The reference (`--num_samples` training images), the held-out images (the test split) and their
features are computed once; per parameter set (EMA, raw) the reconstructions once; per
(sampler, temperature, flow size) only the samples. Each row is the `evaluate` keys
(catvae_jax/evaluation/sample_quality.py: fd, kid, precision, recall, fd_floor, fd_recon, and
the `_vgg` ones) as one JSON line, so rows at equal n compare with each other and with
`evaluate --num_samples N`.

    python benchmarks/coverage_levers.py --workdir W [--num_samples 256] [--temperatures 1,0.8]
        [--samplers prior,gmm,flow] [--flow_sizes 8x128,12x256] [--out rows.jsonl]
"""

from __future__ import annotations

import json
import time

import numpy as np
from absl import app, flags

import catvae_jax
from catvae_jax import data
from catvae_jax.evaluation import sample_quality as sq
from catvae_jax.priors import flow

_WORKDIR = flags.DEFINE_string("workdir", None, "Training run directory.", required=True)
_STEP = flags.DEFINE_string("step", "best", "Checkpoint.")
_NUM = flags.DEFINE_integer("num_samples", 256, "Samples, reference and held-out images.")
_TEMPS = flags.DEFINE_list("temperatures", ["1.0"], "Sampling temperatures.")
_SAMPLERS = flags.DEFINE_list("samplers", ["prior", "gmm", "flow"], "Samplers.")
_FLOWS = flags.DEFINE_list("flow_sizes", [], "Extra flows LAYERSxHIDDEN, fitted in memory.")
_EMA = flags.DEFINE_list("ema", ["on", "off"], "Parameter sets: on (EMA, if any), off (raw).")
_OUT = flags.DEFINE_string("out", "", "Append the rows to this JSON-lines file too.")


def _features(nets: tuple, images: np.ndarray) -> dict:
    alex, vgg = nets
    return {"alex": alex(images), "vgg": vgg(images)}


def _row(feats: dict, seed: int) -> dict:
    """The evaluate keys from features of the sets ref, fake, real, recon in both networks."""
    alex = sq._distances({k: v["alex"] for k, v in feats.items()}, seed, "")
    vgg = sq._distances({k: v["vgg"] for k, v in feats.items()}, seed, "_vgg")
    return {**alex, **vgg, "diversity": feats["fake"]["alex"].diversity}


def main(argv):
    del argv
    seed, n = 0, _NUM.value
    nets = (sq.FeatureNet(), sq.VggFeatureNet())
    first = catvae_jax.load(_WORKDIR.value, _STEP.value)
    rng = np.random.default_rng(seed)
    train = data.load_split(first.config, "train")
    reference = train[np.sort(rng.choice(len(train), min(n, len(train)), replace=False))]
    heldout = data.load_split(first.config, "test")[:n]
    fixed = {"ref": _features(nets, reference), "real": _features(nets, heldout)}
    for ema in _EMA.value:
        model = catvae_jax.load(_WORKDIR.value, _STEP.value, ema=ema == "on")
        if ema == "off" and model.workdir is not None:
            continue  # no EMA in this checkpoint: "off" is the same parameters as "on"
        recon = _features(nets, sq._reconstruct(model, heldout))
        flows = {"flow": model.flow}
        for size in _FLOWS.value:
            layers, hidden = (int(v) for v in size.split("x"))
            flows[f"flow-{size}"] = flow.fit(
                model.training_means(), model.config.seed, num_layers=layers, hidden=hidden
            )
        for sampler in _SAMPLERS.value + [f"flow-{s}" for s in _FLOWS.value]:
            if sampler.startswith("flow"):
                model.flow = flows[sampler] or model.fit_flow()  # raw parameters: fitted here
                flows[sampler] = model.flow
            for temperature in (float(t) for t in _TEMPS.value):
                start = time.perf_counter()
                name = "flow" if sampler.startswith("flow") else sampler
                fake = sq._sample(model, len(reference), name, seed, temperature=temperature)
                feats = {**fixed, "recon": recon, "fake": _features(nets, fake)}
                row = {
                    "workdir": _WORKDIR.value,
                    "step": model.step,
                    "ema": ema,
                    "sampler": sampler,
                    "temperature": temperature,
                    "n": len(reference),
                    "heldout_n": len(heldout),
                    **_row(feats, seed),
                    "seconds": round(time.perf_counter() - start, 1),
                }
                line = json.dumps(row)
                print(line, flush=True)
                if _OUT.value:
                    with open(_OUT.value, "a") as f:
                        f.write(line + "\n")


if __name__ == "__main__":
    app.run(main)
