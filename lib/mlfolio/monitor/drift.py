"""Data drift between a reference and a current frame, Evidently's rules computed fast.

:func:`drift_verdict` applies the tests and defaults of Evidently 0.7's ``DataDriftPreset``
(``evidently.legacy.calculations.stattests.registry._get_default_stattest``) so the verdicts
agree, but computes them with numpy/pandas (and scipy's distributions for p-values):

=====================  ============================  ==========================  =========
reference rows          column                        test                        drift if
=====================  ============================  ==========================  =========
> 1000                  numeric, > 5 distinct values  Wasserstein W1 / std(ref)   >= 0.1
> 1000                  numeric <= 5 values, categ.   Jensen-Shannon distance     >= 0.1
<= 1000                 numeric, > 5 distinct values  Kolmogorov-Smirnov p-value  <= 0.05
<= 1000                 3+ distinct values            chi-square p-value          < 0.05
<= 1000                 <= 2 distinct values          two-proportion Z p-value    < 0.05
=====================  ============================  ==========================  =========

"Rows" and "distinct values" are counted after dropping missing (and infinite) values, in
the reference (rows) and in both frames together (distinct values), as Evidently does.
``std(ref)`` is the population standard deviation, floored at 0.001; the Jensen-Shannon
distance uses the natural logarithm. The dataset drifts when the share of drifted columns
is >= ``drift_share`` (0.5).

Both frames are coerced like the model's input (:class:`mlfolio.features.RawColumnCoercer`
rules: numeric text to floats, blanks to missing; categories compared as text) except that
missing categories stay missing and are left out, as in Evidently.
:mod:`mlfolio.monitor.evidently_reports` hands Evidently the same coerced frames.
:func:`prediction_drift` applies the numeric rules to the model's scores.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from mlfolio.config import SchemaConfig
from mlfolio.errors import DataValidationError

LARGE_REFERENCE_ROWS = 1000  # Evidently: more reference rows than this → distance tests
FEW_VALUES = 5  # numeric columns with at most this many distinct values count as discrete
DEFAULT_DRIFT_SHARE = 0.5
METHODS = {
    # name: (Evidently's display name, default threshold, drift when score >= threshold?)
    "wasserstein": ("Wasserstein distance (normed)", 0.1, True),
    "jensenshannon": ("Jensen-Shannon distance", 0.1, True),
    "ks": ("K-S p_value", 0.05, False),
    "chisquare": ("chi-square p_value", 0.05, False),
    "z": ("Z-test p_value", 0.05, False),
}


# --- validation and coercion ------------------------------------------------------------


def _coerce(df: pd.DataFrame, schema: SchemaConfig, name: str) -> dict[str, pd.Series | np.ndarray]:
    """Feature columns of ``df``: numeric → finite float ndarray, categorical → value counts.

    Raises DataValidationError naming the frame and column for an empty frame, a missing
    column, text in a numeric column (blanks allowed) or a column with no values at all.
    """
    if not isinstance(df, pd.DataFrame):
        raise DataValidationError(f"{name}: expected a pandas DataFrame, got {type(df).__name__}")
    if df.empty:
        raise DataValidationError(f"{name}: no rows (expected columns {schema.features})")
    missing = [c for c in schema.features if c not in df.columns]
    if missing:
        raise DataValidationError(
            f"{name}: missing column(s) {missing}; expected {schema.features}"
        )
    out: dict[str, pd.Series | np.ndarray] = {}
    for col in schema.numeric:
        values = df[col]
        if pd.api.types.is_bool_dtype(values):
            raise DataValidationError(f"{name}: column {col!r}: expected numbers, got booleans")
        if pd.api.types.is_numeric_dtype(values):
            arr = values.to_numpy(dtype="float64", na_value=np.nan)
        elif values.dtype == object or pd.api.types.is_string_dtype(values):
            text = values.astype("string").str.strip()
            coerced = pd.to_numeric(text, errors="coerce")
            bad = text[coerced.isna() & text.notna() & (text != "")]
            if len(bad):
                raise DataValidationError(
                    f"{name}: column {col!r}: expected numbers (blank allowed as missing), "
                    f"found text such as {sorted(set(bad.head(3)))} in {len(bad)} row(s)"
                )
            arr = coerced.to_numpy(dtype="float64", na_value=np.nan)
        else:
            raise DataValidationError(
                f"{name}: column {col!r}: expected numbers, got dtype {values.dtype}"
            )
        arr = arr[np.isfinite(arr)]
        if arr.size == 0:
            raise DataValidationError(f"{name}: column {col!r}: expected numbers, all missing")
        out[col] = arr
    for col in schema.categorical:
        counts = df[col].value_counts(dropna=True, sort=False)  # one hashing pass
        if counts.empty:
            raise DataValidationError(f"{name}: column {col!r}: expected categories, all missing")
        if not _all_text(counts.index):  # 1 and "1" are the same category
            counts = counts.groupby(counts.index.map(str), sort=False).sum()
        out[col] = counts
    return out


def _all_text(values: pd.Series | pd.Index) -> bool:
    return values.dtype == object and pd.api.types.infer_dtype(values, skipna=True) == "string"


def coerce_frame(df: pd.DataFrame, schema: SchemaConfig, name: str = "data") -> pd.DataFrame:
    """The schema's feature columns as Evidently (and :func:`drift_verdict`) should see them.

    Numeric columns become float64 (blank text and infinities → NaN); categorical columns
    become text with missing values kept missing.
    """
    _coerce(df, schema, name)  # validate
    out = {}
    for col in schema.numeric:
        values = df[col]
        if not pd.api.types.is_numeric_dtype(values):
            values = pd.to_numeric(values.astype("string").str.strip(), errors="coerce")
        values = values.astype("float64")
        out[col] = values.where(np.isfinite(values))
    for col in schema.categorical:
        values = df[col]
        if not _all_text(values):
            values = values.astype(str).where(values.notna(), np.nan)
        out[col] = values
    return pd.DataFrame(out, index=df.index)


# --- the tests ----------------------------------------------------------------------------


def _wasserstein_normed(ref: np.ndarray, cur: np.ndarray) -> float:
    """Exact 1-D W1(ref, cur) / max(std(ref), 0.001), as scipy.stats.wasserstein_distance.

    W1 = integral |F_ref(x) - F_cur(x)| dx over the merged sorted values; ties contribute
    zero-width intervals, so the running counts from one stable merge are exact.
    """
    norm = max(float(np.std(ref)), 0.001)
    n, m = ref.size, cur.size
    if n == m:
        w1 = float(np.mean(np.abs(np.sort(ref) - np.sort(cur))))
        return w1 / norm
    merged = np.concatenate([np.sort(ref), np.sort(cur)])
    order = np.argsort(merged, kind="stable")  # two sorted runs: a linear merge
    values = merged[order]
    from_ref = np.cumsum(order < n)[:-1]
    seen = np.arange(1, n + m)
    diff = np.abs(from_ref / n - (seen - from_ref) / m)
    return float(np.dot(diff, np.diff(values))) / norm


def _counts(ref: pd.Series | np.ndarray, cur: pd.Series | np.ndarray) -> tuple[np.ndarray, ...]:
    """Value counts of both samples over the union of their values (counts pass through)."""
    rc = ref if isinstance(ref, pd.Series) else pd.Series(ref).value_counts(sort=False)
    cc = cur if isinstance(cur, pd.Series) else pd.Series(cur).value_counts(sort=False)
    keys = rc.index.union(cc.index)
    return (
        rc.reindex(keys, fill_value=0).to_numpy(float),
        cc.reindex(keys, fill_value=0).to_numpy(float),
    )


def _jensenshannon(ref_counts: np.ndarray, cur_counts: np.ndarray) -> float:
    p = ref_counts / ref_counts.sum()
    q = cur_counts / cur_counts.sum()
    mid = (p + q) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_p = np.where(p > 0, p * np.log(p / mid), 0.0).sum()
        kl_q = np.where(q > 0, q * np.log(q / mid), 0.0).sum()
    return float(np.sqrt(max((kl_p + kl_q) / 2, 0.0)))


def _chisquare_p(ref_counts: np.ndarray, cur_counts: np.ndarray) -> float:
    from scipy.stats import chisquare

    expected = ref_counts * (cur_counts.sum() / ref_counts.sum())
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(chisquare(cur_counts, expected)[1])


def _z_p(ref_counts: np.ndarray, cur_counts: np.ndarray) -> float:
    from scipy.stats import norm

    if len(ref_counts) < 2:  # one value in both samples
        return 1.0
    n1, n2 = ref_counts.sum(), cur_counts.sum()
    p1, p2 = ref_counts[0] / n1, cur_counts[0] / n2
    pooled = (p1 * n1 + p2 * n2) / (n1 + n2)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (p1 - p2) / np.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    return float(2 * (1 - norm.cdf(abs(z))))


def _n_distinct_numeric(ref: np.ndarray, cur: np.ndarray, limit: int) -> int:
    """Distinct values in both samples together, counted exactly up to ``limit + 1``."""
    seen: set[float] = set()
    for arr in (ref, cur):
        # cheap early exit: a few strided probes usually find > limit values at once
        seen.update(np.unique(arr[:: max(1, arr.size // 64)]).tolist())
        if len(seen) > limit:
            return len(seen)
    return int(np.unique(np.concatenate([ref, cur])).size)


def _column_drift(
    ref: pd.Series | np.ndarray,
    cur: pd.Series | np.ndarray,
    kind: str,
    threshold: float | None = None,
) -> dict[str, Any]:
    """Evidently's default test for one column, see the module doc.

    Numeric columns come as finite float arrays, categorical ones as value counts.
    """
    if kind == "numeric":
        n_ref, n_cur = ref.size, cur.size
        n_values = _n_distinct_numeric(ref, cur, FEW_VALUES)
    else:
        n_ref, n_cur = int(ref.sum()), int(cur.sum())
        n_values = len(ref.index.union(cur.index))
    large = n_ref > LARGE_REFERENCE_ROWS
    if kind == "numeric" and n_values > FEW_VALUES:
        method = "wasserstein" if large else "ks"
    else:
        method = "jensenshannon" if large else ("chisquare" if n_values > 2 else "z")
    name, default, higher_drifts = METHODS[method]
    threshold = default if threshold is None else float(threshold)
    if method == "wasserstein":
        score = _wasserstein_normed(ref, cur)
    elif method == "ks":
        from scipy.stats import ks_2samp

        score = float(ks_2samp(ref, cur)[1])
    else:
        ref_counts, cur_counts = _counts(ref, cur)
        score = {"jensenshannon": _jensenshannon, "chisquare": _chisquare_p, "z": _z_p}[method](
            ref_counts, cur_counts
        )
    if higher_drifts:
        drifted = score >= threshold
    else:
        drifted = score <= threshold if method == "ks" else score < threshold
    return {
        "kind": kind,
        "method": method,
        "method_name": name,
        "score": score,
        "threshold": threshold,
        "drifted": bool(drifted),
        "reference_rows": n_ref,
        "current_rows": n_cur,
    }


def _threshold_for(
    col: str,
    kind: str,
    threshold: float | None,
    num_threshold: float | None,
    cat_threshold: float | None,
    per_column: dict[str, float] | None,
) -> float | None:
    if per_column and col in per_column:
        return per_column[col]
    kind_threshold = num_threshold if kind == "numeric" else cat_threshold
    return kind_threshold if kind_threshold is not None else threshold


def drift_verdict(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    schema: SchemaConfig,
    *,
    drift_share: float = DEFAULT_DRIFT_SHARE,
    threshold: float | None = None,
    num_threshold: float | None = None,
    cat_threshold: float | None = None,
    per_column_threshold: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Per-column drift of ``current`` against ``reference`` and the dataset verdict.

    Thresholds override the method defaults like DataDriftPreset's arguments of the same
    names (per column, then numeric/categorical, then all). Returns ``{"columns": {col:
    {kind, method, method_name, score, threshold, drifted, reference_rows, current_rows}},
    "drifted_columns", "n_columns", "n_drifted", "share_drifted", "drift_share",
    "dataset_drift"}``. Raises DataValidationError naming the frame and column.
    """
    if not 0 < drift_share <= 1:
        raise ValueError(f"drift_share must be in (0, 1], got {drift_share}")
    unknown = set(per_column_threshold or {}) - set(schema.features)
    if unknown:
        raise ValueError(f"per_column_threshold: unknown column(s) {sorted(unknown)}")
    ref = _coerce(reference, schema, "reference")
    cur = _coerce(current, schema, "current")
    columns: dict[str, dict[str, Any]] = {}
    for col in schema.features:
        kind = "numeric" if col in schema.numeric else "categorical"
        limit = _threshold_for(
            col, kind, threshold, num_threshold, cat_threshold, per_column_threshold
        )
        columns[col] = _column_drift(ref[col], cur[col], kind, limit)
    drifted = [c for c, r in columns.items() if r["drifted"]]
    share = len(drifted) / len(columns)
    return {
        "columns": columns,
        "drifted_columns": drifted,
        "n_columns": len(columns),
        "n_drifted": len(drifted),
        "share_drifted": share,
        "drift_share": drift_share,
        "dataset_drift": bool(share >= drift_share),
    }


# --- prediction drift -------------------------------------------------------------------
def prediction_drift(reference_scores: np.ndarray, current_scores: np.ndarray) -> dict[str, Any]:
    """Drift of the model's positive-class scores, by the same rules as a numeric column."""
    ref = np.asarray(reference_scores, dtype=float)
    cur = np.asarray(current_scores, dtype=float)
    if len(ref) == 0 or len(cur) == 0:
        raise DataValidationError("prediction drift needs scores in both frames")
    out = _column_drift(ref, cur, "numeric")
    out.update(reference_mean=float(np.mean(ref)), current_mean=float(np.mean(cur)))
    return out
