"""Runs a sweep: one Optuna study shared by every worker process, each trial a catvae_jax run.

Storage: a JournalStorage file `W/study.journal` by default (no server; several processes on
one machine, or hosts on a shared file system), or `postgresql://...` for many machines.
Workers take turns under one lock (a lock file next to the journal; a PostgreSQL advisory lock)
to count the study's trials and ask for the next one, so K workers never overshoot `trials`
and a grid, enqueued once, hands each point to exactly one worker.

A killed worker's trial stays RUNNING, owned by `host:pid-namespace:pid`. The next worker to
ask claims it when that process is gone (same machine) or its heartbeat is older than
`STALE_S`, and resumes it from its checkpoint in `W/<study>/trials/<number>/`
(train_and_evaluate resumes a workdir); without that directory (another host) the trial
restarts from step 0 with the same number and parameters. Each study has its own folder
`W/<study>/`, so studies that share W (its journal) or a database never share a trial.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import pathlib
import socket
import threading
import time
from collections.abc import Iterator

import optuna
import sqlalchemy
from optuna.distributions import distribution_to_json
from optuna.storages.journal import JournalFileSymlinkLock
from optuna.trial import FrozenTrial, TrialState

from catvae_jax import config as config_lib
from catvae_jax.errors import NonFiniteError, Preempted, UserError
from catvae_jax.sweep import journal, results, spec
from catvae_jax.sweep.spec import Sweep
from catvae_jax.train.loop import train_and_evaluate

# What a lost PostgreSQL server raises: SQLAlchemy's errors, some wrapped by Optuna.
STORAGE_LOST = (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError)
HEARTBEAT_S = 20.0  # a running trial's worker writes a heartbeat this often
STALE_S = 180.0  # a RUNNING trial with no heartbeat for this long is claimed by another worker
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)


def worker_id() -> str:
    """`host:pid-namespace:pid`: pids compare only within one namespace (containers)."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = "-"
    return f"{socket.gethostname()}:{namespace}:{os.getpid()}"


def open_study(
    sweep: Sweep, workdir: str, storage_url: str | None, study_name: str | None
) -> tuple[optuna.Study, contextlib.AbstractContextManager]:
    """Creates or loads the study; returns it and a factory of its cross-worker lock."""
    name = study_name or sweep.name
    check_study_name(name, study_name is None)
    lock = _lock_for(storage_url, workdir, name)  # a bad URL fails before W is made
    os.makedirs(workdir, exist_ok=True)
    with lock():
        storage = _storage(storage_url, workdir)
        study = optuna.create_study(
            storage=storage, study_name=name, direction=sweep.direction, load_if_exists=True
        )
        space = json.dumps({k: distribution_to_json(d) for k, d in sweep.distributions.items()})
        attrs = study.user_attrs
        if "space" not in attrs:
            study.set_user_attr("space", space)
            study.set_user_attr("objective", sweep.objective)
            if sweep.grid is not None:  # once per study, under the lock: no point runs twice
                for point in sweep.grid:
                    study.enqueue_trial(point)
        elif attrs["space"] != space or attrs.get("objective") != sweep.objective:
            raise UserError(
                f"study '{name}' in this storage was made by a different sweep (its space or "
                "objective differs): pass another --study or --workdir"
            )
        if study.direction.name.lower() != sweep.direction:
            raise UserError(f"study '{name}' in this storage has direction {study.direction.name}")
    study.pruner = spec.make_pruner(sweep.pruner)
    return study, lock


def check_study_name(name: str, from_file: bool) -> None:
    """UserError unless `name` can name the study's folder W/<name> (no '/', not '.' or '..',
    not W's own study.journal*, at most 200 characters)."""
    bad = (
        not name
        or name in (".", "..")
        or "/" in name
        or "\\" in name
        or not name.isprintable()
        or name.startswith("study.journal")
        or len(name.encode()) > 200
    )
    if bad:
        where = "the sweep file's name" if from_file else "--study"
        raise UserError(
            f"study name {name!r} ({where}) cannot name its folder in the sweep workdir: "
            "pass --study NAME (letters, digits, '_', '-', '.')"
        )


def study_folder(workdir: str, name: str) -> pathlib.Path:
    """W/<study>: the study's trials/<number>/, results, plots and best/ (so studies sharing
    W, its journal or a PostgreSQL database never share a trial folder)."""
    return pathlib.Path(workdir) / name


def _storage(url: str | None, workdir: str) -> optuna.storages.BaseStorage:
    if url is None:
        return journal.open_storage(os.path.join(workdir, "study.journal"))
    return optuna.storages.RDBStorage(with_driver(url), engine_kwargs={"pool_pre_ping": True})


def with_driver(url: str) -> str:
    """A plain `postgresql://` (or `postgres://`) URL with the psycopg2 driver named: SQLAlchemy
    2.1 would load psycopg 3 for it, which is not installed (psycopg2-binary is)."""
    scheme, sep, rest = url.partition("://")
    return f"postgresql+psycopg2://{rest}" if sep and scheme in ("postgresql", "postgres") else url


def _lock_for(url: str | None, workdir: str, name: str):
    """A context-manager factory for the study's cross-process lock; UserError for a storage
    URL other than postgresql:// (SQLite is unsafe for concurrent workers)."""
    if url is None:
        path = os.path.join(workdir, "study.journal.ask")
        file_lock = JournalFileSymlinkLock(path, grace_period=60)

        @contextlib.contextmanager
        def journal_lock() -> Iterator[None]:
            file_lock.acquire()
            try:
                yield
            finally:
                with contextlib.suppress(RuntimeError):  # taken over after the grace period
                    file_lock.release()

        return journal_lock
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if not scheme.startswith(("postgresql", "postgres")):
        why = " (SQLite is unsafe for concurrent workers)" if scheme.startswith("sqlite") else ""
        raise UserError(f"--storage must be a postgresql:// URL{why}; default: a journal in W")
    try:
        engine = sqlalchemy.create_engine(with_driver(url), poolclass=sqlalchemy.pool.NullPool)
        engine.connect().close()
    except Exception as e:  # a wrong host, user, database or password
        raise UserError(f"cannot connect to --storage: {' '.join(str(e).split())[:200]}") from e
    key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)

    @contextlib.contextmanager
    def advisory_lock() -> Iterator[None]:
        with engine.connect() as conn:  # the lock dies with the connection (a killed worker)
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})

    return advisory_lock


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _claimable(trial: FrozenTrial, me: str, now: float) -> bool:
    """A RUNNING trial whose worker is gone: released, dead on this machine, or silent."""
    if trial.state != TrialState.RUNNING:
        return False
    owner = trial.user_attrs.get("worker", "")
    if not owner:
        return True
    if owner == me:
        return False
    place, _, pid = owner.rpartition(":")
    if place == me.rpartition(":")[0] and pid.isdigit() and not _alive(int(pid)):
        return True
    return now - float(trial.user_attrs.get("heartbeat", 0.0)) > STALE_S


def next_trial(
    study: optuna.Study, sweep: Sweep, total: int, me: str
) -> tuple[optuna.Trial, bool] | None:
    """Under the study lock: claims an abandoned trial (→ (trial, True)), or asks for a new
    one while the study has fewer than `total` counted trials (→ (trial, False)), else None."""
    trials = study.get_trials(deepcopy=False)
    now = time.time()
    for t in trials:
        if _claimable(t, me, now):
            study._storage.set_trial_user_attr(t._trial_id, "worker", me)
            study._storage.set_trial_user_attr(t._trial_id, "heartbeat", now)
            return optuna.Trial(study, t._trial_id), True
    if sum(t.state in COUNTED for t in trials) >= total:
        return None
    study.sampler = spec.make_sampler(sweep, (sweep.seed + len(trials)) % config_lib.SEEDS)
    trial = study.ask(sweep.distributions)
    trial.set_user_attr("worker", me)
    trial.set_user_attr("heartbeat", now)
    return trial, False


class Heartbeat:
    """Writes the trial's `heartbeat` user attribute every HEARTBEAT_S seconds until stopped."""

    def __init__(self, study: optuna.Study, trial_id: int):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(study, trial_id), daemon=True)
        self._thread.start()

    def _beat(self, study: optuna.Study, trial_id: int) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            with contextlib.suppress(Exception):  # storage hiccup: the next beat retries
                study._storage.set_trial_user_attr(trial_id, "heartbeat", time.time())

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def run_trial(
    study: optuna.Study, sweep: Sweep, trial: optuna.Trial, folder: pathlib.Path, lock
) -> str:
    """Trains one trial in `folder/trials/<number>` (`folder`: the study's, W/<study>) and
    tells the study how it ended; returns a one-line summary. Preempted (SIGTERM) or an OSError
    releases the trial and re-raises: the next worker resumes it."""
    number = trial.number
    trial_dir = folder / "trials" / str(number)

    def on_validation(step: int, metrics: dict[str, float]) -> None:
        trial.report(metrics[sweep.objective], step)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step}")

    heartbeat = Heartbeat(study, trial._trial_id)
    state, value, steps, note = TrialState.FAIL, None, 0, ""
    try:
        config = spec.trial_config(sweep, trial.params, study.study_name, number)
        result = train_and_evaluate(config, str(trial_dir), on_validation=on_validation)
        state, value, steps = TrialState.COMPLETE, result[sweep.objective], result["step"]
    except optuna.TrialPruned:
        state, steps, note = TrialState.PRUNED, _last_step(study, trial), "pruned"
    except NonFiniteError as e:
        steps, note = e.step, f"diverged: non-finite loss at step {e.step}"
    except UserError as e:  # a combination the config refuses: this trial fails, the sweep goes on
        note = " ".join(str(e).split())
    except (Preempted, OSError, KeyboardInterrupt):
        heartbeat.stop()
        with contextlib.suppress(Exception):
            study._storage.set_trial_user_attr(trial._trial_id, "worker", "")
        raise
    finally:
        heartbeat.stop()
    with lock():
        if study._storage.get_trial(trial._trial_id).user_attrs.get("worker") != worker_id():
            return f"trial {number}: taken over by another worker; its result is not recorded"
        trial.set_user_attr("steps", int(steps))
        if note:
            trial.set_user_attr("note", note)
        study.tell(trial, value, state=state)
        results.write_tables(study, sweep, folder)
    shown = "" if value is None else f" {sweep.objective} {value:.5g}"
    return f"trial {number}: {state.name.lower()}{shown} after {steps} steps {note}".rstrip()


def _last_step(study: optuna.Study, trial: optuna.Trial) -> int:
    values = study._storage.get_trial(trial._trial_id).intermediate_values
    return max(values) if values else 0


def storage_lost(e: BaseException) -> ConnectionError:
    """A one-line ConnectionError (an OSError: exit code 1) for a lost storage, naming the
    database driver's reason rather than Optuna's wrapper."""
    while isinstance(e, optuna.exceptions.StorageInternalError) and e.__cause__ is not None:
        e = e.__cause__
    reason = getattr(e, "orig", None) or e  # SQLAlchemy's DBAPIError wraps the driver's error
    first = next(iter(str(reason).strip().splitlines()), "")
    return ConnectionError(f"lost the study's storage ({type(reason).__name__}: {first})")


def run_sweep(
    sweep_file: str,
    workdir: str,
    trials: int | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    seed: int | None = None,
) -> dict:
    """One worker: runs trials until the study has `trials` (default: the sweep file's, or a
    grid's size), then writes W/<study>/results.{csv,md} and the plots, prints the best trial
    and returns it as {"number", "value", "command"} (None values when no trial completed).
    UserError for a bad sweep file, flag or storage, before any trial starts; ConnectionError
    when the storage is lost."""
    sweep = spec.load(sweep_file)
    if seed is not None:
        spec.check_seed(seed, "--seed")
        sweep = dataclasses.replace(sweep, seed=seed)
    if trials is not None and trials < 1:
        raise UserError(f"--trials must be a positive number, got {trials}")
    total = trials or sweep.trials or (len(sweep.grid) if sweep.grid else None)
    if total is None:
        raise UserError("say how many trials: --trials N or 'trials' in the sweep file")
    if sweep.grid is not None and total > len(sweep.grid):
        raise UserError(f"--trials {total} is more than the grid's {len(sweep.grid)} points")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study, lock = open_study(sweep, workdir, storage, study_name)
    root = study_folder(workdir, study.study_name)
    root.mkdir(exist_ok=True)
    try:
        best = _work(study, sweep, total, root, lock)
    except STORAGE_LOST as e:  # the trials told so far stay in the study
        raise storage_lost(e) from e
    if best["command"] is None:
        print(f"done: no trial completed; see {root / 'results.md'}", flush=True)
    else:
        print(f"best: trial {best['number']}, objective {best['value']:.6g}", flush=True)
        print(best["command"], flush=True)
        print(f"results: {root / 'results.md'}", flush=True)
    return best


def _work(study: optuna.Study, sweep: Sweep, total: int, root: pathlib.Path, lock) -> dict:
    """Runs trials until the study has `total`, then writes the results; the best trial."""
    me = worker_id()
    print(f"study '{study.study_name}': {total} trials, worker {me}", flush=True)
    while True:
        with lock():
            claimed = next_trial(study, sweep, total, me)
        if claimed is None:
            break
        trial, resumed = claimed
        shown = ", ".join(f"{k}={v}" for k, v in trial.params.items())
        print(f"trial {trial.number}: {'resuming' if resumed else 'starting'} {shown}", flush=True)
        print(run_trial(study, sweep, trial, root, lock), flush=True)
    with lock():
        return results.write_all(study, sweep, root)
