"""Wall time until validation SSIM reaches a target: the original setup vs the recommended one.

    python benchmarks/time_to_quality.py [--arms exp1,default] [--cap_min 30] [--target 0.80]

Each arm trains with `python -m catvae_jax.main` on synthetic cats at 128×128 in a fresh workdir
(`--workdir_root`, default runs/time_to_quality) and is stopped as soon as a validation reaches
`--target` SSIM, or when `--cap_min` minutes have passed, or when its config's own schedule ends
(epochs, early stopping). Both arms validate every `--eval_images` training images (1280: 20
steps of batch 64, 80 of batch 16) so that neither is favoured by a coarser check or slowed by
more frequent ones; `--eval_every N` sets N steps for every arm instead. The clock starts when the
process starts: start-up, data generation, compilation, validation and checkpoints all count, as
they do for a user.

Arms: `exp1` = configs/exp1.py (the original vae_cats_v1 setup); `default` = configs/default.py
with image_size 128. `--set=--config.FIELD=VALUE` (repeatable) adds an override to every arm.
Prints one line per validation, a Markdown table, the minutes each arm took to the best
validation SSIM that every arm reached, and a last line of JSON (with each arm's curve).
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARMS = {
    "exp1": ["--config", "configs/exp1.py"],
    "default": ["--config", "configs/default.py", "--config.image_size=128"],
}


def _validations(path: str, seen: int) -> list[dict]:
    """Validation lines of metrics.jsonl after the first `seen` ones."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r for r in rows if "val_ssim" in r][seen:]


def batch_size(name: str, overrides: list[str]) -> int:
    """The arm's batch size: its config file's, or the last `--config.batch_size=` override."""
    size = runpy.run_path(os.path.join(REPO, ARMS[name][1]))["get_config"]().batch_size
    for flag in overrides:
        if flag.startswith("--config.batch_size="):
            size = int(flag.split("=", 1)[1])
    return size


def eval_every(name: str, args: argparse.Namespace) -> int:
    """Train steps between the arm's validations (`--eval_every`, or `--eval_images` / batch)."""
    if args.eval_every:
        return args.eval_every
    return max(1, round(args.eval_images / batch_size(name, args.set)))


def run_arm(name: str, args: argparse.Namespace) -> dict:
    """Trains one arm until the target, the cap or its own end; returns the figures."""
    workdir = os.path.join(args.workdir_root, name)
    shutil.rmtree(workdir, ignore_errors=True)
    cmd = [sys.executable, "-m", "catvae_jax.main", *ARMS[name], "--workdir", workdir]
    cmd += [f"--config.eval_every_steps={eval_every(name, args)}", "--config.wandb.mode=disabled"]
    cmd += ["--config.progress_bar=False", *args.set]
    os.makedirs(args.workdir_root, exist_ok=True)
    log_path = os.path.join(args.workdir_root, f"{name}.log")
    log = open(log_path, "w")  # noqa: SIM115  (closed below; the child writes to it)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    result = {"arm": name, "reached": False, "seconds": None, "step": None, "best_val_ssim": 0.0}
    result["curve"] = []  # [minutes, step, val_ssim] per validation
    metrics, seen, reason = os.path.join(workdir, "metrics.jsonl"), 0, "cap"
    while True:
        time.sleep(2.0)
        elapsed = time.perf_counter() - start
        for row in _validations(metrics, seen):
            seen += 1
            result["best_val_ssim"] = max(result["best_val_ssim"], row["val_ssim"])
            result["curve"].append([round(elapsed / 60, 2), row["step"], row["val_ssim"]])
            print(
                f"{name}: {elapsed / 60:5.1f} min  step {row['step']:5d}  "
                f"val_ssim {row['val_ssim']:.4f}",
                flush=True,
            )
            if row["val_ssim"] >= args.target and not result["reached"]:
                result.update(reached=True, seconds=round(elapsed, 1), step=row["step"])
        if result["reached"]:
            reason = "target"
            break
        if proc.poll() is not None:
            reason = f"run ended (exit {proc.returncode})"
            break
        if elapsed > 60 * args.cap_min:
            break
    if proc.poll() is None:
        proc.terminate()
        proc.wait(timeout=120)
    result["stopped_by"] = reason
    result["wall_minutes"] = round((time.perf_counter() - start) / 60, 2)
    result["validations"] = seen
    log.close()
    if reason.startswith("run ended") and proc.returncode:
        with open(log_path) as f:
            lines = f.read().strip().splitlines()
        result["error"] = lines[-1] if lines else ""
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arms", default="exp1,default", help=f"comma-separated of {sorted(ARMS)}")
    p.add_argument("--cap_min", type=float, default=30.0, help="minutes per arm")
    p.add_argument("--target", type=float, default=0.80, help="validation SSIM to reach")
    p.add_argument("--eval_images", type=int, default=1280, help="train images between validations")
    p.add_argument("--eval_every", type=int, default=0, help="train steps between validations")
    p.add_argument("--workdir_root", default=os.path.join("runs", "time_to_quality"))
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="--config.FIELD=VALUE",
        help="a config override for every arm (repeatable), e.g. --set=--config.data.num_train=512",
    )
    args = p.parse_args()
    arms = [a for a in args.arms.split(",") if a]
    if not arms or any(a not in ARMS for a in arms):
        p.error(f"--arms must name some of {sorted(ARMS)}")
    results = [run_arm(a, args) for a in arms]
    print(f"\ncap {args.cap_min:g} min per arm · target val_ssim {args.target} · load "
          f"{os.getloadavg()[0]:.1f}\n")  # fmt: skip
    print("| arm | reached | wall time | step | best val SSIM | stopped by |")
    print("|---|---|---|---|---|---|")
    for r in results:
        when = f"{r['seconds'] / 60:.1f} min" if r["reached"] else f"> {r['wall_minutes']} min"
        print(
            f"| {r['arm']} | {'yes' if r['reached'] else 'no'} | {when} | {r['step'] or '–'} | "
            f"{r['best_val_ssim']:.4f} | {r['stopped_by']} |"
        )
    by_arm = {r["arm"]: r for r in results}
    if {"exp1", "default"} <= set(by_arm) and by_arm["default"]["reached"]:
        a, b = by_arm["exp1"], by_arm["default"]
        if a["reached"]:
            print(f"\ndefault reached the target {a['seconds'] / b['seconds']:.1f}× sooner")
        else:
            print("\ndefault reached the target; exp1 did not within its run")
    if len(results) > 1:
        print(common_level(results))
    print(json.dumps({"cap_min": args.cap_min, "target": args.target, "arms": results}))


def first_minutes(curve: list[list[float]], level: float) -> float:
    """Minutes until a validation of `curve` ([minutes, step, val_ssim] rows) reached `level`."""
    return next(m for m, _, ssim in curve if ssim >= level)


def common_level(results: list[dict]) -> str:
    """A comparison that holds even if no arm reached the target: the minutes each arm took to
    reach the best validation SSIM that every arm reached."""
    level = min(r["best_val_ssim"] for r in results)
    if level <= 0:
        return "\nsome arm never validated"
    times = {r["arm"]: first_minutes(r["curve"], level) for r in results}
    fastest = min(times.values())
    parts = [f"{arm} {t:.1f} min ({t / fastest:.1f}×)" for arm, t in times.items()]
    return f"\nto val_ssim {level:.4f} (the best every arm reached): " + ", ".join(parts)


if __name__ == "__main__":
    main()
