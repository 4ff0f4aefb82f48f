"""Command line: python -m catvae_jax.sweep --sweep experiments/sweep_original.py --workdir W.

Runs trials of the sweep file's study until it has --trials (finished, pruned and failed
together, shared by every worker), then writes W/<study>/results.csv, results.md and the plots
and prints the best trial's command line. Start the same command in K processes (or hosts, with
--storage postgresql://... or W on a shared file system) to run K trials at a time; re-run it
after a crash to continue the study. A bad sweep file, flag or journal is a one-line error with
exit code 2, an environment failure (a full disk, a lost database) one line with exit code 1.
"""

from __future__ import annotations

import sys

from absl import flags

from catvae_jax import cli
from catvae_jax.errors import exit_with
from catvae_jax.sweep import study

_SWEEP = flags.DEFINE_string("sweep", None, "Sweep file (Python with get_sweep()).")
flags.mark_flag_as_required("sweep")
_WORKDIR = flags.DEFINE_string("workdir", None, "Sweep directory: trials/, results, journal.")
flags.mark_flag_as_required("workdir")
_TRIALS = flags.DEFINE_integer("trials", None, "The study's total trials (default: the file's).")
_STORAGE = flags.DEFINE_string("storage", None, "postgresql://... (default: W/study.journal).")
_STUDY = flags.DEFINE_string("study", None, "Study name (default: the sweep file's stem).")
_SEED = cli.define_seed("Sampler seed (default: the sweep file's).", default=None)


def main(argv: list[str]) -> None:
    try:
        with cli.user_errors():
            rest = (_TRIALS.value, _STORAGE.value, _STUDY.value, _SEED.value)
            study.run_sweep(_SWEEP.value, _WORKDIR.value, *rest)
    except OSError as e:  # a full disk, a lost database: the trial's checkpoints are intact
        exit_with(f"{e}; re-run to continue the study", 1)


def run() -> None:
    cli.run_app(main)


if __name__ == "__main__":
    sys.exit(run())
