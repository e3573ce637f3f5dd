"""Hyperparameter search with Optuna: seeded TPE, pruning over CV folds, resumable storage.

The study lives in storage on disk (a journal file in the run folder by default, or any
RDB URL), so a killed tuning resumes with its finished trials, and several worker
processes can share one study.

Where the time goes, and what saves it (``benchmarks/tune_bench.py`` measures it against
scikit-learn's RandomizedSearchCV):

* the feature transformer has no hyperparameters, so :class:`Folds` fits it once per fold
  instead of once per trial and fold;
* with ``pruner: median`` a trial whose running mean AUC after a fold is below the median
  of earlier trials at that fold stops there (never after its last fold: a fully
  evaluated trial keeps its value);
* ``n_workers > 1`` runs that many workers on the same storage: the calling process and
  ``n_workers - 1`` child processes. The children start from a fork server, not by
  forking the caller: a process that has already run xgboost or any other OpenMP code
  (the notebook kernel, a benchmark) holds an OpenMP thread pool, and a forked copy of
  it deadlocks in its first parallel region. Each worker has its own sampler seed and a
  one-thread OpenMP limit; a shared counter hands out trial slots so the workers
  together run exactly the trials still missing.

With one worker, a fixed seed and no timeout the study is reproducible (same trials,
same best parameters); with several workers the order in which trials finish, and so
what TPE sees, depends on timing.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold

from mlfolio.config import SchemaConfig, TuningConfig
from mlfolio.features import build_preprocessor, xy
from mlfolio.train import make_estimator

log = logging.getLogger(__name__)
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def suggest_params(trial: optuna.Trial, kind: str) -> dict[str, Any]:
    """The search space of each model kind."""
    if kind == "xgboost":
        return {
            "n_estimators": trial.suggest_int("n_estimators", 50, 500, step=25),
            "learning_rate": trial.suggest_float("learning_rate", 0.01, 0.3, log=True),
            "max_depth": trial.suggest_int("max_depth", 2, 7),
            "min_child_weight": trial.suggest_float("min_child_weight", 1.0, 20.0, log=True),
            "subsample": trial.suggest_float("subsample", 0.5, 1.0),
            "colsample_bytree": trial.suggest_float("colsample_bytree", 0.4, 1.0),
            "reg_lambda": trial.suggest_float("reg_lambda", 1e-3, 10.0, log=True),
        }
    if kind == "logreg":
        return {"C": trial.suggest_float("C", 1e-3, 100.0, log=True), "max_iter": 2000}
    raise ValueError(f"no search space for model kind {kind!r}")


@dataclass(frozen=True)
class Folds:
    """CV folds with the feature transform already applied (it has no hyperparameters,
    so fitting it once per fold instead of once per trial and fold saves most of the
    per-trial overhead).

    For xgboost the training matrix of each fold (xgboost's quantile sketch of it) is
    built once per process and reused by every trial, instead of once per fit.
    """

    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]
    _matrices: dict[tuple[int, Any, int], Any] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @classmethod
    def build(cls, train: pd.DataFrame, schema: SchemaConfig, n_folds: int, seed: int) -> Folds:
        X, y = xy(train, schema)
        cv = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        parts = []
        for fit_idx, val_idx in cv.split(X, y):
            prep = build_preprocessor(schema).fit(X.iloc[fit_idx], y.iloc[fit_idx])
            parts.append(
                (
                    prep.transform(X.iloc[fit_idx]),
                    y.iloc[fit_idx].to_numpy(),
                    prep.transform(X.iloc[val_idx]),
                    y.iloc[val_idx].to_numpy(),
                )
            )
        return cls(parts)

    # xgboost matrices hold native handles: they are not sent to worker processes.
    def __getstate__(self) -> dict[str, Any]:
        return {"parts": self.parts}

    def __setstate__(self, state: dict[str, Any]) -> None:
        object.__setattr__(self, "parts", state["parts"])
        object.__setattr__(self, "_matrices", {})

    def xgboost_matrix(self, step: int, model: Any) -> Any:
        """Fold ``step``'s training rows as the QuantileDMatrix ``model.fit`` would build."""
        import xgboost as xgb

        key = (step, model.max_bin, model.n_jobs)
        if key not in self._matrices:
            X_fit, y_fit, _, _ = self.parts[step]
            self._matrices[key] = xgb.QuantileDMatrix(
                X_fit,
                label=y_fit,
                missing=model.missing,
                max_bin=model.max_bin,
                nthread=model.n_jobs,
            )
        return self._matrices[key]


def _reuses_matrix(model: Any) -> bool:
    """True for the xgboost setups whose ``fit`` trains on a QuantileDMatrix (CPU hist
    trees) and whose ``predict_proba`` predicts in place with every tree."""
    p = model.get_params()
    return (
        p.get("tree_method") in (None, "hist", "auto")
        and p.get("device") in (None, "cpu")
        and p.get("booster") in (None, "gbtree")
        and not p.get("enable_categorical")
        and p.get("callbacks") is None
        and p.get("early_stopping_rounds") is None
        and not callable(p.get("objective"))
    )


def fold_scores(
    folds: Folds, step: int, kind: str, params: dict[str, Any], seed: int
) -> np.ndarray:
    """Positive-class probabilities on fold ``step``'s validation rows of the model
    ``make_estimator(kind, params, seed)`` fitted on its training rows.

    For xgboost this is what ``XGBClassifier.fit`` + ``predict_proba`` compute (same
    parameters, rounds and training matrix, so the same trees), but trained with
    ``xgboost.train`` on the fold's cached matrix: building that matrix costs as much as
    fitting the small models the search ends up in.
    """
    X_fit, y_fit, X_val, _ = folds.parts[step]
    model = make_estimator(kind, params, seed)
    if kind == "xgboost" and _reuses_matrix(model):
        import xgboost as xgb

        booster = xgb.train(
            {**model.get_xgb_params(), "eval_metric": model.eval_metric},
            folds.xgboost_matrix(step, model),
            num_boost_round=model.get_num_boosting_rounds(),
        )
        return np.asarray(booster.inplace_predict(X_val, missing=model.missing))
    return model.fit(X_fit, y_fit).predict_proba(X_val)[:, 1]


def make_objective(folds: Folds, kind: str, seed: int, prune: bool):
    """Mean validation ROC AUC over folds, reported after each fold so a pruner can stop
    a hopeless trial early."""

    def objective(trial: optuna.Trial) -> float:
        params = suggest_params(trial, kind)
        aucs = []
        last = len(folds.parts) - 1
        for step, (_, _, _, y_val) in enumerate(folds.parts):
            aucs.append(roc_auc_score(y_val, fold_scores(folds, step, kind, params, seed)))
            trial.report(float(np.mean(aucs)), step)
            # After the last fold the work is done: keep the value instead of pruning it.
            if prune and step < last and trial.should_prune():
                raise optuna.TrialPruned()
        return float(np.mean(aucs))

    return objective


def storage_for(cfg: TuningConfig, run_dir: Path) -> str | optuna.storages.BaseStorage:
    """The study's storage: the configured RDB URL, else a journal file in the run folder."""
    if cfg.storage:
        return cfg.storage
    from optuna.storages.journal import JournalFileBackend

    path = run_dir / "tune" / "study.journal"
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def _sampler(seed: int) -> optuna.samplers.BaseSampler:
    # constant_liar: parallel workers treat each other's running trials as bad ones
    # instead of sampling next to them (no effect with one worker: nothing is running).
    return optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=8, multivariate=True, constant_liar=True
    )


def _resume_sampler(study: optuna.Study, seed: int) -> None:
    """A study reopened with trials in it gets a sampler seeded past them: the same seed
    would draw the same first points again (a resumed run repeating its own trials)."""
    if study.trials:
        study.sampler = _sampler(seed + 1000 * len(study.trials))


def _pruner(cfg: TuningConfig) -> optuna.pruners.BasePruner:
    if cfg.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0)
    return optuna.pruners.NopPruner()


def open_study(cfg: TuningConfig, storage: Any, name: str, seed: int) -> optuna.Study:
    """Create the study, or load it with its finished trials when it already exists."""
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        direction="maximize",
        load_if_exists=True,
        sampler=_sampler(seed),
        pruner=_pruner(cfg),
    )
    _resume_sampler(study, seed)
    # In the run folder's own journal, trials left RUNNING belong to a killed process and
    # will never finish: mark them failed. A shared storage (cfg.storage) may hold trials
    # that other machines are running right now, so those are left alone.
    if cfg.storage is None:
        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
    return study


def remaining_trials(study: optuna.Study, n_trials: int) -> int:
    return max(0, n_trials - len(study.get_trials(deepcopy=False, states=FINISHED)))


def _take_slot(slots: Any) -> bool:
    """Claim one of the trials still to run (a shared counter); False when none is left."""
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
    folds: Folds,
    kind: str,
    n_trials: int,
    slots: Any,
    deadline: float | None = None,
) -> None:
    """Run trials on the shared study while slots are left (in this process or a child);
    no new trial starts after ``deadline`` (a ``time.time()``)."""
    timeout = None if deadline is None else deadline - time.time()
    if timeout is not None and timeout <= 0:
        return
    study = optuna.load_study(
        study_name=name, storage=storage, sampler=_sampler(seed), pruner=_pruner(cfg)
    )
    _resume_sampler(study, seed)
    if remaining_trials(study, n_trials) == 0 or not _take_slot(slots):
        return

    def next_slot(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        # Stop when this run's trials are all handed out, or when other processes on
        # the same storage (another machine) have finished the study.
        if remaining_trials(study, n_trials) == 0 or not _take_slot(slots):
            study.stop()

    objective = make_objective(folds, kind, seed, cfg.pruner != "none")

    def tagged(trial: optuna.Trial) -> float:
        trial.set_user_attr("worker_seed", seed)  # which worker ran it
        return objective(trial)

    study.optimize(tagged, timeout=timeout, callbacks=[next_slot])


def _child_worker(*args: Any) -> None:
    from threadpoolctl import threadpool_limits

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # xgboost runs with n_jobs=1, but some of its data handling uses every OpenMP
    # thread; with one worker per core those extra threads only compete.
    threadpool_limits(1, user_api="openmp")
    _worker(*args)


def _process_context() -> Any:
    """Fork server (or spawn), never a plain fork of the caller: see the module notes."""
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
    cfg: TuningConfig, storage: Any, name: str, seed: int, folds: Folds, todo: int
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
        (cfg, storage, name, seed + 1 + i, folds, cfg.model, cfg.n_trials, slots, deadline)
        for i in range(n)
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
) -> optuna.Study:
    """Run (or resume) the study until ``n_trials`` trials have finished or time is up.

    With ``n_workers > 1`` this process and ``n_workers - 1`` child processes work on the
    same storage, each with its own sampler seed (identical seeds would repeat each
    other's trials); together they run exactly the missing trials (unless the timeout
    stops them first). A script that does this needs the usual
    ``if __name__ == "__main__":`` guard (the children import the main module).
    """
    storage = storage_for(cfg, run_dir)
    study = open_study(cfg, storage, study_name, seed)
    todo = remaining_trials(study, cfg.n_trials)
    if todo == 0:
        log.info("study %s already has %d finished trials", study_name, cfg.n_trials)
        return study
    if cfg.n_workers > 1 and todo > 1:
        _start_process_server()  # it boots while the folds are built
    folds = Folds.build(train, schema, cfg.cv_folds, seed)
    if cfg.n_workers == 1:
        study.optimize(
            make_objective(folds, cfg.model, seed, cfg.pruner != "none"),
            n_trials=todo,
            timeout=cfg.timeout,
        )
        return study
    _run_workers(cfg, storage, study_name, seed, folds, todo)
    return optuna.load_study(
        study_name=study_name, storage=storage, sampler=_sampler(seed), pruner=_pruner(cfg)
    )
