"""Hyperparameter search with Optuna: seeded TPE, pruning over CV folds, resumable storage.

The study lives in storage on disk (a journal file in the run folder by default, or any
RDB URL), so a killed tuning resumes with its finished trials, and several worker
processes can share one study.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
from dataclasses import dataclass
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
    per-trial overhead)."""

    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]

    @classmethod
    def build(cls, train: pd.DataFrame, schema: SchemaConfig, n_folds: int, seed: int
              ) -> Folds:
        X, y = xy(train, schema)
        cv = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        parts = []
        for fit_idx, val_idx in cv.split(X, y):
            prep = build_preprocessor(schema).fit(X.iloc[fit_idx], y.iloc[fit_idx])
            parts.append((prep.transform(X.iloc[fit_idx]), y.iloc[fit_idx].to_numpy(),
                          prep.transform(X.iloc[val_idx]), y.iloc[val_idx].to_numpy()))
        return cls(parts)


def make_objective(folds: Folds, kind: str, seed: int, prune: bool):
    """Mean validation ROC AUC over folds, reported after each fold so a pruner can stop
    a hopeless trial early."""

    def objective(trial: optuna.Trial) -> float:
        params = suggest_params(trial, kind)
        aucs = []
        for step, (X_fit, y_fit, X_val, y_val) in enumerate(folds.parts):
            model = make_estimator(kind, params, seed).fit(X_fit, y_fit)
            aucs.append(roc_auc_score(y_val, model.predict_proba(X_val)[:, 1]))
            trial.report(float(np.mean(aucs)), step)
            if prune and trial.should_prune():
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
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=8, multivariate=True)


def _pruner(cfg: TuningConfig) -> optuna.pruners.BasePruner:
    if cfg.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0)
    return optuna.pruners.NopPruner()


def open_study(cfg: TuningConfig, storage: Any, name: str, seed: int) -> optuna.Study:
    """Create the study, or load it with its finished trials when it already exists."""
    study = optuna.create_study(
        study_name=name, storage=storage, direction="maximize", load_if_exists=True,
        sampler=_sampler(seed), pruner=_pruner(cfg),
    )
    # Trials left RUNNING by a killed process will never finish: mark them failed.
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
    return study


def remaining_trials(study: optuna.Study, n_trials: int) -> int:
    return max(0, n_trials - len(study.get_trials(deepcopy=False, states=FINISHED)))


def _worker(cfg: TuningConfig, storage: Any, name: str, seed: int, folds: Folds, kind: str,
            n_trials: int) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=name, storage=storage, sampler=_sampler(seed),
                              pruner=_pruner(cfg))
    study.optimize(
        make_objective(folds, kind, seed, cfg.pruner != "none"),
        timeout=cfg.timeout,
        callbacks=[optuna.study.MaxTrialsCallback(n_trials, states=FINISHED)],
    )


def run_study(cfg: TuningConfig, train: pd.DataFrame, schema: SchemaConfig, seed: int,
              run_dir: Path, study_name: str) -> optuna.Study:
    """Run (or resume) the study until ``n_trials`` trials have finished or time is up.

    With ``n_workers > 1`` the workers are separate processes on the same storage, each
    with its own sampler seed (identical seeds would repeat each other's trials).
    """
    storage = storage_for(cfg, run_dir)
    study = open_study(cfg, storage, study_name, seed)
    todo = remaining_trials(study, cfg.n_trials)
    if todo == 0:
        log.info("study %s already has %d finished trials", study_name, cfg.n_trials)
        return study
    folds = Folds.build(train, schema, cfg.cv_folds, seed)
    if cfg.n_workers == 1:
        study.optimize(
            make_objective(folds, cfg.model, seed, cfg.pruner != "none"),
            n_trials=todo, timeout=cfg.timeout,
        )
        return study
    ctx = mp.get_context("fork")
    workers = [
        ctx.Process(target=_worker, args=(cfg, storage, study_name, seed + 1 + i, folds,
                                          cfg.model, cfg.n_trials))
        for i in range(cfg.n_workers)
    ]
    for proc in workers:
        proc.start()
    for proc in workers:
        proc.join()
    return optuna.load_study(study_name=study_name, storage=storage)


def trials_table(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: state, value, duration and parameters."""
    df = study.trials_dataframe(attrs=("number", "state", "value", "duration", "params"))
    if "duration" in df:
        df["duration"] = df["duration"].dt.total_seconds().round(2)
    return df.rename(columns=lambda c: c.removeprefix("params_"))


def plot_study(study: optuna.Study) -> Any:
    """Optimization history and parameter importances side by side (a matplotlib Figure)."""
    import matplotlib.pyplot as plt

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    fig, (hist_ax, imp_ax) = plt.subplots(1, 2, figsize=(14, 4.5))
    values = [t.value for t in complete]
    numbers = [t.number for t in complete]
    hist_ax.scatter(numbers, values, s=14, label="trial (complete)")
    hist_ax.plot(numbers, np.maximum.accumulate(values) if values else [], color="tab:red",
                 label="best so far")
    hist_ax.set_xlabel("trial")
    hist_ax.set_ylabel("CV ROC AUC")
    hist_ax.set_title(f"Optimization history ({len(study.trials)} trials, "
                      f"{len(study.trials) - len(complete)} pruned or failed)")
    hist_ax.legend()
    if len(complete) >= 2:
        importances = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
        names = list(importances)[::-1]
        imp_ax.barh(names, [importances[n] for n in names])
        imp_ax.set_title("Parameter importance (fANOVA)")
    else:
        imp_ax.text(0.5, 0.5, "needs two complete trials", ha="center")
        imp_ax.axis("off")
    fig.tight_layout()
    return fig
