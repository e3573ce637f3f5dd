"""Estimators, fitting and scoring of model pipelines (no I/O, no tracking)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from mlfolio.config import FeaturesConfig, SchemaConfig
from mlfolio.data import target_vector
from mlfolio.features import build_model_pipeline

MODEL_KINDS = ("logreg", "xgboost")


def make_estimator(kind: str, params: dict[str, Any], seed: int) -> BaseEstimator:
    """A fresh, seeded estimator of ``kind`` with ``params`` (invalid names raise)."""
    if kind == "logreg":
        return LogisticRegression(random_state=seed, **params)
    if kind == "xgboost":
        from xgboost import XGBClassifier

        # n_jobs=1: with 2 cores OpenMP's busy-wait stalls xgboost for seconds at a time.
        base = {"n_jobs": 1, "tree_method": "hist", "eval_metric": "logloss"}
        return XGBClassifier(random_state=seed, **{**base, **params})
    raise ValueError(f"unknown model kind {kind!r}; expected one of {MODEL_KINDS}")


def fit(
    schema: SchemaConfig,
    kind: str,
    params: dict[str, Any],
    train: pd.DataFrame,
    seed: int,
    encoding: FeaturesConfig | None = None,
) -> Pipeline:
    """Fit the servable pipeline (features, encoded as ``encoding`` says, + estimator) on
    raw training rows. The rows go in whole: the pipeline's first step reads the schema's
    feature columns by name (a copy of them first was 0.9 GB of pointers at 6M rows)."""
    model = build_model_pipeline(schema, make_estimator(kind, params, seed), encoding)
    return model.fit(train, target_vector(train, schema))


def predict_scores(model: Any, df: pd.DataFrame, schema: SchemaConfig) -> np.ndarray:
    """Positive-class probability for each raw row."""
    return np.asarray(model.predict_proba(df[schema.features])[:, 1])
