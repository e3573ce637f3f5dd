"""Why a model decides: exact attributions per raw column, and permutation importance.

Attributions are SHAP values where the model kind gives them exactly: XGBoost's own
TreeSHAP (``pred_contribs``), and for a linear model ``coef * (x - mean)`` on the
transformed features (the exact SHAP value of a linear margin under independent
features, with the training rows' mean as background). Both are in the margin (log-odds)
space and are summed back over the one-hot/scaled columns of each raw column. A kind
without exact attribution gets permutation importance only (model-agnostic, ROC AUC on
raw columns), which every model gets as a cross-check. Pure functions, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin

from mlfolio.config import SchemaConfig
from mlfolio.errors import ExplainError

LINEAR = "linear"  # coef * (x - mean) on the transformed features
TREE = "tree_shap"  # XGBoost pred_contribs


@dataclass(frozen=True)
class Attribution:
    """Per-row attributions of the margin to each raw column (``values``: rows x raw
    columns), the margin for a row with no information (``base``) and the method."""

    values: pd.DataFrame
    base: np.ndarray
    method: str

    def margin(self) -> np.ndarray:
        """What the attributions add up to: the model's raw margin per row."""
        return self.values.to_numpy().sum(axis=1) + self.base


def split_pipeline(model: Any) -> tuple[Any, Any] | None:
    """(feature transformer, estimator) of a fitted ``features → model`` pipeline, or None
    for anything else (it then has no exact attribution here)."""
    steps = getattr(model, "steps", None)
    if not steps or len(steps) < 2:
        return None
    return model[:-1], steps[-1][1]


def attribution_method(model: Any) -> str | None:
    """How ``model`` is attributed exactly (TREE, LINEAR), or None: permutation only."""
    parts = split_pipeline(model)
    if parts is None:
        return None
    estimator = parts[1]
    if type(estimator).__name__ == "XGBClassifier":
        return TREE
    coef = getattr(estimator, "coef_", None)
    if coef is not None and np.ndim(coef) == 2 and coef.shape[0] == 1:
        return LINEAR  # a binary linear model: LogisticRegression, SGD/LinearSVC, ...
    return None


def _column_transformer(features: Any) -> Any:
    """The ColumnTransformer inside the features step (mlfolio.features.build_preprocessor)."""
    from sklearn.compose import ColumnTransformer

    stack = [features]
    while stack:
        step = stack.pop()
        if isinstance(step, ColumnTransformer):
            return step
        stack.extend(s for _, s in getattr(step, "steps", None) or [])
    return None


def raw_columns_of(features: Any, width: int) -> list[str]:
    """The raw column each transformed column comes from (one name per output column).

    A transformer with as many outputs as inputs maps one to one (imputer + scaler); a
    one-hot encoder maps ``len(categories_[i])`` outputs to input ``i`` (its
    ``handle_unknown='ignore'`` adds none; infrequent levels share one).
    """
    columns = _column_transformer(features)
    if columns is None:
        raise ExplainError("the features step has no ColumnTransformer to map columns back")
    owner: list[str | None] = [None] * width
    for name, transformer, cols in columns.transformers_:
        if name == "remainder" or transformer == "drop":
            continue
        part = columns.output_indices_[name]
        n_out = part.stop - part.start
        cols = list(cols)
        encoder = transformer[-1] if hasattr(transformer, "steps") else transformer
        sizes = [len(c) for c in getattr(encoder, "categories_", [])]
        # levels lumped as infrequent (features.max_categories) share one output
        lumped = getattr(encoder, "infrequent_categories_", None) or [None] * len(sizes)
        sizes = [s if i is None else s - len(i) + 1 for s, i in zip(sizes, lumped, strict=True)]
        if getattr(encoder, "drop_idx_", None) is not None:
            sizes = [s - (d is not None) for s, d in zip(sizes, encoder.drop_idx_, strict=True)]
        if n_out == len(cols):
            names = cols
        elif sizes and sum(sizes) == n_out and len(sizes) == len(cols):
            names = [c for c, s in zip(cols, sizes, strict=True) for _ in range(s)]
        else:
            raise ExplainError(
                f"transformer {name!r} turns {len(cols)} column(s) into {n_out}: "
                "cannot map its outputs back to raw columns"
            )
        owner[part.start : part.stop] = names
    if any(o is None for o in owner):
        raise ExplainError("some transformed columns come from no declared raw column")
    return [str(o) for o in owner]


def to_raw_columns(values: np.ndarray, owners: list[str], order: list[str]) -> pd.DataFrame:
    """Sum transformed-column attributions (rows x transformed) into raw columns."""
    frame = pd.DataFrame(values, columns=range(values.shape[1]))
    summed = frame.T.groupby(np.asarray(owners)).sum().T
    return summed.reindex(columns=order, fill_value=0.0)


def attributions(
    model: Any,
    rows: pd.DataFrame,
    schema: SchemaConfig,
    background: pd.DataFrame | None = None,
) -> Attribution | None:
    """Exact margin attributions of ``model`` for raw ``rows``, by raw column; None when
    the model's kind has none (see :func:`attribution_method`).

    ``background``: raw rows whose transformed mean is the linear model's reference point
    (the training rows); default ``rows`` themselves.
    """
    method = attribution_method(model)
    if method is None:
        return None
    features, estimator = split_pipeline(model)
    X = np.asarray(features.transform(rows[schema.features]), dtype=float)
    owners = raw_columns_of(features, X.shape[1])
    if method == TREE:
        from xgboost import DMatrix

        contribs = estimator.get_booster().predict(DMatrix(X), pred_contribs=True)
        values, base = contribs[:, :-1], contribs[:, -1]
    else:
        ref = rows if background is None else background
        mean = np.asarray(features.transform(ref[schema.features]), dtype=float).mean(axis=0)
        coef = np.asarray(estimator.coef_, dtype=float)[0]
        values = (X - mean) * coef
        intercept = float(np.ravel(getattr(estimator, "intercept_", [0.0]))[0])
        base = np.full(len(X), intercept + float(mean @ coef))
    frame = to_raw_columns(values, owners, list(schema.features))
    frame.index = rows.index
    return Attribution(frame, np.asarray(base, dtype=float), method)


def margin(model: Any, rows: pd.DataFrame, schema: SchemaConfig) -> np.ndarray:
    """The model's raw margin (log-odds) per row, what attributions add up to."""
    features, estimator = split_pipeline(model)
    X = features.transform(rows[schema.features])
    if type(estimator).__name__ == "XGBClassifier":
        return np.asarray(estimator.predict(X, output_margin=True), dtype=float)
    return np.asarray(estimator.decision_function(X), dtype=float)


def mean_abs(attribution: Attribution) -> pd.Series:
    """Global importance: mean |attribution| per raw column, largest first."""
    return attribution.values.abs().mean().sort_values(ascending=False)


class _BlockGather(ClassifierMixin, BaseEstimator):
    """The estimator on row pointers: column ``j`` of the input says which row's
    transformed block ``j`` to take. Shuffling raw column ``j`` is shuffling the rows of
    its transformed block (every transformer of the features step works column by
    column), so the features step runs once instead of once per column and repeat."""

    def __init__(self, estimator: Any, matrix: np.ndarray, blocks: list[np.ndarray]):
        self.estimator = estimator
        self.matrix = matrix
        self.blocks = blocks

    def fit(self, X: Any, y: Any = None) -> _BlockGather:
        return self

    @property
    def classes_(self) -> np.ndarray:
        return self.estimator.classes_

    def predict_proba(self, pointers: Any) -> np.ndarray:
        pointers = np.asarray(pointers, dtype=np.intp)
        out = np.empty_like(self.matrix)
        for j, block in enumerate(self.blocks):
            out[:, block] = self.matrix[np.ix_(pointers[:, j], block)]
        return self.estimator.predict_proba(out)


def _roc_auc(estimator: Any, X: Any, y: np.ndarray) -> float:
    """ROC AUC of the positive class, as sklearn's "roc_auc" scorer computes it, without
    its input checks on every call (they cost more than the score: ~2 s per model)."""
    from mlfolio.evaluate import weighted_roc_auc

    score = np.asarray(estimator.predict_proba(X))[:, 1]
    return float(weighted_roc_auc(np.asarray(y, float), score, np.ones((1, len(y))))[0])


def permutation(
    model: Any,
    rows: pd.DataFrame,
    y: np.ndarray,
    schema: SchemaConfig,
    repeats: int = 5,
    seed: int = 0,
) -> pd.DataFrame:
    """Drop in ROC AUC when each raw column is shuffled (mean and std over ``repeats``,
    seeded), largest first: a model-agnostic check of the attributions."""
    from sklearn.inspection import permutation_importance

    cols = list(schema.features)
    estimator, X = model, rows[cols]
    parts = split_pipeline(model)
    if parts is not None:
        try:
            matrix = np.asarray(parts[0].transform(X), dtype=float)
            owners = np.asarray(raw_columns_of(parts[0], matrix.shape[1]))
            blocks = [np.flatnonzero(owners == c) for c in cols]
            estimator = _BlockGather(parts[1], matrix, blocks)
            X = np.repeat(np.arange(len(rows))[:, None], len(cols), axis=1)
        except ExplainError:
            pass  # not column-separable as far as we can tell: shuffle the raw rows
    result = permutation_importance(
        estimator,
        X,
        np.asarray(y),
        scoring=_roc_auc,
        n_repeats=repeats,
        random_state=seed,
        n_jobs=1,
    )
    table = pd.DataFrame(
        {"mean": result.importances_mean, "std": result.importances_std}, index=cols
    )
    return table.sort_values("mean", ascending=False)


def sample_rows(df: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """At most ``n`` rows of ``df``, seeded (all of them, in order, when it has fewer)."""
    return df if len(df) <= n else df.sample(n=n, random_state=seed).sort_index()


def explain_model(
    model: Any,
    rows: pd.DataFrame,
    y: np.ndarray,
    schema: SchemaConfig,
    background: pd.DataFrame,
    repeats: int,
    seed: int,
) -> tuple[dict[str, Any], Attribution | None]:
    """Everything the evaluate report says about one model: attribution method and mean
    |attribution| per raw column (when exact), permutation importance, and a note."""
    estimator = parts[1] if (parts := split_pipeline(model)) else model
    try:
        attribution = attributions(model, rows, schema, background)
        note = (
            None
            if attribution
            else f"{type(estimator).__name__} has no exact attribution here: "
            "permutation importance only"
        )
    except ExplainError as exc:
        attribution, note = None, f"no exact attribution ({exc}): permutation importance only"
    perm = permutation(model, rows, y, schema, repeats, seed)
    summary: dict[str, Any] = {
        "method": attribution.method if attribution else None,
        "rows": int(len(rows)),
        "mean_abs": (
            {k: float(v) for k, v in mean_abs(attribution).items()} if attribution else None
        ),
        "permutation": {
            col: {"mean": float(r["mean"]), "std": float(r["std"])} for col, r in perm.iterrows()
        },
        "permutation_repeats": repeats,
        "note": note,
    }
    return summary, attribution
