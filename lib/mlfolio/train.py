"""Estimators, fitting and scoring of model pipelines (no I/O, no tracking)."""

from __future__ import annotations

import copy
import os
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from mlfolio.config import FeaturesConfig, SchemaConfig
from mlfolio.data import target_vector
from mlfolio.features import build_preprocessor

MODEL_KINDS = ("logreg", "xgboost")


def make_estimator(kind: str, params: dict[str, Any], seed: int) -> BaseEstimator:
    """A fresh, seeded estimator of ``kind`` with ``params`` (invalid names raise)."""
    if kind == "logreg":
        return LogisticRegression(random_state=seed, **params)
    if kind == "xgboost":
        from xgboost import XGBClassifier

        # n_jobs=1: what the model predicts with once fitted (a served batch of a few rows
        # is slower on more threads); :func:`fit` uses more where the rows pay for them.
        base = {"n_jobs": 1, "tree_method": "hist", "eval_metric": "logloss"}
        return XGBClassifier(random_state=seed, **{**base, **params})
    raise ValueError(f"unknown model kind {kind!r}; expected one of {MODEL_KINDS}")


# From this many training rows an XGBoost fit uses every core the process may use: on 2
# cores 1.7x faster at 1M rows when idle, as fast beside a busy process (with the stage
# kernels' sleeping OpenMP threads); at 16k rows, a tuning trial's, 0.6x (threads wake
# and wait per tree node). benchmarks/results/xgboost-threads.md.
THREADED_FIT_ROWS = 500_000


def fit_threads(kind: str, params: dict[str, Any], rows: int, cores: int | None = None) -> int:
    """The threads a fit of ``kind`` on ``rows`` rows uses: the model's own ``n_jobs``
    when ``params`` set it; for XGBoost from :data:`THREADED_FIT_ROWS` rows, ``cores``
    (default: the CPUs this process may run on); else 1."""
    if kind != "xgboost":
        return 1
    if "n_jobs" in params:
        return int(params["n_jobs"])
    if rows < THREADED_FIT_ROWS:
        return 1
    return cores or available_cores()


def available_cores() -> int:
    """The CPUs this process may run on (its affinity where the OS has one: a container's
    or ``taskset``'s limit, not the machine's count)."""
    if hasattr(os, "sched_getaffinity"):  # Linux; not macOS or Windows
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _fit_estimator(kind: str, params: dict[str, Any], seed: int, X: Any, y: Any) -> Any:
    """``make_estimator(kind, params, seed)`` fitted on the features ``X``: an XGBoost
    model on :func:`fit_threads` threads, returned set to predict as it was made (threads
    change the time, not the trees: tested)."""
    estimator = make_estimator(kind, params, seed)
    predict_threads = estimator.get_params().get("n_jobs")
    threads = fit_threads(kind, params, X.shape[0])
    threaded = kind == "xgboost" and threads != predict_threads
    if threaded:
        estimator.set_params(n_jobs=threads)
    estimator.fit(X, y)
    if threaded:
        estimator.set_params(n_jobs=predict_threads)  # the fitted booster's nthread too
    return estimator


def fit_models(
    schema: SchemaConfig,
    models: list[tuple[str, dict[str, Any]]],
    train: pd.DataFrame,
    seed: int,
    encoding: FeaturesConfig | None = None,
) -> list[Pipeline]:
    """The servable pipeline (features, encoded as ``encoding`` says, + estimator) of
    each ``(kind, params)`` in ``models``, fitted on raw training rows: what
    ``Pipeline.fit`` fits for each (tested equal), with the feature step fitted and
    applied once for all of them (each pipeline holds its own copy). The rows go in
    whole: the first step reads the schema's feature columns by name (a copy of them
    first was 0.9 GB of pointers at 6M rows)."""
    y = target_vector(train, schema)
    features = build_preprocessor(schema, encoding)
    X = features.fit_transform(train, y)
    last = len(models) - 1
    return [
        Pipeline(
            [
                ("features", features if i == last else copy.deepcopy(features)),
                ("model", _fit_estimator(kind, params, seed, X, y)),
            ]
        )
        for i, (kind, params) in enumerate(models)
    ]


def fit(
    schema: SchemaConfig,
    kind: str,
    params: dict[str, Any],
    train: pd.DataFrame,
    seed: int,
    encoding: FeaturesConfig | None = None,
) -> Pipeline:
    """:func:`fit_models` of one model."""
    return fit_models(schema, [(kind, params)], train, seed, encoding)[0]


def predict_scores(model: Any, df: pd.DataFrame, schema: SchemaConfig) -> np.ndarray:
    """Positive-class probability for each raw row."""
    return np.asarray(model.predict_proba(df[schema.features])[:, 1])
