"""Running a study: in this process, with local worker processes, or as a worker that
joins a shared study from another machine (:func:`join_study`)."""

from __future__ import annotations

import logging
import multiprocessing as mp
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from mlfolio import products, progress
from mlfolio.config import Config, FeaturesConfig, SchemaConfig, TuningConfig
from mlfolio.errors import ConfigError, OverBudget
from mlfolio.train import available_cores
from mlfolio.tune.search import Folds, make_objective, tuning_rows
from mlfolio.tune.storage import (
    FINISHED,
    claimed_before,
    fail_stale_trials,
    is_shared,
    load_study,
    masked,
    open_study,
    rdb_storage,
    remaining_trials,
    storage_errors,
    storage_for,
)

log = logging.getLogger(__name__)
CLAIMED = (*FINISHED, optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)
WAIT_S = 1.0  # between looks at trials running elsewhere (heartbeats are seconds apart)


def fold_threads(cfg: TuningConfig, workers: int) -> int:
    """Threads boosting one trial's folds side by side: ``tuning.fold_threads``, else all
    ``cv_folds`` when each of ``workers`` worker processes has two cores or more, else 1.

    All folds rather than one per core: they meet at every check, and with fewer threads
    than folds the last fold of each round of checks boosts alone while a core idles (3
    folds on 2 cores, 20 trials at 24k rows: 1.40x one thread's speed with 2 threads,
    1.70x with 3)."""
    if cfg.fold_threads is not None:
        return cfg.fold_threads
    return cfg.cv_folds if available_cores() // workers >= 2 else 1


def study_objective(cfg: TuningConfig, folds: Folds, seed: int, workers: int) -> Any:
    """The study's objective as ``cfg`` sets it, for one of ``workers`` worker processes."""
    prune = cfg.pruner != "none"
    threads = fold_threads(cfg, workers)
    return make_objective(folds, cfg.model, seed, prune, cfg.early_stopping_rounds, threads)


def _budgeted(
    objective: Callable[[optuna.Trial], float], n_trials: int, sampler_seed: int
) -> Callable[[optuna.Trial], float]:
    def run(trial: optuna.Trial) -> float:
        trial.set_user_attr("worker_seed", sampler_seed)  # which worker ran it
        # Fewer trials than its number were claimed before it: only a trial numbered
        # n_trials or more can be over the budget (saves a query per trial).
        if trial.number >= n_trials and claimed_before(trial) >= n_trials:
            trial.set_user_attr("over_budget", True)
            raise OverBudget(f"the study's {n_trials} trials were claimed before this one")
        return objective(trial)

    return run


def _stop_over_budget(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    if trial.user_attrs.get("over_budget"):  # workers elsewhere took the last trials
        study.stop()


def _progress(path: Path | None, n_trials: int) -> Callable[..., None]:
    """A study callback that writes trials finished / ``n_trials`` and the best value so
    far to ``path`` (:mod:`mlfolio.progress`), which the runner shows while tune runs."""

    def report(study: optuna.Study, trial: optuna.trial.FrozenTrial | None) -> None:
        if path is None:
            return
        trials = study.get_trials(deepcopy=False)
        states = [t.state for t in trials]
        complete = [t for t in trials if t.state == FINISHED[0] and t.value is not None]
        pick = max if study.direction == optuna.study.StudyDirection.MAXIMIZE else min
        best = pick(complete, key=lambda t: t.value) if complete else None
        doc = {
            "done": sum(s in FINISHED for s in states),
            "total": n_trials,
            "pruned": states.count(FINISHED[1]),
            "failed": states.count(optuna.trial.TrialState.FAIL),
            "best": best.value if best else None,
            "best_trial": best.number if best else None,
        }
        try:
            progress.write(path, doc)
        except OSError as exc:  # progress is for the eye: never fail tuning over it
            log.debug("could not write tuning progress to %s: %s", path, exc)

    return report


def _take_slot(slots: Any) -> bool:
    """Claim one of the trials still to run (a shared counter); False when none is left."""
    if slots is None:  # a worker of its own (join_study): the storage's budget alone
        return True
    with slots.get_lock():
        if slots.value <= 0:
            return False
        slots.value -= 1
        return True


def _worker(
    cfg: TuningConfig,
    storage: Any,
    name: str,
    seed: int,
    worker: int,
    folds: Folds,
    slots: Any = None,
    deadline: float | None = None,
    progress_path: Path | None = None,
    workers: int = 1,
) -> int:
    """Run trials on the shared study until ``cfg.n_trials`` are finished or claimed (and,
    with ``slots``, while this run's shared counter has some left); no new trial starts
    after ``deadline`` (a ``time.time()``). Returns the finished trials it ran.

    The sampler's seed is ``seed + 1 + worker`` (identical seeds would repeat each other's
    trials); the models' seed is ``seed`` for every worker, so a trial's value does not
    depend on which worker ran it.
    """
    if _left(deadline) == 0:
        return 0
    sampler_seed = seed + 1 + worker
    study = load_study(cfg, storage, name, sampler_seed)
    if remaining_trials(study, cfg.n_trials) == 0 or not _take_slot(slots):
        return 0
    ran = 0

    def next_slot(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        nonlocal ran
        ran += trial.state in FINISHED
        # Stop when this run's trials are all handed out, or when the study's budget is
        # claimed (a shared storage: by workers elsewhere too).
        if trial.user_attrs.get("over_budget") or not _take_slot(slots):
            study.stop()
        elif cfg.storage and len(study.get_trials(deepcopy=False, states=CLAIMED)) >= cfg.n_trials:
            study.stop()

    objective = _budgeted(study_objective(cfg, folds, seed, workers), cfg.n_trials, sampler_seed)

    def run(n_trials: int | None) -> None:
        study.optimize(
            objective,
            n_trials=n_trials,
            timeout=_left(deadline),
            callbacks=[next_slot, _progress(progress_path, cfg.n_trials)],
            catch=(OverBudget,),
        )

    run(None)
    if cfg.storage:
        slots = None  # the slots apportioned this run's first pass; the study's budget rules now
        _see_budget_through(study, cfg.n_trials, deadline, run)
    return ran


def _left(deadline: float | None) -> float | None:
    """Seconds until ``deadline`` (never below 0), None without one."""
    return None if deadline is None else max(0.0, deadline - time.time())


def _see_budget_through(
    study: optuna.Study,
    n_trials: int,
    deadline: float | None,
    run_more: Callable[[int], None],
) -> None:
    """A shared study is done when it has ``n_trials`` finished trials and none RUNNING,
    not when this worker finds nothing left to claim: a worker killed mid-trial leaves
    its trial RUNNING, holding the last slot. So wait while trials run (elsewhere, or
    dead), failing those whose heartbeat stopped for the grace period (Optuna's
    ``fail_stale_trials``), and run the trials still missing when none is running.
    Gives up at ``deadline`` (``tuning.timeout``)."""
    running = (optuna.trial.TrialState.RUNNING,)
    fruitless, waiting = 0, False
    while True:
        missing = remaining_trials(study, n_trials)
        busy = bool(study.get_trials(deepcopy=False, states=running))
        if not busy and missing == 0:
            return
        if _left(deadline) == 0:  # tuning.timeout: what is finished is the study
            return
        if busy:
            if not waiting:
                log.info("study %s: waiting for the trials running elsewhere", study.study_name)
            waiting = True
            time.sleep(WAIT_S)
            fail_stale_trials(study)
            continue
        waiting = False
        if fruitless >= 3:  # every new trial is refused as over budget: do not spin
            log.warning("study %s: %d trial(s) short, none could run", study.study_name, missing)
            return
        log.info(
            "study %s: %d trial(s) short of %d with none running: running them here",
            study.study_name,
            missing,
            n_trials,
        )
        run_more(missing)
        fruitless = fruitless + 1 if remaining_trials(study, n_trials) >= missing else 0


def _child_worker(*args: Any) -> None:
    from threadpoolctl import threadpool_limits

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # xgboost runs with n_jobs=1, but some of its data handling uses every OpenMP
    # thread; with one worker per core those extra threads only compete.
    threadpool_limits(1, user_api="openmp")
    _worker(*args)


def _process_context() -> Any:
    """Fork server (or spawn), never a plain fork of the caller: see the package notes."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    # Imported once in the server, then every worker forks from it already warm.
    ctx.set_forkserver_preload(["mlfolio.tune", "xgboost"])
    return ctx


def _start_process_server() -> None:
    """Start the fork server now (no-op when running, or when spawn is used instead)."""
    if _process_context().get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()


def _run_workers(
    cfg: TuningConfig,
    storage: Any,
    name: str,
    seed: int,
    folds: Folds,
    todo: int,
    progress_path: Path | None = None,
) -> None:
    """``n_workers`` workers: this process is the first (it is warm and would otherwise
    wait idle), the others are child processes that start while it already runs trials."""
    import threading

    from threadpoolctl import threadpool_limits

    ctx = _process_context()
    slots = ctx.Value("i", todo)
    n = min(cfg.n_workers, todo)
    # One deadline for all: children that start seconds later do not get extra time.
    deadline = None if cfg.timeout is None else time.time() + cfg.timeout
    args = [
        (cfg, storage, name, seed, i, folds, slots, deadline, progress_path, n) for i in range(n)
    ]
    children = [
        ctx.Process(target=_child_worker, name=f"tune-worker-{i}", args=args[i])
        for i in range(1, n)
    ]
    start_errors: list[BaseException] = []

    def start_children() -> None:
        # Process.start() waits for the fork server, which first imports xgboost and
        # mlfolio (seconds, once per session): do that off this thread's critical path.
        try:
            for proc in children:
                proc.start()
        except BaseException as exc:  # re-raised below
            start_errors.append(exc)

    starter = threading.Thread(target=start_children, name="tune-worker-starter", daemon=True)
    starter.start()
    try:
        with threadpool_limits(1, user_api="openmp"):
            _worker(*args[0])
        starter.join()
        for proc in children:
            if proc.pid is not None:
                proc.join()
    finally:
        # On an error here, or Ctrl-C in the notebook, stop the children too. Their
        # RUNNING trials are marked failed when the study is next opened.
        starter.join()
        for proc in children:
            if proc.pid is not None and proc.is_alive():
                proc.terminate()
                proc.join()
    if start_errors:
        raise RuntimeError("could not start the tuning worker processes") from start_errors[0]
    failed = {proc.name: proc.exitcode for proc in children if proc.exitcode != 0}
    if failed:
        raise RuntimeError(
            f"tuning worker(s) failed with exit codes {failed}; their traceback is on stderr"
        )


def run_study(
    cfg: TuningConfig,
    train: pd.DataFrame,
    schema: SchemaConfig,
    seed: int,
    run_dir: Path,
    study_name: str,
    progress_path: Path | None = None,
    first_trial: dict[str, Any] | None = None,
    first_trial_note: str | None = None,
    encoding: FeaturesConfig | None = None,
    folds_dir: Path | None = None,
) -> optuna.Study:
    """Run (or resume) the study until ``n_trials`` trials have finished or time is up.

    ``folds_dir``: a folder that keeps the CV folds between processes (a tune job's
    checkpoint folder), so a restarted one loads them instead of refitting the feature
    transform per fold (:func:`cached_folds`).

    ``first_trial``: parameters the study's first trial evaluates (a new study only, e.g.
    the champion's: :func:`~mlfolio.tune.space_values`); ``first_trial_note`` is kept as
    its user attribute ``enqueued``; ``encoding``: the run's ``features`` (one-hot caps).

    With ``n_workers > 1`` this process and ``n_workers - 1`` child processes work on the
    same storage, each with its own sampler seed (identical seeds would repeat each
    other's trials); together they run exactly the missing trials (unless the timeout
    stops them first). A script that does this needs the usual
    ``if __name__ == "__main__":`` guard (the children import the main module).
    When workers elsewhere (:func:`join_study`) have already finished the study, this
    only reads it. ``progress_path``: where each finished trial updates the progress the
    runner shows (trials done / total, best so far).
    """
    with storage_errors(cfg):
        deadline = None if cfg.timeout is None else time.time() + cfg.timeout
        storage = storage_for(cfg, run_dir)
        study = open_study(cfg, storage, study_name, seed)
        todo = remaining_trials(study, cfg.n_trials)
        if todo == 0:
            log.info("study %s already has %d finished trials", study_name, cfg.n_trials)
            return study
        if first_trial and not study.trials:  # a resumed study has run (or queued) it already
            study.enqueue_trial(first_trial, user_attrs={"enqueued": first_trial_note or "given"})
        if cfg.n_workers > 1 and todo > 1:
            _start_process_server()  # it boots while the folds are built
        folds = cached_folds(cfg, train, schema, seed, encoding, folds_dir)
        workers = min(cfg.n_workers, todo)
        objective = _budgeted(study_objective(cfg, folds, seed, workers), cfg.n_trials, seed)

        def run_here(n_trials: int) -> None:
            study.optimize(
                objective,
                n_trials=n_trials,
                timeout=_left(deadline),
                catch=(OverBudget,),
                callbacks=[_stop_over_budget, _progress(progress_path, cfg.n_trials)],
            )

        if cfg.n_workers == 1:
            run_here(todo)
        else:
            _run_workers(cfg, storage, study_name, seed, folds, todo, progress_path)
        study = load_study(cfg, storage, study_name, seed)
        if cfg.storage:  # trials of workers elsewhere, or of a dead one, are in the budget
            _see_budget_through(study, cfg.n_trials, deadline, run_here)
        # The final count once, from the whole study: workers' last writes may cross.
        _progress(progress_path, cfg.n_trials)(study, None)
        return study


def cached_folds(
    cfg: TuningConfig,
    train: pd.DataFrame,
    schema: SchemaConfig,
    seed: int,
    encoding: FeaturesConfig | None,
    folds_dir: Path | None = None,
) -> Folds:
    """The study's CV folds (on :func:`tuning_rows`); with ``folds_dir``, kept there in a
    file named by a hash of everything they depend on (the rows, the schema, the
    encoding, the seed, ``cv_folds`` and ``subsample_rows``): loaded when it exists."""
    path = None
    if folds_dir is not None:
        import hashlib
        import json

        key = hashlib.sha256(pd.util.hash_pandas_object(train, index=False).to_numpy().tobytes())
        settings = [seed, cfg.cv_folds, cfg.subsample_rows, schema.model_dump(mode="json")]
        settings.append(encoding.model_dump(mode="json") if encoding else None)
        key.update(json.dumps(settings, sort_keys=True).encode())
        path = folds_dir / f"folds-{key.hexdigest()[:16]}.npz"
        if path.is_file():
            try:
                return Folds.load(path)
            except (OSError, ValueError, KeyError) as exc:  # rebuilt below
                log.warning("could not read the CV folds kept in %s (%s): rebuilding", path, exc)
    rows = tuning_rows(train, schema, cfg.subsample_rows, seed)
    if len(rows) < len(train):
        log.info("tuning on a stratified sample of %d of %d training rows", len(rows), len(train))
    folds = Folds.build(rows, schema, cfg.cv_folds, seed, encoding)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        folds.save(path)
    return folds


def require_shared(cfg: TuningConfig) -> None:
    """Refuse a storage other machines cannot reach (a journal file, a SQLite file)."""
    if not is_shared(cfg.storage):
        where = "unset (a journal file in the run folder)"
        if cfg.storage is not None:
            where = f"{masked(cfg.storage)} (a file on one machine)"
        raise ConfigError(
            f"tuning.storage is {where}: workers on other machines need a shared database "
            "URL such as postgresql+psycopg://user@host:5432/db"
        )


def study_name(cfg: Config, run_dir: Path) -> str:
    """The tune stage's study: ``tuning.study_name``, else ``<experiment>-<run folder>``."""
    return cfg.tuning.study_name or f"{cfg.experiment}-{run_dir.name}"


def train_path(run_dir: Path) -> Path:
    """The preprocess stage's training rows in a run folder (what workers tune on)."""
    return run_dir / products.SPLITS["train"].path


def join_study(cfg: Config, train: pd.DataFrame, study_name: str, worker: int) -> int:
    """Run trials of the shared study ``study_name`` (in ``cfg.tuning.storage``, created if
    missing) until it has ``tuning.n_trials`` finished trials, or ``tuning.timeout``
    seconds have passed; returns how many trials this call finished.

    The entry point of a worker on another machine (``mlfolio tune-worker``, a KFP
    ``ParallelFor`` task). ``train`` is the preprocess stage's ``data/train.parquet``:
    every worker builds the same folds from it (seed ``cfg.seed``), so their trials are
    comparable. Give each worker its own ``worker`` number: its sampler seed is
    ``cfg.seed + 1 + worker`` (the tune stage's own workers use 0 .. n_workers - 1).
    """
    with storage_errors(cfg.tuning):
        return _join_study(cfg, train, study_name, worker)


def _join_study(cfg: Config, train: pd.DataFrame, study_name: str, worker: int) -> int:
    tuning = cfg.tuning
    require_shared(tuning)
    if worker < 0:
        raise ConfigError(f"worker number must be >= 0 (got {worker})")
    deadline = None if tuning.timeout is None else time.time() + tuning.timeout
    storage = rdb_storage(tuning)
    study = open_study(tuning, storage, study_name, cfg.seed)
    if remaining_trials(study, tuning.n_trials) == 0:
        log.info("study %s already has %d finished trials", study_name, tuning.n_trials)
        return 0
    rows = tuning_rows(train, cfg.schema, tuning.subsample_rows, cfg.seed)  # as run_study's
    folds = Folds.build(rows, cfg.schema, tuning.cv_folds, cfg.seed, cfg.features)
    return _worker(tuning, storage, study_name, cfg.seed, worker, folds, None, deadline)
