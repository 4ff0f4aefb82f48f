"""The accelerator check: where a GPU or TPU run's time goes, in one command of at most 8 minutes.

    python benchmarks/accelerator.py [--quick] [--out result.json] [--root runs/accelerator_check]
        [--budget 470]

Steps, in order of importance, each a subprocess with its own timeout (and all within --budget
seconds; a step that would start too late is skipped, one that overruns gets SIGTERM, which a
training run turns into a checkpoint and a timing.json):
  1. `main --config configs/default.py` end to end (the recommended recipe, prior fit and
     pictures included), then `evaluate --nolikelihood --num_samples 1000` of it;
  2. `main --config configs/exp1.py` end to end (the original experiment);
  3. steady img/s, XLA's FLOPs and bytes per step and the roofline fractions of both models at
     128² (`benchmarks/roofline.py`'s arms, `catvae_jax.bench`) at batch 64 and 256, in float32
     and bfloat16;
  4. both recipes again with `steps_per_call=16`, and exp1 with bfloat16 as well.
Each run reports its wall time, its breakdown (catvae_jax/train/timing.py: compile seconds and
count, train steps, time outside steps, prior fit, pictures, ...) and its steady img/s (median
of the logged rates after the first). Prints a Markdown table and writes everything as JSON
(--out, default ROOT/result.json).

`--quick` runs one step of each kind with tiny settings (resvae at 32², 8 steps, no LPIPS, the
likelihood of 16 images, a bench of the small model): a CPU test of this script
(tests/e2e/test_accelerator_check.py), not a measurement. How to run it on the accelerator
machine: benchmarks/README.md, "Accelerator check".
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import signal
import statistics
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# --quick: every training run tiny (32², 8 steps, no LPIPS, no learned prior, no sampler choice).
QUICK_RUN = [
    "--config.image_size=32",
    "--config.model.widths=(8,16)",
    "--config.model.z_dim=8",
    "--config.batch_size=8",
    "--config.data.num_train=64",
    "--config.data.num_validation=16",
    "--config.data.num_test=16",
    "--config.max_steps=8",
    "--config.log_every_steps=2",
    "--config.loss.lpips_weight=0",
    "--config.flow_prior=False",
    "--config.choose_sampler=False",
    "--config.progress_bar=False",
    "--config.wandb.mode=disabled",
]


@dataclasses.dataclass
class Step:
    """One measured command: `kind` says how its result is read (train, evaluate, bench)."""

    name: str
    kind: str
    args: list[str]
    timeout: float
    workdir: str = ""


def plan(quick: bool, root: pathlib.Path) -> list[Step]:
    """The steps, most important first."""
    main = ["-m", "catvae_jax.main"]
    tiny = QUICK_RUN if quick else ["--config.progress_bar=False", "--config.wandb.mode=disabled"]
    # vae_cats_v1 needs 128²: quick runs its recipe with the small resvae instead.
    exp1 = ["--config", "configs/exp1.py"]
    if quick:
        exp1 += ["--config.model.name=resvae"]
    default = ["--config", "configs/default.py"]
    k16 = ["--config.steps_per_call=16"]
    bf16 = ["--config.dtype=bfloat16"]
    evaluate = ["-m", "catvae_jax.evaluate", "--workdir", str(root / "default"),
                "--out", str(root / "default_eval.json")]  # fmt: skip
    if quick:  # the likelihood of 16 images instead: no AlexNet to compile
        evaluate += ["--num_samples", "0", "--max_examples", "16", "--iw_samples", "2"]
    else:
        evaluate += ["--nolikelihood", "--num_samples", "1000"]
    bench = lambda arm: (
        [str(REPO / "benchmarks" / "accelerator.py"), "--bench", arm]
        + (["--quick"] if quick else [])
    )

    def train(name: str, config: list[str], extra: list[str], timeout: float) -> Step:
        workdir = str(root / name)
        return Step(name, "train", [*main, *config, *tiny, *extra, "--workdir", workdir],
                    timeout, workdir)  # fmt: skip

    if quick:  # one of each kind of step
        return [
            train("default", default, [], 120),
            Step("default evaluate", "evaluate", evaluate, 60),
            train("exp1 k16 bf16", exp1, [*k16, *bf16], 120),
            Step("bench default model", "bench", bench("default"), 120),
        ]
    return [
        train("default", default, [], 150),
        Step("default evaluate", "evaluate", evaluate, 100),
        train("exp1", exp1, [], 120),
        Step("bench default model", "bench", bench("default"), 110),
        Step("bench vae_cats_v1", "bench", bench("vae_cats_v1"), 110),
        train("default k16", default, k16, 90),
        train("exp1 k16", exp1, k16, 90),
        train("exp1 k16 bf16", exp1, [*k16, *bf16], 90),
    ]


def run_step(step: Step, timeout: float) -> dict:
    """Runs `step` for at most `timeout` s (then SIGTERM, 30 s grace, SIGKILL): its result."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *step.args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    status = "ok"
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        status = "timeout"
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
    wall = time.perf_counter() - start
    if status == "ok" and proc.returncode != 0:
        status = f"failed (exit {proc.returncode})"
    result = {"name": step.name, "status": status, "wall_s": round(wall, 2),
              "command": " ".join(step.args)}  # fmt: skip
    if status != "ok":
        result["stderr"] = err[-1500:]
    result.update(READERS[step.kind](step, out))
    return result


def read_train(step: Step, stdout: str) -> dict:
    """timing.json (also written by a run stopped by SIGTERM) and the logged img/s."""
    workdir = pathlib.Path(step.workdir)
    out: dict = {}
    if (workdir / "timing.json").exists():
        out["timing"] = json.loads((workdir / "timing.json").read_text())
    if (workdir / "metrics.jsonl").exists():
        lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
        rates = [m["img_per_s"] for m in lines if "img_per_s" in m]
        steps = [m["step"] for m in lines if "step" in m]
        out["steady_img_per_s"] = round(statistics.median(rates[1:] or rates), 1) if rates else 0
        out["step"] = max(steps, default=0)
        val = [m for m in lines if "val_loss" in m]
        if val:
            out["val_ssim"] = round(val[-1].get("val_ssim", float("nan")), 4)
    return out


def read_evaluate(step: Step, stdout: str) -> dict:
    path = pathlib.Path(step.args[step.args.index("--out") + 1])
    if not path.exists():
        return {}
    result = json.loads(path.read_text())
    keys = ("fd", "fd_recon", "recall", "precision", "ssim", "neg_elbo_nats")
    return {"eval": {k: result[k] for k in keys if k in result}}


def read_bench(step: Step, stdout: str) -> dict:
    lines = [x for x in stdout.splitlines() if x.startswith("[")]
    return {"bench": json.loads(lines[-1])} if lines else {}


READERS = {"train": read_train, "evaluate": read_evaluate, "bench": read_bench}


def bench(arm: str, quick: bool) -> list[dict]:
    """img/s and roofline fractions of one model (`default` or `vae_cats_v1`) at two batch
    sizes in float32 and bfloat16 (--bench mode: a subprocess of the check)."""
    import jax

    from benchmarks import roofline
    from catvae_jax import bench as bench_lib
    from catvae_jax.config import get_config

    if quick:
        config = get_config()
        config.image_size, config.model.widths, config.model.z_dim = 32, (8, 16), 8
        configs, batches, steps, repeats = {"tiny resvae 32²": config}, (8,), 2, 1
    else:
        arms = roofline.arms()
        configs = {k: v for k, v in arms.items() if k.startswith(arm)}
        batches, steps, repeats = (64, 256), 10, 2
    peak_tflops, peak_gbps = roofline.PEAKS.get(jax.devices()[0].device_kind, (0.0, 0.0))
    results = []
    for name, config in configs.items():
        loss = "ssim" if config.loss.ssim_weight > 0 else "mse"
        for dtype in ("float32", "bfloat16"):
            for batch in batches:
                c = config.copy_and_resolve_references()
                c.dtype = dtype
                r = bench_lib.benchmark(c, loss, steps, repeats, batch=batch,
                                        peak_tflops=peak_tflops, peak_gbps=peak_gbps)  # fmt: skip
                results.append({"arm": f"{name} {dtype}", **r})
                print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    return results


def environment() -> dict:
    """The machine: devices, backend and the versions of the stack (imports jax)."""
    import flax
    import jax
    import optax

    return {
        "devices": f"{jax.device_count()} × {jax.devices()[0].device_kind}",
        "backend": jax.default_backend(),
        "jax": jax.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "python": sys.version.split()[0],
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def table(results: list[dict]) -> str:
    """Markdown: one row per run (wall, compile, steps, outside steps, img/s)."""
    rows = [
        "| run | status | wall s | step | compile s (programs) | train steps s | outside steps "
        "| prior fit s | pictures s | steady img/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        t = r.get("timing", {})
        parts = t.get("parts", {})
        cell = lambda k: f"{parts[k]:.1f}" if k in parts else "—"  # noqa: B023
        compile_s = f"{parts['compile']:.1f} ({t['compiles']})" if parts else "—"
        outside = f"{100 * t['outside_train_steps']:.0f} %" if t else "—"
        extra = ""
        if "eval" in r:
            extra = " " + ", ".join(f"{k} {v:.3g}" for k, v in r["eval"].items())
        rows.append(
            f"| {r['name']}{extra} | {r['status']} | {r['wall_s']:.1f} | {r.get('step', '—')} | "
            f"{compile_s} | {cell('train_steps')} | {outside} | {cell('prior_fit')} | "
            f"{cell('pictures')} | {r.get('steady_img_per_s', '—')} |"
        )
    bench_rows = [b for r in results for b in r.get("bench", [])]
    if bench_rows:
        from benchmarks import roofline

        rows += ["", roofline.table(bench_rows)]
    return "\n".join(rows)


def check(quick: bool, root: pathlib.Path, budget: float, out: pathlib.Path) -> dict:
    """Runs the plan within `budget` seconds; writes and returns the result."""
    root.mkdir(parents=True, exist_ok=True)
    deadline = time.perf_counter() + budget
    report = {"quick": quick, "environment": environment(), "budget_s": budget, "steps": []}
    print(json.dumps(report["environment"]), flush=True)
    for step in plan(quick, root):
        left = deadline - time.perf_counter()
        if left < 20:
            report["steps"].append({"name": step.name, "status": "skipped (budget)", "wall_s": 0})
            continue
        result = run_step(step, min(step.timeout, left - 5))
        report["steps"].append(result)
        print(f"{step.name}: {result['status']} in {result['wall_s']:.1f} s", flush=True)
        out.write_text(json.dumps(report, indent=1))  # what is done so far survives a kill
    report["table"] = table(report["steps"])
    out.write_text(json.dumps(report, indent=1))
    print(report["table"])
    return report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny settings: a test of the script")
    p.add_argument("--root", default="runs/accelerator_check", help="workdirs of the runs")
    p.add_argument("--out", default="", help="result JSON (default ROOT/result.json)")
    p.add_argument("--budget", type=float, default=470, help="seconds for all steps")
    p.add_argument("--bench", default="", help=argparse.SUPPRESS)  # internal: one bench step
    args = p.parse_args()
    if args.bench:
        from catvae_jax.train import malloc

        malloc.configure(kernels="auto")
        print(json.dumps(bench(args.bench, args.quick)), flush=True)
        return
    root = pathlib.Path(args.root).resolve()
    out = pathlib.Path(args.out) if args.out else root / "result.json"
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    check(args.quick, root, args.budget, out)


if __name__ == "__main__":
    main()
