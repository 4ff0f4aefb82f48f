"""One recipe at several training seeds, and its spread: python benchmarks/seeds.py.

A single run's sample quality is one draw: at the quickstart's budget two seeds of the same
recipe differed by 10 points of VGG16 FD (benchmarks/README.md, "Sample quality", stop 32). This
trains the recipe once per seed (`python -m catvae_jax.main ... --config.seed=S`), evaluates each
(`python -m catvae_jax.evaluate --nolikelihood --num_samples N`), and prints a Markdown table:
one row per seed, then the mean ± sample standard deviation of each column. A workdir that
already holds eval.json is not trained or evaluated again, so an interrupted study continues
and finished runs can be tabulated alone:

    python benchmarks/seeds.py --out runs/seeds_quickstart --seeds 0,1,2
    python benchmarks/seeds.py --out runs/seeds_resvae --seeds 0,1,2 \\
        --override=--config.model.name=resvae
    python benchmarks/seeds.py --table runs/seeds_quickstart/seed_*    # the table alone
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (column, eval.json key, digits)
COLUMNS = (
    ("FD AlexNet", "fd", 2),
    ("KID AlexNet", "kid", 3),
    ("precision", "precision", 3),
    ("recall", "recall", 3),
    ("FD VGG16", "fd_vgg", 2),
    ("KID VGG16", "kid_vgg", 3),
    ("fd_recon AlexNet", "fd_recon", 2),
    ("fd_recon VGG16", "fd_recon_vgg", 2),
)


def commands(
    config: str, overrides: list[str], seed: int, workdir: str, num_samples: int
) -> list[list[str]]:
    """The two commands of one seed: train `config` with `overrides` into `workdir`, evaluate."""
    python = sys.executable
    train = [python, "-m", "catvae_jax.main", "--config", config, "--workdir", workdir]
    train += [*overrides, f"--config.seed={seed}"]
    evaluate = [python, "-m", "catvae_jax.evaluate", "--workdir", workdir, "--nolikelihood"]
    return [train, [*evaluate, "--num_samples", str(num_samples)]]


def _cell(value: float | None, digits: int) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def table(workdirs: list[str]) -> str:
    """Markdown: a row of COLUMNS per workdir (from its eval.json; a key it lacks is "—"), then
    "mean ± sd" over the workdirs that have each key (sd: the sample standard deviation, "—"
    for fewer than two)."""
    results = []
    for w in workdirs:
        with open(os.path.join(w, "eval.json")) as f:
            results.append(json.load(f))
    head = ["run", "sampler", *(name for name, _, _ in COLUMNS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for w, r in zip(workdirs, results, strict=True):
        cells = [_cell(r.get(key), digits) for _, key, digits in COLUMNS]
        lines.append(
            f"| {os.path.basename(w.rstrip('/'))} | {r.get('sampler', '—')} | "
            + " | ".join(cells)
            + " |"
        )
    summary = []
    for _, key, digits in COLUMNS:
        values = [float(r[key]) for r in results if r.get(key) is not None]
        if not values:
            summary.append("—")
            continue
        sd = _cell(statistics.stdev(values), digits) if len(values) > 1 else "—"
        summary.append(f"{_cell(statistics.fmean(values), digits)} ± {sd}")
    lines.append(f"| mean ± sd ({len(results)}) | | " + " | ".join(summary) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/quickstart.py")
    parser.add_argument("--out", help="Folder of the runs: OUT/seed_S for each seed.")
    parser.add_argument("--seeds", default="0,1,2", help="Comma-separated training seeds.")
    parser.add_argument(
        "--override", action="append", default=[], help="A --config.FIELD=VALUE (repeatable)."
    )
    parser.add_argument("--num_samples", type=int, default=1000)
    parser.add_argument("--table", nargs="+", metavar="WORKDIR", help="Only tabulate these runs.")
    args = parser.parse_args()
    if args.table:
        print(table(args.table))
        return
    if not args.out:
        parser.error("--out is required unless --table is given")
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    workdirs = []
    for seed in seeds:
        workdir = os.path.abspath(os.path.join(args.out, f"seed_{seed}"))
        workdirs.append(workdir)
        if os.path.exists(os.path.join(workdir, "eval.json")):
            continue
        for cmd in commands(args.config, args.override, seed, workdir, args.num_samples):
            print("$", " ".join(cmd[1:]), flush=True)
            if subprocess.run(cmd, cwd=REPO).returncode != 0:
                sys.exit(f"error: seed {seed} failed: {' '.join(cmd[1:])}")
    print(table(workdirs))


if __name__ == "__main__":
    main()
