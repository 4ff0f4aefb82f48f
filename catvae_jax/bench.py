"""Steady-state train-step throughput: python -m catvae_jax.bench --config configs/exp1.py.

Flags: --loss ssim|mse (reconstruction term with weight 1, the other terms 0), --steps N per
timed repeat, --batch B (0 = the config's), --repeats R. Any config field can be overridden with
--config.<field>=<value>. The step is `steps.make_train_step`, jitted with the state donated as
in training, on a fixed random uint8 batch sharded over all devices. Compilation and two warm-up
steps are excluded; the median of the repeats is reported. malloc is configured as for training
(catvae_jax/train/malloc.py; CATVAE_MALLOC=system opts out). The last line of stdout is JSON:
{"img_per_s", "ms_per_step", "model", "batch", "image_size", "loss", "devices", "backend", ...},
plus XLA's own count of the step's FLOPs and bytes accessed per device (`gflop_per_step`,
`gb_per_step`), the rates they imply (`tflop_per_s`, `gb_per_s`) and, when `--peak_tflops` /
`--peak_gbps` give the device's peaks, the fractions of the compute and memory roofline.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import jax
import ml_collections
import numpy as np
from absl import flags
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from catvae_jax import cli
from catvae_jax import config as config_lib
from catvae_jax.errors import UserError
from catvae_jax.model import networks
from catvae_jax.train import malloc, steps
from catvae_jax.train import state as state_lib
from catvae_jax.train.loop import make_mesh

LOSSES = {"ssim": (1.0, 0.0), "mse": (0.0, 1.0)}  # (ssim_weight, mse_weight)


def bench_config(
    config: ml_collections.ConfigDict, loss: str, batch: int = 0
) -> ml_collections.ConfigDict:
    """A copy of `config` with only the `loss` reconstruction term and batch size `batch`."""
    if loss not in LOSSES:
        raise UserError(f"loss must be one of {sorted(LOSSES)}, got '{loss}'")
    c = ml_collections.ConfigDict(config.to_dict())
    c.loss.ssim_weight, c.loss.mse_weight = LOSSES[loss]
    c.loss.l1_weight = 0.0
    if batch:
        c.batch_size = batch
    config_lib.validate(c)
    return c


def xla_cost(compiled: jax.stages.Compiled) -> tuple[float, float]:
    """(FLOPs, bytes accessed) of one call of `compiled` per device, as XLA counts them.

    0 where XLA does not know (e.g. a custom call it cannot see into).
    """
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list | tuple):  # older jax: one dict per program
        analysis = analysis[0] if analysis else {}
    analysis = analysis or {}
    return float(analysis.get("flops", 0.0)), float(analysis.get("bytes accessed", 0.0))


def roofline(
    result: dict, flops: float, nbytes: float, peak_tflops: float = 0.0, peak_gbps: float = 0.0
) -> dict:
    """Adds the step's FLOPs/bytes per device, the achieved rates and roofline fractions."""
    seconds = result["ms_per_step"] / 1000
    out = {
        "gflop_per_step": round(flops / 1e9, 3),
        "gb_per_step": round(nbytes / 1e9, 3),
        "tflop_per_s": round(flops / seconds / 1e12, 4),
        "gb_per_s": round(nbytes / seconds / 1e9, 2),
    }
    if peak_tflops > 0:
        out["compute_roofline_fraction"] = round(out["tflop_per_s"] / peak_tflops, 4)
    if peak_gbps > 0:
        out["memory_roofline_fraction"] = round(out["gb_per_s"] / peak_gbps, 4)
    return {**result, **out}


def benchmark(
    config: ml_collections.ConfigDict, loss: str = "ssim", steps_per_repeat: int = 10,
    repeats: int = 3, batch: int = 0, warmup: int = 2, peak_tflops: float = 0.0,
    peak_gbps: float = 0.0,
) -> dict:  # fmt: skip
    """Times `steps_per_repeat` train steps `repeats` times; returns the JSON-able result.

    `ms_per_step` is the median over repeats (milliseconds per step of `batch` images);
    `img_per_s` = batch / that time. `peak_tflops` / `peak_gbps`: the device's peaks (per
    device, 0 = unknown) for the roofline fractions (:func:`roofline`).
    """
    config = bench_config(config, loss, batch)
    mesh = make_mesh()
    if config.batch_size % jax.device_count():
        raise UserError(
            f"batch ({config.batch_size}) must be a multiple of the device count "
            f"({jax.device_count()})"
        )
    graphdef, state = state_lib.init_state(config, networks.init_compiled(config))
    state = jax.device_put(state, NamedSharding(mesh, P()))
    size = config.image_size
    rng = np.random.default_rng(config.seed)
    images = rng.integers(0, 256, (config.batch_size, size, size, 3), dtype=np.uint8)
    batch_arr = jax.device_put(images, NamedSharding(mesh, P("data")))
    key = jax.random.key(config.seed)
    train_step = jax.jit(steps.make_train_step(graphdef, config, key), donate_argnums=0)
    total = max(1, warmup) + repeats * steps_per_repeat  # the horizon of a cosine lr
    schedule = jax.device_put(steps.schedule(config, total), NamedSharding(mesh, P()))

    with jax.set_mesh(mesh):
        t0 = time.perf_counter()
        compiled = train_step.lower(state, batch_arr, schedule).compile()
        compile_s = time.perf_counter() - t0
        for _ in range(max(1, warmup)):
            state, metrics = compiled(state, batch_arr, schedule)
        jax.block_until_ready((state, metrics))
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(steps_per_repeat):
                state, metrics = compiled(state, batch_arr, schedule)
            jax.block_until_ready((state, metrics))
            times.append((time.perf_counter() - t0) / steps_per_repeat)
    if not bool(metrics["finite"]):
        print("warning: the loss became non-finite during the benchmark", file=sys.stderr)
    ms = 1000 * statistics.median(times)
    result = {
        "img_per_s": round(config.batch_size / (ms / 1000), 2),
        "ms_per_step": round(ms, 2),
        "model": config.model.name,
        "batch": config.batch_size,
        "image_size": size,
        "loss": loss,
        "devices": jax.device_count(),
        "backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        "framework": f"jax {jax.__version__}",
        "steps": steps_per_repeat,
        "repeats": repeats,
        "repeat_ms": [round(1000 * t, 2) for t in times],
        "compile_s": round(compile_s, 2),
    }
    return roofline(result, *xla_cost(compiled), peak_tflops, peak_gbps)


FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines the flags of this command (called by `run`, so importing the module defines none)."""
    cli.define_config_file("exp1.py", "Config file.", lock_config=True)
    flags.DEFINE_enum("loss", "ssim", sorted(LOSSES), "Reconstruction loss to time.")
    flags.DEFINE_integer("steps", 10, "Train steps per timed repeat.", lower_bound=1)
    flags.DEFINE_integer("batch", 0, "Batch size; 0 = the config's.", lower_bound=0)
    flags.DEFINE_integer("repeats", 3, "Timed repeats (median reported).", lower_bound=1)
    flags.DEFINE_float(
        "peak_tflops", 0.0, "Device peak TFLOP/s, for the compute roofline fraction.", lower_bound=0
    )
    flags.DEFINE_float(
        "peak_gbps", 0.0, "Device peak memory GB/s, for the memory roofline.", lower_bound=0
    )


def main(argv: list[str]) -> None:
    with cli.user_errors():
        reuse = malloc.configure()
        result = benchmark(
            FLAGS.config, FLAGS.loss, FLAGS.steps, FLAGS.repeats, FLAGS.batch,
            peak_tflops=FLAGS.peak_tflops, peak_gbps=FLAGS.peak_gbps,
        )  # fmt: skip
    result["malloc"] = "reuse" if reuse else "system"
    print(json.dumps(result), flush=True)


def run() -> None:
    cli.run_app(main, define_flags)


if __name__ == "__main__":
    sys.exit(run())
