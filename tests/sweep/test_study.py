"""Sweeps end to end: a grid of tiny trials, two workers on a journal file and on a real
PostgreSQL server, pruning, divergence, a SIGKILLed worker, bad sweep files.

Every trial is conftest's tiny_config (16×16, no learned prior) for 2 steps, written as overrides of
configs/default.py, so the best trial's command line is an ordinary `catvae_jax.main` run.
The PostgreSQL test needs Debian's `postgresql` package (`make test` installs it as root).
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from types import SimpleNamespace

import optuna
import pytest
from conftest import REPO, run_cli, run_cli_cases, subprocess_env, tiny_config

from catvae_jax import config as config_lib
from catvae_jax.errors import UserError
from catvae_jax.sweep import spec, study
from catvae_jax.train.log import TrainingLog


def tiny_overrides() -> dict:
    """conftest's tiny_config as flat overrides of configs/default.py, the sweeps' base (so
    without its perceptual term, tested apart, and resvae, not its hvae): trials of any length
    and learning rate share one compiled train step (steps.Schedule). A trial is the training
    loop alone: no learned prior is fitted at its end (tests/priors/test_learned_prior.py tests
    that fit)."""
    config = tiny_config()
    config.flow_prior = False
    tiny = config_lib.flatten(config.to_dict())
    default = config_lib.flatten(config_lib.recommended_config().to_dict())
    out = {k: v for k, v in tiny.items() if default[k] != v and k != "progress_bar"}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in out.items()}


def write_sweep(path, **keys) -> str:
    """A sweep file at `path` whose get_sweep() returns the tiny base plus `keys`."""
    sweep = {
        "config": "configs/default.py",
        "overrides": tiny_overrides(),
        "budget": {"max_steps": 2},
        "pruner": "none",
        **keys,
    }
    path.write_text(f"def get_sweep():\n    return {sweep!r}\n")
    return str(path)


def sweep_cmd(sweep_file, workdir, *flags) -> list[str]:
    return [
        sys.executable,
        "-m",
        "catvae_jax.sweep",
        "--sweep",
        sweep_file,
        "--workdir",
        str(workdir),
        *flags,
    ]


def read_rows(folder) -> list[dict]:
    """The rows of a study folder W/<study>/results.csv."""
    with open(os.path.join(folder, "results.csv")) as f:
        return list(csv.DictReader(f))


def test_grid_sweep_end_to_end_and_best_command_runs(tmp_path):
    sweep = write_sweep(tmp_path / "sweep_grid.py", grid={"data.seed": [0, 1]})
    work, folder = tmp_path / "w", tmp_path / "w" / "sweep_grid"  # W/<study>
    # unmeasured: the in-process sweep tests and the other workers cover its lines
    done = run_cli("catvae_jax.sweep", "--sweep", sweep, "--workdir", str(work), measured=False)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = read_rows(folder)
    assert [r["number"] for r in rows] == ["0", "1"]
    assert [r["state"] for r in rows] == ["complete"] * 2
    assert sorted(r["params_data.seed"] for r in rows) == ["0", "1"]
    assert all(r["steps"] == "2" and float(r["val_loss"]) > 0 for r in rows)
    assert all(0 < float(r["val_ssim"]) < 1 for r in rows)  # from each trial's last validation
    assert (folder / "history.png").stat().st_size > 0
    assert (folder / "importances.png").stat().st_size > 0
    trial_config = json.loads((folder / "trials" / "1" / "config.json").read_text())
    assert trial_config["wandb"]["group"] == "sweep_grid"
    assert trial_config["data"]["seed"] == int(rows[1]["params_data.seed"])

    best = min(rows, key=lambda r: float(r["val_loss"]))
    command = done.stdout.strip().splitlines()[-2]
    assert command in (folder / "results.md").read_text()
    assert f"--config.data.seed={best['params_data.seed']}" in command
    words = shlex.split(command)
    assert words[:3] == ["python", "-m", "catvae_jax.main"]
    rerun = subprocess.run(
        [sys.executable, *words[1:]], cwd=REPO, env=subprocess_env(measured=False),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    best_config = json.loads((folder / "best" / "config.json").read_text())
    assert best_config["data"]["seed"] == int(best["params_data.seed"])
    assert f"val_loss {float(best['val_loss']):.4g}" in rerun.stdout  # the same run again

    again = run_cli("catvae_jax.sweep", "--sweep", sweep, "--workdir", str(work))
    assert again.returncode == 0 and "starting" not in again.stdout  # the study is complete
    assert len(read_rows(folder)) == 2


def _two_workers(sweep_file, workdir, *flags) -> list[subprocess.CompletedProcess]:
    env = subprocess_env(measured=False)  # conftest.subprocess_env says why
    procs = [
        subprocess.Popen(
            sweep_cmd(sweep_file, workdir, *flags),
            cwd=REPO,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        outs.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return outs


def _assert_no_duplicates(rows, fields, total):
    assert len(rows) == total
    assert sorted(int(r["number"]) for r in rows) == list(range(total))
    points = [tuple(r[f"params_{f}"] for f in fields) for r in rows]
    assert len(set(points)) == total, points
    assert all(r["state"] == "complete" for r in rows), rows


def test_two_workers_share_one_journal_file(tmp_path):
    # A random search with one seed: unless each trial is seeded apart, both workers would
    # draw the same points.
    sweep = write_sweep(
        tmp_path / "sweep_two.py", space={"data.seed": ("int", 0, 10**6)}, sampler="random"
    )
    outs = _two_workers(sweep, tmp_path / "w", "--trials", "3")
    assert [o.returncode for o in outs] == [0, 0], [o.stderr[-1500:] for o in outs]
    _assert_no_duplicates(read_rows(tmp_path / "w" / "sweep_two"), ["data.seed"], 3)
    assert sum(o.stdout.count(": starting") for o in outs) == 3  # no trial ran twice


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres():
    """A throwaway PostgreSQL server on 127.0.0.1 (initdb + pg_ctl, as user postgres when
    running as root); yields its `url` (plain postgresql://, as a user writes it), `start()`
    and `stop()` (immediate, as a crash or a lost network would), and stops it afterwards."""
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if not bins:
        pytest.skip(
            "PostgreSQL is not installed (Debian: apt-get install postgresql; "
            "`make test` installs it when run as root)"
        )
    bindir = os.path.dirname(bins[-1])
    data = tempfile.mkdtemp(prefix="catvae_pg_")
    as_user = []
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root
        shutil.chown(data, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    run = lambda *a: subprocess.run([*as_user, *a], check=True, capture_output=True, timeout=120)
    run(f"{bindir}/initdb", "-D", data, "-U", "postgres", "-A", "trust")
    options = f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={data}"
    running = []

    def start() -> None:
        run(f"{bindir}/pg_ctl", "-D", data, "-o", options, "-l", f"{data}/log", "-w", "start")
        running.append(True)

    def stop(mode: str = "immediate") -> None:
        run(f"{bindir}/pg_ctl", "-D", data, "-m", mode, "-w", "stop")
        running.clear()

    start()
    try:
        yield SimpleNamespace(
            url=f"postgresql://postgres@127.0.0.1:{port}/postgres", start=start, stop=stop
        )
    finally:
        if running:
            stop("fast")
        shutil.rmtree(data, ignore_errors=True)


def test_two_workers_share_one_postgres_study_and_grid_points_run_once(tmp_path, postgres):
    sweep = write_sweep(tmp_path / "sweep_pg.py", grid={"data.seed": [0, 1, 2]})
    outs = _two_workers(sweep, tmp_path / "w", "--storage", postgres.url)  # plain postgresql://
    assert [o.returncode for o in outs] == [0, 0], [o.stderr[-1500:] for o in outs]
    _assert_no_duplicates(read_rows(tmp_path / "w" / "sweep_pg"), ["data.seed"], 3)
    stored = optuna.load_study(study_name="sweep_pg", storage=study.with_driver(postgres.url))
    assert len(stored.trials) == 3  # the grid was enqueued once, not by each worker
    assert not (tmp_path / "w" / "study.journal").exists()


def test_a_plain_postgresql_url_gets_the_installed_driver():
    # SQLAlchemy 2.1 loads psycopg 3 for postgresql://, which is not installed; psycopg2 is.
    assert study.with_driver("postgresql://u@h/db") == "postgresql+psycopg2://u@h/db"
    assert study.with_driver("postgres://u:p@h:5/db") == "postgresql+psycopg2://u:p@h:5/db"
    assert study.with_driver("postgresql+psycopg2://u@h/db") == "postgresql+psycopg2://u@h/db"


def test_postgres_lost_mid_trial_is_one_line_exit_1_and_keeps_the_completed_trial(
    tmp_path, postgres
):
    sweep = write_sweep(
        tmp_path / "sweep_lost.py",
        grid={"data.seed": [0, 1]},
        budget={"max_steps": 6},
        overrides={**tiny_overrides(), "eval_every_steps": 1},  # reports to the study each step
    )
    proc = subprocess.Popen(
        sweep_cmd(sweep, tmp_path / "w", "--storage", postgres.url), cwd=REPO,
        env=subprocess_env(measured=False), text=True, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    seen = []
    for line in proc.stdout:  # trial 0 is complete when trial 1 starts
        seen.append(line)
        if line.startswith("trial 1: starting"):
            postgres.stop()  # immediate: the server is gone, as in a crash
            break
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, "".join(seen) + out + err[-2000:]
    assert err.startswith("error: lost the study's storage (") and err.count("\n") == 1, err
    assert err.rstrip().endswith("re-run to continue the study")
    postgres.start()
    stored = optuna.load_study(study_name="sweep_lost", storage=study.with_driver(postgres.url))
    states = [t.state.name for t in stored.trials]
    assert states == ["COMPLETE", "RUNNING"], states  # trial 1 resumes on a re-run


def test_trials_built_to_be_pruned_are_pruned_and_end_with_their_checkpoint(tmp_path):
    # The validation loss of a tiny run is ~700: above `upper` at the first validation (step 1).
    sweep = write_sweep(
        tmp_path / "sweep_prune.py",
        grid={"data.seed": [0, 1]},
        overrides={**tiny_overrides(), "eval_every_steps": 1},
        pruner=("threshold", {"upper": 1.0}),
    )
    best = study.run_sweep(sweep, str(tmp_path / "w"))
    rows = read_rows(tmp_path / "w" / "sweep_prune")
    assert [(r["state"], r["steps"], r["note"]) for r in rows] == [("pruned", "1", "pruned")] * 2
    assert float(rows[0]["val_loss"]) > 1.0  # the last reported value
    ckpts = tmp_path / "w" / "sweep_prune" / "trials" / "1" / "checkpoints"
    assert (ckpts / "1").is_dir() and not (ckpts / "2").exists()  # ended cleanly at step 1
    assert best["command"] is None
    results = (tmp_path / "w" / "sweep_prune" / "results.md").read_text()
    assert "no trial has completed" in results and "No parameter importances" in results


def test_two_studies_in_one_workdir_keep_their_own_trials(tmp_path):
    # Study B once resumed study A's finished trial 0 and recorded A's result as its own.
    work = tmp_path / "w"
    first = write_sweep(tmp_path / "sweep_a.py", grid={"data.seed": [0]})
    second = write_sweep(tmp_path / "sweep_b.py", grid={"data.seed": [1], "seed": [7]})
    a = study.run_sweep(first, str(work))
    with pytest.raises(UserError, match="pass another --study"):  # sweep_b is not sweep_a
        study.run_sweep(second, str(work), study_name="sweep_a")
    b = study.run_sweep(second, str(work), study_name="other")  # the advice, taken
    for name, seed in (("sweep_a", 0), ("other", 1)):
        folder = work / name
        (row,) = read_rows(folder)
        assert row["state"] == "complete" and row["params_data.seed"] == str(seed)
        config = json.loads((folder / "trials" / "0" / "config.json").read_text())
        assert config["data"]["seed"] == seed and config["wandb"]["group"] == name
        assert (folder / "results.md").is_file() and (folder / "history.png").is_file()
    assert a["value"] != b["value"]  # B trained its own trial, on other data
    assert f"--workdir {work / 'other' / 'best'}" in b["command"]
    assert not (work / "trials").exists() and not (work / "results.csv").exists()


def test_a_diverging_trial_fails_and_the_sweep_goes_on(tmp_path):
    sweep = write_sweep(tmp_path / "sweep_div.py", grid={"learning_rate": [1e6, 3e-3]})
    best = study.run_sweep(sweep, str(tmp_path / "w"))
    rows = read_rows(tmp_path / "w" / "sweep_div")
    assert [r["state"] for r in rows] == ["fail", "complete"]
    assert rows[0]["note"].startswith("diverged: non-finite loss at step ")
    assert int(rows[0]["steps"]) == int(rows[0]["note"].rsplit(" ", 1)[-1])
    assert best["number"] == 1


def test_a_killed_worker_is_resumed_by_the_next(tmp_path):
    sweep = write_sweep(
        tmp_path / "sweep_kill.py",
        grid={"data.seed": [5]},
        budget={"max_steps": 12},
        overrides={**tiny_overrides(), "checkpoint_every_steps": 2},
    )
    work = tmp_path / "w"
    proc = subprocess.Popen(
        sweep_cmd(sweep, work),
        cwd=REPO,
        env=subprocess_env(measured=False),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    ckpts = work / "sweep_kill" / "trials" / "0" / "checkpoints"
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        if ckpts.is_dir() and any(p.name.isdigit() for p in ckpts.iterdir()):
            break
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    saved = max(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())
    assert saved < 12, "the worker finished before it was killed"

    again = run_cli("catvae_jax.sweep", "--sweep", sweep, "--workdir", str(work))
    assert again.returncode == 0, again.stderr[-2000:]
    assert "trial 0: resuming" in again.stdout
    assert "resumed from step" in again.stdout
    rows = read_rows(work / "sweep_kill")
    assert len(rows) == 1 and rows[0]["state"] == "complete" and rows[0]["steps"] == "12"


def test_a_seeded_sampler_proposes_the_same_trials(tmp_path):
    sweep_file = write_sweep(
        tmp_path / "sweep_seed.py",
        space={
            "learning_rate": ("log", 1e-4, 1e-2),
            "model.z_dim": ("int", 4, 16),
            "model.widths": ("choice", [(8, 16, 16, 16), (8, 8, 16, 16)]),
        },
    )
    sweep = spec.load(sweep_file)

    def proposals(seed: int, where: str) -> list[dict]:
        seeded = dataclasses.replace(sweep, seed=seed)
        opened, lock = study.open_study(seeded, str(tmp_path / where), None, None)
        out = []
        for i in range(3):
            with lock():
                trial, resumed = study.next_trial(opened, seeded, 3, "me")
            assert not resumed
            out.append(trial.params)
            opened.tell(trial, float(i))  # no training: only the proposals are compared
        return out

    first = proposals(0, "a")
    assert first == proposals(0, "b")
    assert first != proposals(1, "c")
    config = spec.trial_config(sweep, first[0], "s", 0)  # a choice of tuples decodes
    assert config.model.widths in ((8, 16, 16, 16), (8, 8, 16, 16))
    assert f"--config.model.widths={_widths_flag(config.model.widths)}" in shlex.split(
        spec.command_line(sweep, first[0], "w")
    )


def _widths_flag(widths) -> str:
    return "(" + ",".join(map(str, widths)) + ")"


BAD = {
    "missing": (None, "does not exist"),
    "syntax": ("def get_sweep(:\n", "syntax error"),
    "no_get_sweep": ("def get_config():\n    return {}\n", "has no get_sweep()"),
    "unknown_field": ({"grid": {"model.no_such": [1]}}, "unknown config field 'model.no_such'"),
    "wrong_type": ({"space": {"model.z_dim": ("uniform", 1.0, 8.0)}}, "cannot take"),
    "empty_space": ({"space": {}}, "is empty"),
    "empty_grid": ({"grid": {"seed": []}}, "non-empty list"),
    "bad_value": ({"space": {"learning_rate": ("log", 0.0, 1.0)}}, "learning_rate"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_sweep_file_is_one_user_error(tmp_path, case):
    body, message = BAD[case]
    path = tmp_path / "sweep_bad.py"
    if isinstance(body, str):
        path.write_text(body)
    elif isinstance(body, dict):
        write_sweep(path, **body)
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        spec.load(str(path))


def _study_with_one_trial(sweep_file, workdir) -> bytes:
    """W/study.journal holding the sweep's study with one complete trial (told, not trained);
    returns the journal's bytes."""
    sweep = spec.load(sweep_file)
    opened, lock = study.open_study(sweep, str(workdir), None, None)
    with lock():
        trial, _ = study.next_trial(opened, sweep, 1, "me")
    opened.tell(trial, 1.0)
    return (workdir / "study.journal").read_bytes()


def test_a_torn_journal_tail_is_set_aside_and_the_study_goes_on(tmp_path, capsys):
    sweep_file = write_sweep(
        tmp_path / "sweep_torn.py", space={"seed": ("int", 0, 9)}, sampler="random"
    )
    work = tmp_path / "w"
    journal = _study_with_one_trial(sweep_file, work)
    torn = journal.splitlines(keepends=True)[-1][:25]  # a record cut mid-write (a killed worker)
    (work / "study.journal").write_bytes(journal + torn)
    sweep = spec.load(sweep_file)
    opened, lock = study.open_study(sweep, str(work), None, None)
    warning = capsys.readouterr().err.strip()
    assert warning.startswith("warning: ") and warning.endswith("study.journal.torn")
    repaired = (work / "study.journal").read_bytes()  # + the create_study record Optuna adds
    assert repaired.startswith(journal) and all(map(json.loads, repaired.splitlines()))
    assert (work / "study.journal.torn").read_bytes() == torn + b"\n"
    with lock():
        trial, _ = study.next_trial(opened, sweep, 2, "me")
    opened.tell(trial, 2.0)  # Optuna glued the next record onto the torn bytes: lost
    again, _ = study.open_study(sweep, str(work), None, None)
    assert [t.state.name for t in again.trials] == ["COMPLETE", "COMPLETE"]


def test_the_cli_exits_2_with_one_line_before_any_trial(tmp_path):
    path = write_sweep(tmp_path / "sweep_bad.py", space={"model.z_dim": ("uniform", 1.0, 8.0)})
    grid = write_sweep(tmp_path / "s.py", grid={"seed": [1]})
    space = write_sweep(
        tmp_path / "r.py", space={"seed": ("int", 0, 9)}, sampler="random", trials=2
    )
    work = tmp_path / "kept"  # a study with a complete trial, which no case may touch
    journal = _study_with_one_trial(space, work)
    bad = {  # sweep file keys → what the one line says
        "pruner": (("median", {"n_startup_trials": -1}), "cannot be negative"),
        "pruner ": (("halving", {"reduction_factor": 1}), "reduction_factor"),
        "seed": (-3, "'seed' must be an int from 0 to 2**32 - 1, got -3"),
        "grid": ({"seed": list(range(40)), "data.seed": list(range(40))}, "1600 points"),
        "space": ({"seed": ("choice", list(range(1001)))}, "1001 choices"),
    }
    files = {}
    for i, (key, (value, _)) in enumerate(bad.items()):
        base = {"grid": {"seed": [1]}} if key.strip() in ("pruner", "seed") else {}
        files[key] = write_sweep(tmp_path / f"bad{i}.py", **{**base, key.strip(): value})
    flags = {  # command-line flags → what the one line says
        ("--seed", "-1"): "--seed=-1: -1 is not an integer in the range [0, 4294967295]",
        ("--seed", str(2**40)): f"--seed={2**40}: {2**40} is not an integer in the range",
        ("--trials", "-1"): "--trials must be a positive number, got -1",
        ("--trials", "0"): "got 0",
        ("--study", "../up"): "cannot name its folder",
    }
    lines = journal.splitlines(keepends=True)
    damaged = {  # a journal damaged inside → what the one line says
        "garbage": (lines[0] + b"not a record\n" + b"".join(lines[1:]), "line 2 is damaged"),
        "record": (journal + b'{"op_code": 0}\n', "holds a damaged record (KeyError"),
    }
    for name, (data, _) in damaged.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "study.journal").write_bytes(data)
    sweep = lambda file, *rest: ("catvae_jax.sweep", "--sweep", file, "--workdir", work, *rest)
    done, sqlite, *cases = run_cli_cases(
        [
            ("catvae_jax.sweep", "--sweep", path, "--workdir", tmp_path / "w"),
            ("catvae_jax.sweep", "--sweep", grid, "--workdir", tmp_path / "w2", "--storage",
             "sqlite:///x.db"),
            *(sweep(file) for file in files.values()),
            *(sweep(space, *flag) for flag in flags),
            *(sweep(space, "--workdir", tmp_path / name) for name in damaged),  # the last wins
        ]
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and done.stderr.startswith("error: ")
    assert not (tmp_path / "w").exists()
    assert sqlite.returncode == 2 and "SQLite" in sqlite.stderr
    messages = [message for _, message in bad.values()] + list(flags.values())
    messages += [message for _, message in damaged.values()]
    for case, message in zip(cases, messages, strict=True):
        assert case.returncode == 2, (message, case.stderr[-1500:])
        assert case.stderr.startswith("error: ") and case.stderr.strip().count("\n") == 0
        assert message in case.stderr, (message, case.stderr)
        assert case.stdout == ""  # refused before any trial
    assert (work / "study.journal").read_bytes() == journal  # the completed trial is kept
    for name, (data, _) in damaged.items():  # a damaged journal is left as it was
        assert (tmp_path / name / "study.journal").read_bytes() == data
    assert not (work / "up").exists() and not (tmp_path / "up").exists()


def test_each_trial_is_a_wandb_run_in_the_studys_group(tmp_path, monkeypatch):
    calls = []
    run = SimpleNamespace(log=lambda *a, **k: None, finish=lambda: None)
    fake = SimpleNamespace(init=lambda **kw: calls.append(kw) or run)
    monkeypatch.setitem(sys.modules, "wandb", fake)  # what wandb.init is asked, nothing synced
    monkeypatch.delenv("WANDB_MODE", raising=False)  # the tests' environment would disable it
    sweep = spec.load(write_sweep(tmp_path / "sweep_wb.py", grid={"data.seed": [3]}))
    config = spec.trial_config(sweep, {"data.seed": 3}, "my_study", 7)
    config.wandb.mode = "offline"
    log = TrainingLog(tmp_path, config)
    log.write(1, 1, {"train_loss": 1.0})  # the W&B run opens with the first line
    log.close()
    assert calls[0]["group"] == "my_study" and calls[0]["name"] == "my_study-7"
