"""JAX vs the original in PyTorch, same machine, same run: python benchmarks/compare.py.

Runs `python -m catvae_jax.bench` and `benchmarks/torch_original.py` as subprocesses, alternating
(the order flips every round, so a drift in machine load hits both alike), for each loss, and
prints a Markdown table: median img/s of each side and the median of the per-round ratios.

    python benchmarks/compare.py --config configs/exp1.py --rounds 3 --steps 5 --repeats 3
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOALS = {"ssim": 3.0, "mse": 1.0}  # JAX / PyTorch img/s, issue 7


def run_bench(side: str, loss: str, args: argparse.Namespace) -> dict:
    """One benchmark subprocess; returns its last stdout line parsed as JSON."""
    flags = ["--config", args.config, "--loss", loss, "--steps", str(args.steps)]
    flags += ["--repeats", str(args.repeats), "--batch", str(args.batch)]
    if side == "jax":
        cmd = [sys.executable, "-m", "catvae_jax.bench", *flags]
    else:
        cmd = [sys.executable, os.path.join(REPO, "benchmarks", "torch_original.py"), *flags]
        cmd += ["--malloc", args.torch_malloc]
    cpus = {int(c) for c in args.cpus.split(",")} if args.cpus else None
    pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None  # both sides alike
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, preexec_fn=pin)
    if proc.returncode != 0:
        sys.exit(f"error: {side} benchmark failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine() -> str:
    """CPU model and core count, e.g. 'AMD EPYC 7B13, 2 cores'."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        model = names[0] if names else model
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"


def compare(losses: list[str], args: argparse.Namespace) -> dict:
    """{loss: {"jax": [img/s per round], "torch": [...], "ratio": [...]}} plus run metadata."""
    results: dict = {"losses": {}, "load_before": os.getloadavg(), "args": vars(args)}
    for loss in losses:
        runs = {"jax": [], "torch": [], "ratio": []}
        for r in range(args.rounds):
            order = ("jax", "torch") if r % 2 == 0 else ("torch", "jax")
            got = {s: run_bench(s, loss, args) for s in order}
            for side in ("jax", "torch"):
                runs[side].append(got[side]["img_per_s"])
            runs["ratio"].append(got["jax"]["img_per_s"] / got["torch"]["img_per_s"])
            print(
                f"round {r + 1}/{args.rounds} {loss}: jax {got['jax']['img_per_s']:.1f} img/s, "
                f"torch {got['torch']['img_per_s']:.1f} img/s, load {os.getloadavg()[0]:.1f}",
                flush=True,
            )
        results["losses"][loss] = runs
    results["load_after"] = os.getloadavg()
    return results


def table(results: dict) -> str:
    """Markdown ratio table of `compare`'s results."""
    a = results["args"]
    cores = f"pinned to CPUs {a['cpus']}" if a["cpus"] else "all cores"
    lines = [
        f"batch {a['batch']}, 128×128×3, fp32 · {machine()}, {cores} · torch malloc "
        f"{a['torch_malloc']} · "
        f"{datetime.date.today().isoformat()} · 1-min load {results['load_before'][0]:.1f} → "
        f"{results['load_after'][0]:.1f}",
        "",
        "| loss | JAX img/s | PyTorch img/s | JAX / PyTorch | rounds' ratios | goal |",
        "|---|---|---|---|---|---|",
    ]
    for loss, runs in results["losses"].items():
        ratio = statistics.median(runs["ratio"])
        goal = GOALS.get(loss, 1.0)
        lines.append(
            f"| {loss} | {statistics.median(runs['jax']):.1f} | "
            f"{statistics.median(runs['torch']):.1f} | **{ratio:.2f}×** | "
            f"{', '.join(f'{x:.2f}' for x in runs['ratio'])} | ≥ {goal:g}× "
            f"{'met' if ratio >= goal else 'missed'} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/exp1.py")
    p.add_argument("--losses", default="ssim,mse", help="comma-separated: ssim, mse")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=5, help="train steps per timed repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--cpus", default="", help="pin both sides to these CPUs, e.g. 0")
    p.add_argument("--torch-malloc", default="system", choices=["system", "reuse"])
    p.add_argument("--json", default="", help="also write the raw results to this file")
    a = p.parse_args()
    losses = [x for x in a.losses.split(",") if x]
    if not losses or any(x not in GOALS for x in losses) or a.rounds < 1:
        p.error(f"--losses must name some of {sorted(GOALS)} and --rounds must be ≥ 1")
    results = compare(losses, a)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=2)
    print(table(results))


if __name__ == "__main__":
    main()
