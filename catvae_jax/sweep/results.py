"""What a sweep leaves for a person in the study's folder W/<study>: results.csv, results.md,
history.png, importances.png.

One row per trial: number, state, params_<config field> per searched field, the objective, the
other validation metrics (its last validation), the steps it trained, its wall seconds (start
to end, so a resumed trial includes its wait), a note (why it was pruned or failed). Every
file is written atomically.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import pathlib
import warnings

import matplotlib

matplotlib.use("Agg")  # no display: PNG files only

import matplotlib.pyplot as plt
import optuna
from optuna.trial import FrozenTrial, TrialState
from optuna.visualization import matplotlib as plots

from catvae_jax import atomic
from catvae_jax.sweep import spec
from catvae_jax.sweep.spec import Sweep


def _others(sweep: Sweep) -> list[str]:
    return [m for m in spec.VALIDATION_METRICS if m != sweep.objective]


def last_validation(trial_dir: pathlib.Path) -> dict:
    """The last validation line of a trial's metrics.jsonl ({} when there is none here, e.g.
    a trial that ran on another host)."""
    last = {}
    with contextlib.suppress(OSError):
        for line in (trial_dir / "metrics.jsonl").read_text().splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if "val_loss" in record:
                    last = record
    return last


def rows(study: optuna.Study, sweep: Sweep, workdir: pathlib.Path) -> list[dict]:
    """The results table: one dict per trial (WAITING grid points left out), by number; the
    other validation metrics come from the trial's last validation."""
    out = []
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.WAITING:
            continue
        row = {"number": t.number, "state": t.state.name.lower()}
        row.update({f"params_{f}": t.params.get(f, "") for f in sweep.distributions})
        row[sweep.objective] = "" if t.value is None else f"{t.value:.6g}"
        last = last_validation(workdir / "trials" / str(t.number))
        row.update({m: f"{last[m]:.6g}" if m in last else "" for m in _others(sweep)})
        row["steps"] = t.user_attrs.get("steps", "")
        wall = ""
        if t.datetime_start and t.datetime_complete:
            wall = f"{(t.datetime_complete - t.datetime_start).total_seconds():.1f}"
        row["wall_s"] = wall
        row["note"] = t.user_attrs.get("note", "")
        out.append(row)
    return sorted(out, key=lambda r: r["number"])


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The best COMPLETE trial, None when there is none yet."""
    try:
        return study.best_trial
    except ValueError:
        return None


def best_command(study: optuna.Study, sweep: Sweep, workdir: pathlib.Path) -> str | None:
    """The command line that trains the best trial's config again, into `workdir`/best."""
    best = best_trial(study)
    return None if best is None else spec.command_line(sweep, best.params, str(workdir / "best"))


def write_tables(study: optuna.Study, sweep: Sweep, workdir: pathlib.Path, notes: str = "") -> None:
    """results.csv and results.md in `workdir` (the study's folder) as the study stands."""
    table = rows(study, sweep, workdir)
    columns = ["number", "state", *(f"params_{f}" for f in sweep.distributions)]
    columns += [sweep.objective, *_others(sweep), "steps", "wall_s", "note"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    atomic.write_atomic(workdir / "results.csv", buffer.getvalue())

    counts = {s: sum(r["state"] == s for r in table) for s in ("complete", "pruned", "fail")}
    lines = [
        f"# Sweep `{study.study_name}`",
        "",
        f"Objective: {sweep.objective} ({sweep.direction}). Trials: {len(table)} "
        f"({counts['complete']} complete, {counts['pruned']} pruned, {counts['fail']} failed, "
        f"{len(table) - sum(counts.values())} running).",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
        *("| " + " | ".join(str(r[c]) for c in columns) + " |" for r in table),
        "",
    ]
    best, command = best_trial(study), best_command(study, sweep, workdir)
    if best is not None:
        lines += [f"Best: trial {best.number}, {sweep.objective} {best.value:.6g}. Train it:", ""]
        lines += ["```", command, "```", ""]
    if notes:
        lines += [notes, ""]
    atomic.write_atomic(workdir / "results.md", "\n".join(lines))


def write_plots(study: optuna.Study, workdir: pathlib.Path) -> str:
    """history.png and importances.png (Optuna's matplotlib plots); returns a note on what
    was drawn, e.g. why importances were not (fewer than 2 complete trials, no varying
    parameter)."""
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    varying = [p for p in {k for t in complete for k in t.params} if _varies(complete, p)]
    notes = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
        if complete:
            _save(plots.plot_optimization_history(study), workdir / "history.png")
            notes.append("![optimisation history](history.png)")
        else:
            notes.append("No optimisation history plot: no trial has completed.")
        if len(complete) >= 2 and varying:
            try:
                _save(plots.plot_param_importances(study), workdir / "importances.png")
                notes.append("![parameter importances](importances.png)")
            except (ValueError, RuntimeError, ZeroDivisionError) as e:
                notes.append(f"No parameter importances: {e}")
        else:
            notes.append(
                f"No parameter importances: they need at least 2 complete trials whose "
                f"parameters differ ({len(complete)} complete)."
            )
    return "\n\n".join(notes)


def _varies(trials: list[FrozenTrial], param: str) -> bool:
    return len({repr(t.params.get(param)) for t in trials}) > 1


def _save(axes, path: pathlib.Path) -> None:
    figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
    figure.set_size_inches(8, 5)
    figure.tight_layout()
    tmp = path.parent / f".{path.stem}.tmp.png"
    figure.savefig(tmp, dpi=100)
    plt.close(figure)
    os.replace(tmp, path)


def write_all(study: optuna.Study, sweep: Sweep, workdir: pathlib.Path) -> dict:
    """Tables and plots; returns the best trial as {"number", "value", "command"}."""
    notes = write_plots(study, workdir)
    write_tables(study, sweep, workdir, notes)
    best = best_trial(study)
    return {
        "number": None if best is None else best.number,
        "value": None if best is None else best.value,
        "command": best_command(study, sweep, workdir),
    }
