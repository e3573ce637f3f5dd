"""Data drift between a reference and a current frame: our fast verdict, and Evidently's.

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
missing categories stay missing and are left out, as in Evidently. :func:`evidently_verdict`
and :func:`evidently_report` hand Evidently the same coerced frames. Evidently is imported
only inside those two functions.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlfolio.config import RetrainPolicyConfig, SchemaConfig
from mlfolio.errors import DataValidationError

log = logging.getLogger(__name__)

LARGE_REFERENCE_ROWS = 1000  # Evidently: more reference rows than this → distance tests
FEW_VALUES = 5  # numeric columns with at most this many distinct values count as discrete
DEFAULT_DRIFT_SHARE = 0.5
REPORT_SAMPLE_ROWS = 5000
PREDICTION_COLUMN = "prediction"  # the model's positive-class score, in reports
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
    return (rc.reindex(keys, fill_value=0).to_numpy(float),
            cc.reindex(keys, fill_value=0).to_numpy(float))


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
    ref: pd.Series | np.ndarray, cur: pd.Series | np.ndarray, kind: str,
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
    return {"kind": kind, "method": method, "method_name": name, "score": score,
            "threshold": threshold, "drifted": bool(drifted),
            "reference_rows": n_ref, "current_rows": n_cur}


def _threshold_for(
    col: str, kind: str, threshold: float | None, num_threshold: float | None,
    cat_threshold: float | None, per_column: dict[str, float] | None,
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
        limit = _threshold_for(col, kind, threshold, num_threshold, cat_threshold,
                               per_column_threshold)
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


# --- Evidently --------------------------------------------------------------------------

def _evidently_snapshot(reference: pd.DataFrame, current: pd.DataFrame, schema: SchemaConfig,
                        drift_share: float, prediction: tuple[np.ndarray, np.ndarray] | None
                        = None, **thresholds: Any) -> Any:
    from evidently import DataDefinition, Dataset, Report  # ~5 s import: only here
    from evidently.presets import DataDriftPreset

    extra = [PREDICTION_COLUMN] if prediction is not None else []
    definition = DataDefinition(numerical_columns=list(schema.numeric) + extra,
                                categorical_columns=list(schema.categorical))
    ref = coerce_frame(reference, schema, "reference")
    cur = coerce_frame(current, schema, "current")
    if prediction is not None:
        ref[PREDICTION_COLUMN] = np.asarray(prediction[0], dtype=float)
        cur[PREDICTION_COLUMN] = np.asarray(prediction[1], dtype=float)
    preset = DataDriftPreset(columns=list(schema.features) + extra, drift_share=drift_share,
                             **{k: v for k, v in thresholds.items() if v is not None})
    report = Report([preset], include_tests=True)
    return report.run(current_data=Dataset.from_pandas(cur, data_definition=definition),
                      reference_data=Dataset.from_pandas(ref, data_definition=definition))


def _thresholds(threshold: float | None, num_threshold: float | None,
                cat_threshold: float | None, per_column_threshold: dict[str, float] | None
                ) -> dict[str, Any]:
    return {"threshold": threshold, "num_threshold": num_threshold,
            "cat_threshold": cat_threshold, "per_column_threshold": per_column_threshold}


def _parse_snapshot(snapshot: Any, schema: SchemaConfig, drift_share: float) -> dict[str, Any]:
    data = snapshot.dict()
    columns: dict[str, dict[str, Any]] = {}
    n_drifted = share = None
    for metric in data["metrics"]:
        config = metric.get("config", {})
        kind = str(config.get("type", ""))
        if kind.endswith("DriftedColumnsCount"):
            n_drifted = int(metric["value"]["count"])
            share = float(metric["value"]["share"])
        elif kind.endswith("ValueDrift"):
            columns[config["column"]] = {"score": float(metric["value"]),
                                         "method": config.get("method"),
                                         "threshold": config.get("threshold")}
    for test in data.get("tests", []):
        name = str(test.get("name", ""))
        prefix = "Value Drift for column "
        if name.startswith(prefix) and name[len(prefix):] in columns:
            columns[name[len(prefix):]]["drifted"] = test["status"] == "FAIL"
    if n_drifted is None or share is None:
        raise RuntimeError("Evidently's snapshot has no DriftedColumnsCount metric")
    prediction = columns.pop(PREDICTION_COLUMN, None)
    if prediction is not None:  # DriftedColumnsCount counted it: recount on features only
        n_drifted = sum(bool(c.get("drifted")) for c in columns.values())
        share = n_drifted / len(columns)
    drifted = [c for c in schema.features if columns.get(c, {}).get("drifted")]
    return {
        "columns": columns,
        "drifted_columns": drifted,
        "n_columns": len(columns),
        "n_drifted": n_drifted,
        "share_drifted": share,
        "drift_share": drift_share,
        "dataset_drift": bool(share >= drift_share),
    }


def evidently_verdict(
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
    """Evidently's own DataDriftPreset verdict on the full frames, shaped like drift_verdict.

    Per-column ``drifted`` comes from the preset's tests (``include_tests=True``), the count
    and share from its ``DriftedColumnsCount`` metric. Slow on big data (see the benchmark).
    """
    _coerce(reference, schema, "reference")
    _coerce(current, schema, "current")
    snapshot = _evidently_snapshot(reference, current, schema, drift_share,
                                   **_thresholds(threshold, num_threshold, cat_threshold,
                                                 per_column_threshold))
    return _parse_snapshot(snapshot, schema, drift_share)


def evidently_report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    schema: SchemaConfig,
    html_path: str | Path,
    sample_rows: int | None = REPORT_SAMPLE_ROWS,
    seed: int = 42,
    *,
    drift_share: float = DEFAULT_DRIFT_SHARE,
    threshold: float | None = None,
    num_threshold: float | None = None,
    cat_threshold: float | None = None,
    per_column_threshold: dict[str, float] | None = None,
    prediction: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Write Evidently's DataDriftPreset report (with tests) to ``html_path``.

    ``prediction`` (reference scores, current scores) adds the model's score as a
    ``prediction`` column: prediction drift next to the feature columns (it does not count
    toward the feature verdict).

    Frames longer than ``sample_rows`` are replaced by a seeded random sample
    (``DataFrame.sample(n=sample_rows, random_state=seed)``, each frame separately) so the
    report stays quick and the HTML small (~4 MB at 7k rows); ``sample_rows=None`` keeps all
    rows. The report's verdict is of that sample: use :func:`drift_verdict` for the verdict
    on all rows. Returns the report's verdict plus ``html_path`` and the rows used.
    """
    _coerce(reference, schema, "reference")
    _coerce(current, schema, "current")
    from mlfolio.data import sample

    if prediction is not None:  # keep each score with its row through the sample
        reference = reference.assign(**{PREDICTION_COLUMN: np.asarray(prediction[0])})
        current = current.assign(**{PREDICTION_COLUMN: np.asarray(prediction[1])})
    ref = sample(reference, sample_rows, seed)
    cur = sample(current, sample_rows, seed)
    scores = ((ref[PREDICTION_COLUMN].to_numpy(), cur[PREDICTION_COLUMN].to_numpy())
              if prediction is not None else None)
    snapshot = _evidently_snapshot(ref, cur, schema, drift_share, scores,
                                   **_thresholds(threshold, num_threshold, cat_threshold,
                                                 per_column_threshold))
    html_path = Path(html_path)
    html_path.parent.mkdir(parents=True, exist_ok=True)
    snapshot.save_html(str(html_path))
    log.info("drift report written to %s (%d reference, %d current rows)",
             html_path, len(ref), len(cur))
    verdict = _parse_snapshot(snapshot, schema, drift_share)
    verdict.update(html_path=str(html_path), reference_rows=len(ref), current_rows=len(cur),
                   sample_rows=sample_rows, seed=seed)
    return verdict


def evidently_quality_report(reference: pd.DataFrame, current: pd.DataFrame,
                             html_path: str | Path, threshold: float) -> Path:
    """Evidently's ClassificationPreset, current labelled rows against the reference.

    Both frames have ``target`` (0/1) and ``prediction`` (positive-class score) columns.
    """
    from evidently import BinaryClassification, DataDefinition, Dataset, Report
    from evidently.presets import ClassificationPreset

    for name, frame in (("reference", reference), ("current", current)):
        missing = {"target", PREDICTION_COLUMN} - set(frame.columns)
        if missing:
            raise DataValidationError(f"{name}: quality report needs column(s) "
                                      f"{sorted(missing)}")
        if len(frame) == 0:
            raise DataValidationError(f"{name}: no labelled rows for the quality report")
    definition = DataDefinition(
        numerical_columns=[PREDICTION_COLUMN],
        classification=[BinaryClassification(target="target",
                                             prediction_probas=PREDICTION_COLUMN,
                                             pos_label=1)])

    def dataset(frame: pd.DataFrame) -> Any:
        out = pd.DataFrame({"target": frame["target"].astype(int).to_numpy(),
                            PREDICTION_COLUMN: frame[PREDICTION_COLUMN].astype(float)
                            .to_numpy()})
        return Dataset.from_pandas(out, data_definition=definition)

    report = Report([ClassificationPreset(probas_threshold=threshold)])
    snapshot = report.run(current_data=dataset(current), reference_data=dataset(reference))
    html_path = Path(html_path)
    html_path.parent.mkdir(parents=True, exist_ok=True)
    snapshot.save_html(str(html_path))
    return html_path


@dataclass(frozen=True)
class RetrainDecision:
    """Whether to retrain, and every check that led there (like the promotion gate)."""

    retrain: bool
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def retrain_decision(policy: RetrainPolicyConfig, verdict: dict[str, Any], current_rows: int,
                     roc_auc_drop: float | None = None,
                     last_retrain_at: datetime | None = None,
                     now: datetime | None = None,
                     labelled_rows: int | None = None) -> RetrainDecision:
    """Apply the retraining policy to a drift verdict (and a quality drop, when labels
    exist). Guards first (enough rows, cool-down), then any trigger fires. With
    ``labelled_rows=0`` a firing trigger holds: retraining needs newly labelled rows."""
    decision = _retrain_decision(policy, verdict, current_rows, roc_auc_drop,
                                 last_retrain_at, now)
    if decision.retrain and labelled_rows == 0:
        return RetrainDecision(False, [*decision.reasons, "HOLD no labelled current rows to "
                                       "retrain on (give monitoring.labels or --labels)"])
    return decision


def _retrain_decision(policy: RetrainPolicyConfig, verdict: dict[str, Any], current_rows: int,
                      roc_auc_drop: float | None, last_retrain_at: datetime | None,
                      now: datetime | None) -> RetrainDecision:
    now = now or datetime.now(UTC)
    reasons: list[str] = []
    if current_rows < policy.min_rows:
        return RetrainDecision(False, [f"HOLD only {current_rows} current rows "
                                       f"(< min_rows {policy.min_rows})"])
    if last_retrain_at is not None:
        hours = (now - last_retrain_at).total_seconds() / 3600
        if hours < policy.cooldown_hours:
            return RetrainDecision(False, [f"HOLD last retraining {hours:.1f} h ago "
                                           f"(cool-down {policy.cooldown_hours} h)"])
    fired = False

    def check(hit: bool, text: str) -> None:
        nonlocal fired
        fired |= hit
        reasons.append(("FIRE " if hit else "ok   ") + text)

    share = float(verdict["share_drifted"])
    if policy.min_drift_share is not None:
        check(share >= policy.min_drift_share,
              f"share of drifted columns {share:.2f} vs {policy.min_drift_share} "
              f"({', '.join(verdict['drifted_columns']) or 'none'})")
    if policy.on_dataset_drift:
        check(bool(verdict["dataset_drift"]),
              f"dataset drift {'detected' if verdict['dataset_drift'] else 'not detected'}")
    if policy.max_roc_auc_drop is not None:
        if roc_auc_drop is None:
            reasons.append("n/a  quality drop: no ground-truth labels yet")
        else:
            check(roc_auc_drop >= policy.max_roc_auc_drop,
                  f"ROC AUC drop {roc_auc_drop:+.4f} vs {policy.max_roc_auc_drop}")
    return RetrainDecision(fired, reasons)


# --- Prometheus -------------------------------------------------------------------------
def drift_gauge_families(doc: dict[str, Any]) -> list[Any]:
    """Gauges for the latest monitor verdict (a ``drift.json`` document), so alerts can fire.

    Used by the model server's ``/metrics`` (from ``<prediction log>/drift.json``) and by
    :func:`write_prometheus_textfile` (node_exporter's textfile collector). Labels name the
    model version that was monitored; quality gauges appear only when labels existed.
    """
    from prometheus_client.core import GaugeMetricFamily

    model = doc.get("model") or {}
    labels = {"model": str(model.get("name", "")), "version": str(model.get("version", ""))}
    names, values = list(labels), list(labels.values())

    def gauge(name: str, doc_text: str, value: Any) -> GaugeMetricFamily | None:
        if value is None:
            return None
        family = GaugeMetricFamily(name, doc_text, labels=names)
        family.add_metric(values, float(value))
        return family

    quality = doc.get("quality") or {}
    current_q = quality.get("current") or {}
    delta_q = quality.get("delta") or {}
    prediction = doc.get("prediction_drift") or {}
    created = doc.get("created_at")
    families = [
        gauge("mlfolio_drift_share", "Share of feature columns that drifted (latest monitor "
              "run)", doc.get("share_drifted")),
        gauge("mlfolio_drift_columns", "Feature columns that drifted (latest monitor run)",
              doc.get("n_drifted")),
        gauge("mlfolio_dataset_drift", "1 when the latest monitor run found dataset drift",
              None if doc.get("dataset_drift") is None else int(bool(doc["dataset_drift"]))),
        gauge("mlfolio_prediction_drift_score", "Drift score of the model's scores "
              "(latest monitor run)", prediction.get("score")),
        gauge("mlfolio_quality_roc_auc", "ROC AUC on labelled current rows (latest monitor "
              "run)", current_q.get("roc_auc")),
        gauge("mlfolio_quality_roc_auc_delta", "Current minus reference ROC AUC (negative: "
              "the model got worse)", delta_q.get("roc_auc")),
        gauge("mlfolio_monitor_current_rows", "Rows in the latest monitor run's current data",
              (doc.get("current") or {}).get("rows")),
        gauge("mlfolio_monitor_last_run_timestamp_seconds", "When the latest monitor run "
              "finished (unix time)",
              datetime.fromisoformat(created).timestamp() if created else None),
    ]
    return [f for f in families if f is not None]


def write_prometheus_textfile(doc: dict[str, Any], path: str | Path) -> Path:
    """Write the drift gauges in Prometheus' text format (node_exporter textfile collector),
    atomically: a scrape never sees half a file."""
    from prometheus_client import CollectorRegistry, write_to_textfile

    class _Collector:
        def collect(self) -> list[Any]:
            return drift_gauge_families(doc)

    registry = CollectorRegistry()
    registry.register(_Collector())
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(path), registry)
    return path


# --- the monitor stage's pieces ---------------------------------------------------------
def prediction_drift(reference_scores: np.ndarray, current_scores: np.ndarray) -> dict[str, Any]:
    """Drift of the model's positive-class scores, by the same rules as a numeric column."""
    ref = np.asarray(reference_scores, dtype=float)
    cur = np.asarray(current_scores, dtype=float)
    if len(ref) == 0 or len(cur) == 0:
        raise DataValidationError("prediction drift needs scores in both frames")
    out = _column_drift(ref, cur, "numeric")
    out.update(reference_mean=float(np.mean(ref)), current_mean=float(np.mean(cur)))
    return out


def quality_comparison(reference: dict[str, float], y: np.ndarray | None,
                       scores: np.ndarray | None, threshold: float) -> dict[str, Any] | None:
    """Current metrics on labelled rows next to the reference's, with deltas (current −
    reference). None when no labels, or only one class, among the current rows."""
    from mlfolio.evaluate import classification_metrics

    if y is None or scores is None or len(y) == 0 or len(np.unique(y)) < 2:
        return None
    current = classification_metrics(np.asarray(y, dtype=int), np.asarray(scores), threshold)
    keys = [k for k in current if k != "threshold" and k in reference]
    return {"reference": {k: reference[k] for k in keys},
            "current": {k: current[k] for k in keys},
            "delta": {k: current[k] - reference[k] for k in keys},
            "labelled_rows": int(len(y)), "threshold": threshold}


def retraining_rows(snapshot: pd.DataFrame, labelled: pd.DataFrame, schema: SchemaConfig
                    ) -> pd.DataFrame:
    """The champion's data plus the newly labelled rows, in the snapshot's columns.

    A new row whose id is already in the snapshot replaces it (a newer observation of the
    same entity); rows without an id get one from their position.
    """
    missing = [c for c in [*schema.features, schema.target] if c not in labelled.columns]
    if missing:
        raise DataValidationError(f"newly labelled rows: missing column(s) {missing}")
    new = labelled.reindex(columns=snapshot.columns)
    id_col = schema.id_column
    if id_col:
        ids = new[id_col].astype("string")
        blank = ids.isna() | (ids.str.len() == 0)
        new.loc[blank, id_col] = [f"new-{i}" for i in range(int(blank.sum()))]
        new = new.drop_duplicates(subset=[id_col], keep="last")
        snapshot = snapshot[~snapshot[id_col].astype(str).isin(new[id_col].astype(str))]
    out = pd.concat([snapshot, new], ignore_index=True)
    for col in snapshot.columns:  # keep the snapshot's dtypes where the values allow it
        try:
            out[col] = out[col].astype(snapshot[col].dtype)
        except (TypeError, ValueError):
            pass
    return out
