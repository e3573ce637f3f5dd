"""Cleaning, splitting and the feature transformer kept inside every model pipeline.

The transformer lives inside the fitted pipeline, so a served model takes raw rows
(blank ``totalcharges``, 0/1 flags and all) exactly as the source delivers them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from mlfolio import rowkeys
from mlfolio.config import FeaturesConfig, SchemaConfig, SplitConfig
from mlfolio.data import target_vector
from mlfolio.errors import DataValidationError

MISSING_CATEGORY = "__missing__"


class RawColumnCoercer(TransformerMixin, BaseEstimator):
    """Numeric columns to floats (blank or whitespace text → NaN); categorical columns to
    strings (a whole float → its integer's text: ``0.0`` → ``"0"``).

    Sources disagree on types (a 0/1 flag is an int in CSV, a float in pandas once a value
    is missing, a bool in Parquet, text in SQL); coercing here makes the fitted pipeline,
    in training and in serving alike, read any of them the same way.
    """

    def __init__(self, numeric: list[str] | None = None, categorical: list[str] | None = None):
        self.numeric = numeric
        self.categorical = categorical

    def fit(self, X: pd.DataFrame, y: Any = None) -> RawColumnCoercer:
        self.feature_names_in_ = np.asarray([*(self.numeric or []), *(self.categorical or [])])
        # Pipelines pickled before this attribute learnt "0.0" from float flags: keep theirs.
        self.whole_floats_as_ints_ = True
        return self

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        out = {}
        for col in self.numeric or []:
            values = X[col]
            if not pd.api.types.is_numeric_dtype(values):
                values = pd.to_numeric(values.astype("string").str.strip(), errors="coerce")
            out[col] = values.astype("float64")
        whole_as_int = getattr(self, "whole_floats_as_ints_", False)
        for col in self.categorical or []:
            out[col] = _category_text(X[col], whole_as_int)
        return pd.DataFrame(out, index=X.index)

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        return self.feature_names_in_


def _whole_float_as_int(value: Any) -> Any:
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return int(value)
    return value


def _category_text(values: pd.Series, whole_as_int: bool) -> pd.Series:
    """A categorical column as text (missing → MISSING_CATEGORY; with ``whole_as_int``, a
    whole float as its integer's text), without a Python call per row: text columns are
    recognised by one vectorised check, float columns are converted once per distinct
    value; only an object column mixing other kinds goes value by value."""
    present = values.notna()
    if values.dtype == object:
        kind = pd.api.types.infer_dtype(values, skipna=True)
        if kind in ("string", "empty"):
            return values.where(present, MISSING_CATEGORY)
        if whole_as_int:  # not Series.map: it infers float64 back
            values = pd.Series(
                [_whole_float_as_int(v) for v in values], index=values.index, dtype=object
            )
        return values.where(present, MISSING_CATEGORY).astype(str)
    if isinstance(values.dtype, pd.CategoricalDtype) and all(
        type(level) is str for level in values.cat.categories
    ):  # text read as categories (a Parquet dictionary): each level's text once
        levels = np.append(values.cat.categories.to_numpy(dtype=object), MISSING_CATEGORY)
        return pd.Series(levels[values.cat.codes.to_numpy()], index=values.index, dtype=object)
    if whole_as_int and values.dtype.kind == "f":
        codes, distinct = pd.factorize(values)  # NaN: code -1, i.e. missing
        as_python = pd.Series(distinct).astype(object)  # the floats a per-row pass sees
        text = np.array([str(_whole_float_as_int(v)) for v in as_python] + [MISSING_CATEGORY])
        return pd.Series(text[codes].astype(object), index=values.index)
    return values.astype(object).where(present, MISSING_CATEGORY).astype(str)


def _text_levels(values: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(sorted levels, their counts) of an object column of Python strings, found by
    hashing (pandas' factorize) instead of a Python call per row; None when the column
    holds anything else (missing values, numbers): the caller then takes scikit-learn's way."""
    if values.dtype != object:
        return None
    codes, uniques = pd.factorize(values)
    if (codes < 0).any() or not all(type(u) is str for u in uniques):
        return None
    order = sorted(range(len(uniques)), key=list(uniques).__getitem__)  # as sorted(set(...))
    counts = np.bincount(codes, minlength=len(uniques))
    return np.asarray(uniques, dtype=object)[order], counts[order]


# Inputs of fewer rows are encoded by scikit-learn's per-value lookup (cheaper for a few).
HASHED_ROWS = 1000


class TextOneHotEncoder(OneHotEncoder):
    """scikit-learn's OneHotEncoder, with its levels, their counts (for max_categories /
    min_frequency) and the rows' codes found by hashing when every column is text.

    scikit-learn counts an object column's levels and encodes its rows with a Python call
    per value (11 s to fit and 4 s to transform 16 columns of 1M rows on this machine,
    most of a pipeline's fit); hashing gives the same ``categories_`` (sorted), counts and
    codes in a fraction of that. Columns with missing values or non-text levels, any
    other setting (explicit ``categories``) and small inputs (a served request: building
    the hash table would cost more than it saves) take scikit-learn's own code."""

    def _fit(
        self,
        X: Any,
        handle_unknown: str = "error",
        ensure_all_finite: Any = True,
        return_counts: bool = False,
        return_and_ignore_missing_for_infrequent: bool = False,
    ) -> dict[str, Any]:
        from sklearn.utils.validation import validate_data

        def theirs() -> dict[str, Any]:
            return super(TextOneHotEncoder, self)._fit(
                X,
                handle_unknown=handle_unknown,
                ensure_all_finite=ensure_all_finite,
                return_counts=return_counts,
                return_and_ignore_missing_for_infrequent=return_and_ignore_missing_for_infrequent,
            )

        if not isinstance(self.categories, str) or self.categories != "auto":
            return theirs()
        self._check_infrequent_enabled()
        validate_data(self, X=X, reset=True, skip_check_array=True)
        X_list, n_samples, n_features = self._check_X(X, ensure_all_finite=ensure_all_finite)
        found = [_text_levels(column) for column in X_list]
        if any(f is None for f in found):
            return theirs()
        self.n_features_in_ = n_features
        self.categories_ = [levels for levels, _ in found]  # type: ignore[misc]
        counts = [n for _, n in found]  # type: ignore[misc]
        output: dict[str, Any] = {"n_samples": n_samples}
        if return_counts:
            output["category_counts"] = counts
        if return_and_ignore_missing_for_infrequent:
            output["missing_indices"] = {}  # text levels: no missing one
        if self._infrequent_enabled:
            self._fit_infrequent_category_mapping(n_samples, counts, {})
        return output

    def transform(self, X: Any) -> Any:
        """scikit-learn's one-hot matrix; a dense one of many rows is written directly
        (scikit-learn builds a sparse matrix first, then densifies it: its index, data
        and code arrays took more memory than the dense result at 6M rows)."""
        from sklearn.utils.validation import check_is_fitted

        if (
            self.sparse_output
            or self.drop is not None
            or self.handle_unknown == "warn"
            or len(X) < HASHED_ROWS
        ):
            return super().transform(X)
        check_is_fitted(self)
        codes, known = self._transform(
            X,
            handle_unknown=self.handle_unknown,
            ensure_all_finite="allow-nan",
            warn_on_unknown=False,
        )
        starts = np.cumsum([0, *self._n_features_outs])
        out = np.zeros((codes.shape[0], starts[-1]), dtype=self.dtype)
        rows = np.arange(codes.shape[0])
        for i in range(codes.shape[1]):
            keep = known[:, i]
            out[rows[keep], starts[i] + codes[keep, i]] = 1
        return out

    def _transform(
        self,
        X: Any,
        handle_unknown: str = "error",
        ensure_all_finite: Any = True,
        warn_on_unknown: bool = False,
        ignore_category_indices: Any = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        import warnings

        from sklearn.utils.validation import validate_data

        X_list, n_samples, n_features = self._check_X(X, ensure_all_finite=ensure_all_finite)
        text = all(
            column.dtype == object and all(type(c) is str for c in cats)
            for column, cats in zip(X_list, self.categories_, strict=False)
        )
        if not text or n_features != len(self.categories_) or n_samples < HASHED_ROWS:
            return super()._transform(
                X, handle_unknown, ensure_all_finite, warn_on_unknown, ignore_category_indices
            )
        validate_data(self, X=X, reset=False, skip_check_array=True)
        X_int = np.zeros((n_samples, n_features), dtype=int)
        X_mask = np.ones((n_samples, n_features), dtype=bool)
        unknown_in = []
        for i, column in enumerate(X_list):
            codes = pd.Index(self.categories_[i], dtype=object).get_indexer(column)
            known = codes >= 0
            if not known.all():
                if handle_unknown == "error":
                    diff = list(pd.unique(column[~known]))
                    raise ValueError(
                        f"Found unknown categories {diff} in column {i} during transform"
                    )
                if warn_on_unknown:
                    unknown_in.append(i)
                X_mask[:, i] = known
                codes[~known] = 0  # as scikit-learn: the first level, masked out
            X_int[:, i] = codes
        if unknown_in:
            warnings.warn(
                f"Found unknown categories in columns {unknown_in} during transform. These "
                + (
                    "unknown categories will be encoded as the infrequent category."
                    if handle_unknown == "infrequent_if_exist"
                    else "unknown categories will be encoded as all zeros"
                ),
                UserWarning,
                stacklevel=2,
            )
        self._map_infrequent_categories(X_int, X_mask, ignore_category_indices)
        return X_int, X_mask


def build_preprocessor(schema: SchemaConfig, encoding: FeaturesConfig | None = None) -> Pipeline:
    """Coercion, imputation, scaling and one-hot encoding for the schema's columns.

    ``encoding`` (default: the ``features`` defaults) caps the one-hot columns of each
    categorical column (``max_categories``, ``min_frequency``): the rarer levels share one
    'infrequent' column, and so do levels first seen in serving. A column missing in every
    training row stays a (constant) column, so every schema column keeps its output."""
    encoding = encoding or FeaturesConfig()
    numeric = Pipeline(
        [
            ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
            ("scale", StandardScaler()),
        ]
    )
    categorical = TextOneHotEncoder(
        handle_unknown="infrequent_if_exist",
        sparse_output=False,
        max_categories=encoding.max_categories,
        min_frequency=encoding.min_frequency,
    )
    columns = ColumnTransformer(
        [("num", numeric, list(schema.numeric)), ("cat", categorical, list(schema.categorical))],
        verbose_feature_names_out=False,
    )
    return Pipeline(
        [
            ("coerce", RawColumnCoercer(list(schema.numeric), list(schema.categorical))),
            ("columns", columns),
        ]
    )


def build_model_pipeline(
    schema: SchemaConfig, estimator: BaseEstimator, encoding: FeaturesConfig | None = None
) -> Pipeline:
    """The servable model: raw rows in, class probabilities out."""
    return Pipeline([("features", build_preprocessor(schema, encoding)), ("model", estimator)])


def one_hot_columns(counts: pd.Series, rows: int, encoding: FeaturesConfig) -> int:
    """The one-hot columns a categorical column with level ``counts`` becomes: as
    scikit-learn's OneHotEncoder decides which levels are infrequent (min_frequency, then
    max_categories counting the shared 'infrequent' column)."""
    low = encoding.min_frequency
    threshold = low if isinstance(low, int) else (low or 0) * rows
    frequent = int((counts >= threshold).sum())
    cap = encoding.max_categories
    if cap is not None and cap < frequent + 1:
        frequent = cap - 1
    return frequent + (frequent < len(counts))


def encoding_plan(train: pd.DataFrame, schema: SchemaConfig, encoding: FeaturesConfig) -> dict:
    """What one-hot encoding the training rows makes of each categorical column: its
    ``levels`` and ``columns`` (one-hot outputs), the ``capped`` ones (fewer columns than
    levels) and the feature matrix's ``width``."""
    coerced = RawColumnCoercer([], list(schema.categorical)).fit(train).transform(train)
    levels, outputs = {}, {}
    for col in schema.categorical:
        counts = coerced[col].value_counts()
        levels[col] = int(len(counts))
        outputs[col] = one_hot_columns(counts, len(train), encoding)
    return {
        "levels": levels,
        "columns": outputs,
        "capped": [c for c in schema.categorical if outputs[c] < levels[c]],
        "width": len(schema.numeric) + sum(outputs.values()),
    }


# Feature matrices held at once, measured with a 7,000-level column on this machine: a
# fit holds ~2 (logreg) to ~3 (xgboost) times the dense float64 matrix; the tune stage's
# folds hold every fold's transformed rows (cv_folds x) and a trial's copy on top.
FIT_COPIES = 3


def available_memory_mb() -> int | None:
    """Memory a process may still take: MemAvailable, or less under a cgroup limit."""
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) // 1024)
    except OSError:
        pass
    try:
        cgroup = Path("/sys/fs/cgroup")
        limit = (cgroup / "memory.max").read_text().strip()
        if limit != "max":
            used = int((cgroup / "memory.current").read_text())
            found.append((int(limit) - used) // (1 << 20))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def check_memory(
    plan: dict[str, Any], rows: int, encoding: FeaturesConfig, copies: int
) -> dict[str, Any]:
    """The feature matrices' estimated peak (``rows`` x ``plan['width']`` float64 values,
    ``copies`` of them) against ``features.memory_budget_mb`` or the memory available
    now; raises DataValidationError naming the widest one-hot columns when it is larger
    (before a kernel is killed for it)."""
    estimate = -(-rows * plan["width"] * 8 * copies // (1 << 20))
    budget = encoding.memory_budget_mb or available_memory_mb()
    out = {"estimate_mb": estimate, "budget_mb": budget, "copies": copies}
    if budget is None or estimate <= budget:
        return out
    widest = sorted(plan["columns"], key=lambda c: -plan["columns"][c])[:3]
    named = ", ".join(
        f"{c!r} ({plan['levels'][c]} levels -> {plan['columns'][c]} columns)" for c in widest
    )
    of = (
        "features.memory_budget_mb"
        if encoding.memory_budget_mb
        else "available now (features.memory_budget_mb sets a budget)"
    )
    raise DataValidationError(
        f"the feature matrices would take ~{estimate} MB ({rows} training rows x "
        f"{plan['width']} one-hot/numeric columns x 8 bytes x {copies} copies held at once "
        f"by train and tune), more than the {budget} MB {of}; widest: {named}; cap them "
        f"with features.max_categories (now {encoding.max_categories}) or "
        f"features.min_frequency, or leave such a column out of schema.categorical"
    )


def split_positions(
    df: pd.DataFrame,
    schema: SchemaConfig,
    cfg: SplitConfig,
    seed: int,
    keys: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The positions of ``df``'s rows in each part of :func:`split`, in the part's order.
    ``keys``: ``rowkeys.row_keys(df, schema)`` when the caller already has them (the hash
    split needs them; preprocess also keeps those of the rows its models see)."""
    if cfg.method == "hash":
        keys = rowkeys.row_keys(df, schema) if keys is None else keys
        where = rowkeys.hash_assignment(keys, cfg)
        order = np.argsort(keys, kind="stable")
        return {name: order[where[order] == name] for name in ("train", "valid", "test")}
    y = target_vector(df, schema)
    # train_test_split of the positions draws what it draws of the rows themselves
    rest, test = train_test_split(
        np.arange(len(df)), test_size=cfg.test_size, stratify=y, random_state=seed
    )
    valid_share = cfg.valid_size / (1 - cfg.test_size)
    train, valid = train_test_split(
        rest, test_size=valid_share, stratify=y.iloc[rest], random_state=seed
    )
    return {"train": train, "valid": valid, "test": test}


def split(
    df: pd.DataFrame,
    schema: SchemaConfig,
    cfg: SplitConfig,
    seed: int,
    keys: np.ndarray | None = None,
) -> dict[str, pd.DataFrame]:
    """Stratified train/valid/test split (sizes are fractions of all rows): by each row's
    stable hash (``split.method: hash``, see :func:`mlfolio.rowkeys.hash_assignment`;
    each part in key order, so it does not depend on the rows' order either) or seeded.
    ``keys``: as in :func:`split_positions`."""
    return parts_at(df, split_positions(df, schema, cfg, seed, keys))


def parts_at(df: pd.DataFrame, positions: dict[str, np.ndarray]) -> dict[str, pd.DataFrame]:
    """Each part's rows of ``df`` (its ``positions``), indexed from 0."""
    return {name: df.iloc[rows].reset_index(drop=True) for name, rows in positions.items()}


def xy(df: pd.DataFrame, schema: SchemaConfig) -> tuple[pd.DataFrame, pd.Series]:
    """Raw feature columns and the 0/1 target."""
    return df[schema.features], target_vector(df, schema)


def split_summary(parts: dict[str, pd.DataFrame], schema: SchemaConfig) -> pd.DataFrame:
    """Rows and positive rate per split, to show stratification held."""
    return pd.DataFrame(
        {
            name: {"rows": len(part), "positive_rate": round(target_vector(part, schema).mean(), 4)}
            for name, part in parts.items()
        }
    ).T
