"""The search: each model kind's space, the CV folds (feature transform fitted once per
fold) and the objective (mean validation ROC AUC, reported per fold for the pruner)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
import pandas as pd
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold

from mlfolio.config import SchemaConfig
from mlfolio.features import build_preprocessor, xy
from mlfolio.train import make_estimator


def tuning_rows(
    train: pd.DataFrame, schema: SchemaConfig, rows: int | None, seed: int
) -> pd.DataFrame:
    """The rows the study tunes on: ``train`` itself, or, when it has more than ``rows``
    (``tuning.subsample_rows``), a seeded sample of ``rows`` of them stratified on the
    target (each class keeps its share)."""
    if rows is None or len(train) <= rows:
        return train
    from sklearn.model_selection import train_test_split

    picked, _ = train_test_split(
        train, train_size=rows, stratify=train[schema.target], random_state=seed
    )
    return picked.reset_index(drop=True)


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
