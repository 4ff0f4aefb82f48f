"""Where a training run's wall time goes, on any backend: one `catvae_jax.main` run, its breakdown.

    python benchmarks/loop_overhead.py --config configs/quickstart.py [--config.<field>=V ...]
        [--cold] [--workdir W] [--out breakdown.json]

Runs `python -m catvae_jax.main` in a fresh process (so start-up and imports count) in a new
workdir (a temporary one unless --workdir), then prints the breakdown the run wrote to
WORKDIR/timing.json (catvae_jax/train/timing.py): start-up, data, model init, each compiled
program's compile time and count, train steps, validation, checkpoint waits, the prior fit,
the pictures and the rest, with the share of the wall time outside train steps. `--cold` gives
the run an empty JAX compilation cache (every program compiled); by default it uses the user
cache (`catvae_jax.compile_cache`), as a second run of the same config would. Extra arguments
go to `catvae_jax.main` unchanged. The last line of stdout is the breakdown as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def run(config: str, extra: list[str], workdir: pathlib.Path, cold: bool, timeout: float) -> dict:
    """Runs one training in a subprocess; returns its timing.json plus the outer `process_s`
    (what the caller waited, interpreter exit included) and `returncode`."""
    env = dict(os.environ)
    scratch = None
    if cold:
        scratch = tempfile.TemporaryDirectory(prefix="catvae_cold_cache_")
        env["JAX_COMPILATION_CACHE_DIR"] = scratch.name
    cmd = [sys.executable, "-m", "catvae_jax.main", "--config", config, "--workdir", str(workdir)]
    start = time.perf_counter()
    try:
        proc = subprocess.run([*cmd, *extra], cwd=REPO, env=env, timeout=timeout,
                              capture_output=True, text=True)  # fmt: skip
    finally:
        if scratch is not None:
            scratch.cleanup()
    seconds = time.perf_counter() - start
    path = workdir / "timing.json"
    if proc.returncode != 0 or not path.exists():
        raise RuntimeError(f"run failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    summary = json.loads(path.read_text())
    return {**summary, "process_s": round(seconds, 2), "returncode": proc.returncode}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="config file (as for catvae_jax.main)")
    p.add_argument("--workdir", default="", help="run here (default: a temporary directory)")
    p.add_argument("--cold", action="store_true", help="an empty JAX compilation cache")
    p.add_argument("--out", default="", help="also write the breakdown to this JSON file")
    p.add_argument("--timeout", type=float, default=1800, help="seconds before the run is killed")
    args, extra = p.parse_known_args()

    from catvae_jax.train import timing

    with tempfile.TemporaryDirectory(prefix="catvae_loop_overhead_") as tmp:
        workdir = pathlib.Path(args.workdir) if args.workdir else pathlib.Path(tmp) / "run"
        summary = run(args.config, extra, workdir, args.cold, args.timeout)
    summary.update(config=args.config, overrides=extra, cold_cache=args.cold)
    print(timing.table(summary, top=10))
    print(f"outside train steps: {100 * summary['outside_train_steps']:.1f} % of the wall time")
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
