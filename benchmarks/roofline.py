"""Train-step img/s and roofline fractions for the default model and vae_cats_v1 at 128².

    python benchmarks/roofline.py [--steps 20] [--repeats 3] [--peak_tflops T --peak_gbps G]

Issue 7 item 6 (GPU figures), as one command for a machine with an accelerator: both models at
128×128×3, batch 64, fp32, the SSIM loss each trains with, sharded over every device. The step's
FLOPs and bytes are XLA's own count for the compiled program (per device); the achieved rates are
those over the measured step time, and the roofline fractions divide them by the device's peaks:
from `--peak_tflops` / `--peak_gbps`, else from PEAKS by `device_kind` (vendor data sheets, dense
FP32 without tensor cores and HBM bandwidth), else none. On GPUs XLA may run f32 convolutions
on TF32 tensor cores, whose peak is several times the FP32 one: a compute fraction above 1 means
that happened. Prints a Markdown table and a last line of JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# device_kind → (FP32 TFLOP/s, memory GB/s) per device, from the vendors' data sheets.
PEAKS = {
    "NVIDIA H200": (67.0, 4800.0),
    "NVIDIA H100 80GB HBM3": (67.0, 3350.0),
    "NVIDIA A100-SXM4-80GB": (19.5, 2039.0),
    "NVIDIA A100-SXM4-40GB": (19.5, 1555.0),
}


def arms() -> dict:
    """name → config: the recommended model at 128² and the original architecture, batch 64."""
    from configs import default, exp1

    c = default.get_config()
    c.image_size, c.batch_size = 128, 64  # the default trains with 16; 64 as the original
    return {"default (resvae) 128²": c, "vae_cats_v1 128²": exp1.get_config()}


def measure(configs: dict, steps: int, repeats: int, peak_tflops: float, peak_gbps: float) -> list:
    """Benchmarks each config with its own loss; returns one result dict per config."""
    from catvae_jax import bench

    results = []
    for name, config in configs.items():
        loss = "ssim" if config.loss.ssim_weight > 0 else "mse"
        r = bench.benchmark(config, loss, steps, repeats, peak_tflops=peak_tflops,
                            peak_gbps=peak_gbps)  # fmt: skip
        results.append({"arm": name, **r})
    return results


def _percent(result: dict, key: str) -> str:
    return f"{100 * result[key]:.1f} %" if key in result else "—"


def table(results: list) -> str:
    """Markdown table of img/s, rates and roofline fractions."""
    rows = [
        "| model | device | img/s | ms/step | GFLOP/step | TFLOP/s | GB/s | compute | memory |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        rows.append(
            f"| {r['arm']} | {r['devices']} × {r['device_kind']} | {r['img_per_s']:.1f} | "
            f"{r['ms_per_step']:.1f} | {r['gflop_per_step']:.1f} | {r['tflop_per_s']:.3f} | "
            f"{r['gb_per_s']:.1f} | {_percent(r, 'compute_roofline_fraction')} | "
            f"{_percent(r, 'memory_roofline_fraction')} |"
        )
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=20, help="train steps per timed repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--peak_tflops", type=float, default=0.0, help="0: look up device_kind")
    p.add_argument("--peak_gbps", type=float, default=0.0, help="0: look up device_kind")
    args = p.parse_args()

    import jax

    from catvae_jax.train import malloc

    malloc.configure()
    kind = jax.devices()[0].device_kind
    peak_tflops, peak_gbps = PEAKS.get(kind, (0.0, 0.0))
    peak_tflops, peak_gbps = args.peak_tflops or peak_tflops, args.peak_gbps or peak_gbps
    print(f"devices: {jax.device_count()} × {kind}; peaks: {peak_tflops} TFLOP/s, "
          f"{peak_gbps} GB/s (0 = unknown)", flush=True)  # fmt: skip
    results = measure(arms(), args.steps, args.repeats, peak_tflops, peak_gbps)
    print(table(results))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
