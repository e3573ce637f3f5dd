"""A/B and shadow tests of the challenger against the champion on logged outcomes.

Pure functions of a prediction-log frame joined with ground truth: one row per scored row
with ``request_id``, ``variant`` (champion/challenger), ``shadow``, ``model_version``,
``score``, ``label`` and ``actual`` (1.0/0.0, NaN while the outcome is unknown).

- **A/B**: each entity was routed to one variant, so the arms are independent samples;
  ROC AUC with the always-valid two-sample test and DeLong's test for two independent
  ROC curves, accuracy with a two-proportion z-test.
- **Shadow**: the challenger scored every request the champion answered, so both are
  compared on the same rows (paired on ``request_id`` + row): the always-valid paired test
  and DeLong's paired test for ROC AUC, McNemar's for accuracy.

A bootstrap confidence interval of the ROC AUC difference (paired, or each arm resampled
on its own) is reported next to DeLong's as a cross-check. The recommendation — promote,
keep or roll back — is what :func:`mlfolio.registry.act_on_ab` acts on. It comes from the
always-valid sequential test of :mod:`mlfolio.sequential` (a mixture SPRT on the ROC
AUC difference, or the per-row log loss or Brier score; ``method="sequential"``, the
default), which may be read after every monitor
run; DeLong's fixed-horizon test is valid only when read once, at a size planned in
advance, and stays in the report beside it (``method="delong"`` decides by it as before).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from mlfolio import evaluate, sequential
from mlfolio.errors import DataValidationError
from mlfolio.fixed_horizon import (
    delong_paired,
    delong_unpaired,
    mcnemar_test,
    two_proportion_test,
)

CHAMPION = "champion"
CHALLENGER = "challenger"
VARIANTS = (CHAMPION, CHALLENGER)
ACTIONS = ("promote", "keep", "roll back")
REQUIRED_COLUMNS = ("request_id", "model_version", "variant", "shadow", "score", "label", "actual")
# A bootstrap chunk holds at most this many (resample x row) weights (~32 MB of int64).
_CHUNK_CELLS = 4_000_000


# -- validation and design ------------------------------------------------------------
def validate_log(log: pd.DataFrame) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in log.columns]
    if missing:
        raise DataValidationError(
            f"prediction log: missing column(s) {', '.join(missing)} "
            f"(needs {', '.join(REQUIRED_COLUMNS)})"
        )
    if len(log) == 0:
        raise DataValidationError("prediction log: no rows in the window")
    unknown = sorted(set(log["variant"].astype(str)) - set(VARIANTS))
    if unknown:
        raise DataValidationError(
            f"prediction log: column 'variant' has {unknown}; expected {list(VARIANTS)}"
        )
    for col in ("score", "actual"):
        if not pd.api.types.is_numeric_dtype(log[col]):
            raise DataValidationError(
                f"prediction log: column '{col}' must be numeric, got {log[col].dtype}"
            )
    bad = ~log["actual"].isin([0, 1]) & log["actual"].notna()
    if bad.any():
        raise DataValidationError(
            f"prediction log: column 'actual' must be 1, 0 or missing; "
            f"got {sorted(log.loc[bad, 'actual'].unique())[:5]}"
        )
    if (log["shadow"].astype(bool) & (log["variant"] == CHAMPION)).any():
        raise DataValidationError(
            "prediction log: column 'shadow' is true on champion rows; "
            "only the challenger runs in shadow"
        )


def design(log: pd.DataFrame) -> str:
    """The window's design: "shadow" (challenger scored in shadow), "ab" (traffic split
    between the variants) or "single" (one variant only). Raises on a malformed log."""
    validate_log(log)
    shadow = log["shadow"].astype(bool)
    present = set(log["variant"])
    if shadow.any():
        if (~shadow & (log["variant"] == CHALLENGER)).any():
            raise DataValidationError(
                "prediction log: the window mixes A/B challenger rows "
                "(shadow false) with shadow rows; report each mode on "
                "its own window"
            )
        if CHAMPION not in present:
            raise DataValidationError(
                "prediction log: shadow challenger rows without the champion rows they shadow"
            )
        return "shadow"
    return "ab" if present == set(VARIANTS) else "single"


def _arm(log: pd.DataFrame, variant: str) -> pd.DataFrame:
    """The rows of one variant, which must all come from one model version."""
    rows = log[log["variant"] == variant]
    versions = sorted(rows["model_version"].astype(str).unique())
    if len(versions) > 1:
        raise DataValidationError(
            f"prediction log: column 'model_version' has {versions} for "
            f"the {variant}; the alias moved inside the window — report "
            "on a window with one version per variant"
        )
    return rows


def _pairs(log: pd.DataFrame) -> pd.DataFrame:
    """Shadow design: each champion row beside the challenger row of the same request row.

    Rows pair on ``request_id`` and ``row`` when the log has a row column, else on the
    order of rows inside the request.
    """
    frame = log.copy()
    if "row" not in frame.columns:
        frame["row"] = frame.groupby(["request_id", "variant"], sort=False).cumcount()
    keys = ["request_id", "row"]
    old, new = _arm(frame, CHAMPION), _arm(frame, CHALLENGER)
    for name, part in ((CHAMPION, old), (CHALLENGER, new)):
        if part.duplicated(keys).any():
            raise DataValidationError(
                f"prediction log: {name} rows repeat a (request_id, row) "
                "pair; shadow rows cannot be paired"
            )
    cols = [*keys, "model_version", "score", "label", "actual"]
    return old[cols].merge(new[cols], on=keys, suffixes=("_old", "_new"))


# -- statistics -----------------------------------------------------------------------
def _resample_weights(n: int, samples: int, seed: int) -> Iterator[np.ndarray]:
    """Bootstrap resamples as row multiplicities, in chunks that bound memory."""
    rng = np.random.default_rng(seed)
    per_chunk = max(1, _CHUNK_CELLS // max(n, 1))
    done = 0
    while done < samples:
        size = min(per_chunk, samples - done)
        yield rng.multinomial(n, np.full(n, 1.0 / n), size=size)
        done += size


def _bootstrap(
    y: np.ndarray,
    scores: list[np.ndarray],
    samples: int,
    seed: int,
    correct: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """ROC AUC of each score (resamples x scores) and the mean of ``correct`` (accuracy),
    all on the same resamples; uses evaluate's vectorised weighted AUC."""
    y = np.asarray(y, float)
    aucs, accs = [], []
    for w in _resample_weights(len(y), samples, seed):
        aucs.append(
            np.column_stack([evaluate.weighted_roc_auc(y, np.asarray(s, float), w) for s in scores])
        )
        if correct is not None:
            accs.append(w @ np.asarray(correct, float) / len(y))
    auc = np.vstack(aucs) if aucs else np.empty((0, len(scores)))
    if correct is None:
        return auc, None
    return auc, np.concatenate(accs) if accs else np.empty(0)


def _percentile_ci(values: np.ndarray, confidence: float) -> tuple[float, float]:
    values = values[np.isfinite(values)]  # a resample with one class has no AUC
    if len(values) == 0:
        return math.nan, math.nan
    tail = (1 - confidence) / 2
    return float(np.quantile(values, tail)), float(np.quantile(values, 1 - tail))


# -- per-variant metrics --------------------------------------------------------------
def variant_metrics(
    log: pd.DataFrame, confidence: float = 0.95, bootstrap_samples: int = 1000, seed: int = 42
) -> pd.DataFrame:
    """One row per variant (and shadow flag, model version): volume, rates and quality on
    the labelled rows, with bootstrap confidence intervals for ROC AUC and accuracy."""
    validate_log(log)
    rows = []
    groups = log.groupby(["variant", "shadow", "model_version"], sort=False)
    for (variant, shadow, version), g in groups:
        labelled = g[g["actual"].notna()]
        y = labelled["actual"].to_numpy().astype(int)
        score = labelled["score"].to_numpy(float)
        correct = labelled["label"].to_numpy().astype(int) == y
        row: dict[str, Any] = {
            "variant": variant,
            "shadow": bool(shadow),
            "model_version": str(version),
            "rows": len(g),
            "labelled": len(labelled),
            "positive_rate": float(g["label"].mean()),
            "actual_rate": float(y.mean()) if len(y) else math.nan,
            "roc_auc": math.nan,
            "roc_auc_ci_low": math.nan,
            "roc_auc_ci_high": math.nan,
            "accuracy": float(correct.mean()) if len(y) else math.nan,
            "accuracy_ci_low": math.nan,
            "accuracy_ci_high": math.nan,
            "log_loss": math.nan,
            "brier": math.nan,
        }
        if len(np.unique(y)) == 2:
            threshold = float(g["threshold"].iloc[0]) if "threshold" in g else 0.5
            point = evaluate.classification_metrics(y, score, threshold)
            row.update(roc_auc=point["roc_auc"], log_loss=point["log_loss"], brier=point["brier"])
            auc, acc = _bootstrap(y, [score], bootstrap_samples, seed, correct)
            row["roc_auc_ci_low"], row["roc_auc_ci_high"] = _percentile_ci(auc[:, 0], confidence)
            row["accuracy_ci_low"], row["accuracy_ci_high"] = _percentile_ci(acc, confidence)
        rows.append(row)
    table = pd.DataFrame(rows)
    order = table["variant"].map({CHAMPION: 0, CHALLENGER: 1})
    return (
        table.assign(_o=order)
        .sort_values(["_o", "shadow"])
        .drop(columns="_o")
        .reset_index(drop=True)
    )


# -- the comparison -------------------------------------------------------------------
def _arm_summary(
    version: str, rows: int, y: np.ndarray, score: np.ndarray, label: np.ndarray
) -> dict[str, Any]:
    two_classes = len(np.unique(y)) == 2
    return {
        "version": version,
        "rows": int(rows),
        "labelled": int(len(y)),
        "positives": int(y.sum()),
        "roc_auc": evaluate.classification_metrics(y, score)["roc_auc"] if two_classes else None,
        "accuracy": float((label == y).mean()) if len(y) else None,
    }


def compare(
    log: pd.DataFrame,
    confidence: float = 0.95,
    bootstrap_samples: int = 1000,
    seed: int = 42,
    metric: str = "roc_auc",
    alpha: float = 0.05,
    mixture_rows: int = 1000,
) -> dict[str, Any]:
    """Challenger − champion in ROC AUC (DeLong: paired for shadow, independent for A/B,
    with a bootstrap interval as cross-check), in accuracy (McNemar / two-proportion z)
    and, under ``sequential``, in ``metric`` (mean log loss, Brier score or ROC AUC) by
    the always-valid test of :mod:`mlfolio.sequential` (level ``alpha``, tuned to
    ``mixture_rows`` rows)."""
    kind = design(log)
    tuning = {"metric": metric, "alpha": alpha, "mixture_rows": mixture_rows}
    out: dict[str, Any] = {
        "design": kind,
        "metric": "roc_auc",
        "confidence": confidence,
        "test": None,
        "champion": None,
        "challenger": None,
        "paired_rows": None,
        "difference": None,
        "ci_low": None,
        "ci_high": None,
        "z": None,
        "p_value": None,
        "bootstrap": None,
        "accuracy": None,
        "sequential": None,
        "note": None,
    }
    if kind == "single":
        variant = str(log["variant"].iloc[0])
        rows = _arm(log, variant)
        lab = rows[rows["actual"].notna()]
        y = lab["actual"].to_numpy().astype(int)
        out[variant] = _arm_summary(
            str(rows["model_version"].iloc[0]),
            len(rows),
            y,
            lab["score"].to_numpy(float),
            lab["label"].to_numpy(),
        )
        out["note"] = f"only the {variant} served in this window: nothing to compare"
        return out

    if kind == "shadow":
        pairs = _pairs(log)
        lab = pairs[pairs["actual_old"].notna() | pairs["actual_new"].notna()]
        y = lab["actual_old"].fillna(lab["actual_new"]).to_numpy().astype(int)
        arms = {}
        for variant, sfx in ((CHAMPION, "_old"), (CHALLENGER, "_new")):
            arms[variant] = (lab[f"score{sfx}"].to_numpy(float), lab[f"label{sfx}"].to_numpy())
            out[variant] = _arm_summary(
                str(_arm(log, variant)["model_version"].iloc[0]),
                len(_arm(log, variant)),
                y,
                *arms[variant],
            )
        out["paired_rows"] = int(len(pairs))
        s_new, s_old = arms[CHALLENGER][0], arms[CHAMPION][0]
        out["sequential"] = sequential.paired_test(y, s_new, s_old, **tuning)
        out["test"] = (
            f"paired DeLong test (shadow: both variants on the same {len(y)} labelled rows)"
        )
        if len(np.unique(y)) < 2:
            out["note"] = f"the {len(y)} labelled paired rows hold one class only: no ROC AUC"
            return out
        (s_new, l_new), (s_old, l_old) = arms[CHALLENGER], arms[CHAMPION]
        out.update(delong_paired(y, s_new, s_old, confidence))
        auc, _ = _bootstrap(y, [s_new, s_old], bootstrap_samples, seed)
        lo, hi = _percentile_ci(auc[:, 0] - auc[:, 1], confidence)
        out["bootstrap"] = {
            "test": "paired bootstrap",
            "ci_low": lo,
            "ci_high": hi,
            "samples": int(bootstrap_samples),
        }
        out["accuracy"] = {
            "test": "McNemar test",
            **mcnemar_test(l_new == y, l_old == y, confidence),
        }
        return out

    data = {}
    for variant in VARIANTS:
        rows = _arm(log, variant)
        lab = rows[rows["actual"].notna()]
        y = lab["actual"].to_numpy().astype(int)
        data[variant] = (y, lab["score"].to_numpy(float), lab["label"].to_numpy())
        out[variant] = _arm_summary(str(rows["model_version"].iloc[0]), len(rows), *data[variant])
    out["test"] = "DeLong test for two independent ROC curves (A/B: each entity saw one variant)"
    (y_new, s_new, _), (y_old, s_old, _) = data[CHALLENGER], data[CHAMPION]
    out["sequential"] = sequential.two_sample_test(y_new, s_new, y_old, s_old, **tuning)
    short = [v for v in VARIANTS if len(np.unique(data[v][0])) < 2]
    if short:
        out["note"] = (
            " and ".join(f"the {v} has {out[v]['labelled']} labelled rows" for v in short)
            + " without both classes: no ROC AUC"
        )
        return out
    (y_new, s_new, l_new), (y_old, s_old, l_old) = data[CHALLENGER], data[CHAMPION]
    out.update(delong_unpaired(y_new, s_new, y_old, s_old, confidence))
    auc_new, _ = _bootstrap(y_new, [s_new], bootstrap_samples, seed)
    auc_old, _ = _bootstrap(y_old, [s_old], bootstrap_samples, seed + 1)
    lo, hi = _percentile_ci(auc_new[:, 0] - auc_old[:, 0], confidence)
    out["bootstrap"] = {
        "test": "bootstrap, each arm resampled separately",
        "ci_low": lo,
        "ci_high": hi,
        "samples": int(bootstrap_samples),
    }
    out["accuracy"] = {
        "test": "two-proportion z-test",
        **two_proportion_test(
            int((l_new == y_new).sum()),
            len(y_new),
            int((l_old == y_old).sum()),
            len(y_old),
            confidence,
        ),
    }
    return out


# -- the recommendation ---------------------------------------------------------------
METHODS = ("sequential", "delong")


def _effect(c: dict[str, Any]) -> str:
    return (
        f"ROC AUC challenger − champion {c['difference']:+.4f} "
        f"({c['confidence']:.0%} CI {c['ci_low']:+.4f} .. {c['ci_high']:+.4f}, "
        f"p = {c['p_value']:.3g})"
    )


def _seq_effect(q: dict[str, Any]) -> str:
    return (
        f"{q['metric']} challenger − champion {q['difference']:+.4f} "
        f"({1 - q['alpha']:.0%} confidence sequence {q['ci_low']:+.4f} .. {q['ci_high']:+.4f}, "
        f"always-valid p = {q['p_value']:.3g})"
    )


def _verdict(
    comparison: dict[str, Any], method: str, min_improvement: float, alpha: float
) -> tuple[bool, bool, bool, str]:
    """(better, worse, gain too small, inconclusive reason) by the deciding test."""
    c, q = comparison, comparison["sequential"]
    if method == "sequential":
        gain = c["difference"]
        small = min_improvement > 0 and (gain is None or gain < min_improvement)
        why = (
            f"keep: inconclusive — the always-valid p = {q['p_value']:.3g} ≥ {q['alpha']:g} "
            f"(the {1 - q['alpha']:.0%} confidence sequence {q['ci_low']:+.4f} .. "
            f"{q['ci_high']:+.4f} of the {q['metric']} difference includes 0); collect more "
            "labelled traffic — reading this again later is allowed"
        )
        better = q["decision"] == "challenger better"
        return better and not small, q["decision"] == "challenger worse", better and small, why
    better = c["ci_low"] > min_improvement and c["p_value"] < alpha
    why = (
        f"keep: inconclusive — the {c['confidence']:.0%} CI {c['ci_low']:+.4f} .. "
        f"{c['ci_high']:+.4f} of the ROC AUC difference includes 0 (p = {c['p_value']:.3g}); "
        "collect more labelled traffic"
    )
    small = not better and c["ci_low"] > 0 and c["p_value"] < alpha
    return better, c["ci_high"] < 0, small, why


def recommend(
    comparison: dict[str, Any],
    min_labelled: int = 200,
    min_improvement: float = 0.0,
    alpha: float | None = None,
    method: str = "sequential",
) -> dict[str, Any]:
    """promote / keep / roll back, with the reasons.

    ``method="sequential"`` (default) decides by the always-valid test in
    ``comparison["sequential"]`` (its own alpha): promote when the challenger's loss is
    significantly lower (and, with ``min_improvement`` > 0, its ROC AUC gain at least
    that), roll back when significantly higher. It may be read after every monitor run.
    ``method="delong"`` decides by DeLong's fixed-horizon test (``alpha`` defaults to
    1 − confidence), valid only when read once: promote when the ROC AUC gain's CI lower
    bound is above ``min_improvement`` and p < alpha, roll back (stop the experiment, take
    the challenger out of traffic) when its CI upper bound is below 0. Both need
    ``min_labelled`` labelled rows in each arm; anything else keeps the current setup,
    saying whether the test was inconclusive or the labels too few.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    champ, chall = comparison.get(CHAMPION), comparison.get(CHALLENGER)
    out: dict[str, Any] = {
        "action": "keep",
        "reasons": [],
        "summary": "",
        "design": comparison["design"],
        "method": method,
        "champion_version": champ["version"] if champ else None,
        "challenger_version": chall["version"] if chall else None,
    }
    if comparison["design"] == "single":
        only = champ or chall
        variant = CHAMPION if champ else CHALLENGER
        out["summary"] = f"only the {variant} v{only['version']} served: nothing to compare"
        out["reasons"] = [
            f"keep: {comparison['note']} ({only['rows']} rows, "
            f"{only['labelled']} labelled, v{only['version']})"
        ]
        return out

    alpha = 1 - comparison["confidence"] if alpha is None else alpha
    n_old, n_new = champ["labelled"], chall["labelled"]
    paired = comparison["design"] == "shadow"
    counts = (
        f"{n_new} labelled rows scored by both (paired)"
        if paired
        else f"labelled rows: champion v{champ['version']} {n_old}, challenger "
        f"v{chall['version']} {n_new}"
    )
    enough = min(n_old, n_new) >= min_labelled
    detail = [f"{counts}; at least {min_labelled} per arm needed"]
    seq = comparison.get("sequential")
    if method == "sequential" and seq is None:
        why = comparison["note"] or "fewer than two labelled rows per arm"
        out["summary"] = f"{comparison['design']}: no sequential test ({why})"
        out["reasons"] = [f"keep: too few labels — {why}", *detail]
        return out
    if method == "delong" and comparison["difference"] is None:
        out["summary"] = f"{comparison['design']}: no ROC AUC comparison ({comparison['note']})"
        out["reasons"] = [f"keep: too few labels — {comparison['note']}", *detail]
        return out

    if seq:
        decides = "decides" if method == "sequential" else "reported, not decisive"
        detail.append(f"{_seq_effect(seq)}; {seq['test']}, {seq['method']} ({decides})")
    if comparison["difference"] is None:
        detail.append(f"ROC AUC: {comparison['note']}")
    else:
        fixed = (
            "; fixed-horizon, reported beside: valid only when read once"
            if method == "sequential"
            else ""
        )
        detail.append(
            f"{_effect(comparison)}; {comparison['test']}{fixed}; ROC AUC champion "
            f"{champ['roc_auc']:.4f}, challenger {chall['roc_auc']:.4f}"
        )
        boot = comparison["bootstrap"]
        if boot and boot["ci_low"] is not None and not math.isnan(boot["ci_low"]):
            detail.append(
                f"cross-check, {boot['test']} ({boot['samples']} resamples): "
                f"{comparison['confidence']:.0%} CI {boot['ci_low']:+.4f} .. "
                f"{boot['ci_high']:+.4f}"
            )
        acc = comparison["accuracy"]
        detail.append(
            f"accuracy challenger − champion {acc['difference']:+.4f} "
            f"({acc['confidence']:.0%} CI {acc['ci_low']:+.4f} .. {acc['ci_high']:+.4f}, "
            f"{acc['test']} p = {acc['p_value']:.3g}); informative, not decisive"
        )
    better, worse, small, inconclusive = _verdict(comparison, method, min_improvement, alpha)
    vs = f"challenger v{chall['version']} vs champion v{champ['version']}"
    auc = bool(seq) and seq["metric"] == "roc_auc"
    if method == "sequential":
        effect, test = _seq_effect(seq), "always-valid mixture SPRT"
        if comparison["difference"] is not None:  # DeLong's fixed-horizon reading
            delong = f"DeLong p = {comparison['p_value']:.3g}"
            effect += (
                f"; {delong}" if auc else (f"; ROC AUC {comparison['difference']:+.4f} ({delong})")
            )
    else:
        effect, test = _effect(comparison), comparison["test"].split(" (")[0]
    out["summary"] = (
        f"{comparison['design']} test of {vs} on "
        f"{n_new if paired else n_old + n_new} labelled rows: {effect}, {test}"
    )
    if not enough:
        trend = (
            " (the challenger looks better so far)"
            if better or small
            else " (the challenger looks worse so far)"
            if worse
            else ""
        )
        head = (
            f"keep: too few labels — {min(n_old, n_new)} labelled rows in the smaller "
            f"arm, {min_labelled} needed in each{trend}"
        )
    elif better and method == "sequential":
        out["action"] = "promote"
        head = (
            f"promote: {vs} is significantly better — its {seq['metric']} is "
            f"{'higher' if auc else 'lower'}, always-valid p = {seq['p_value']:.3g} ≤ "
            f"{seq['alpha']:g} (the {1 - seq['alpha']:.0%} confidence sequence "
            f"{seq['ci_low']:+.4f} .. {seq['ci_high']:+.4f} is {'above' if auc else 'below'} 0)"
        )
    elif better:
        out["action"] = "promote"
        head = (
            f"promote: {vs} is significantly better — the {comparison['confidence']:.0%} "
            f"CI lower bound {comparison['ci_low']:+.4f} is above {min_improvement:+} and "
            f"p = {comparison['p_value']:.3g} < {alpha:g}"
        )
    elif worse:
        out["action"] = "roll back"
        bound = (
            f"its {seq['metric']} is {'lower' if auc else 'higher'}, always-valid p = "
            f"{seq['p_value']:.3g} ≤ {seq['alpha']:g} (confidence sequence "
            f"{seq['ci_low']:+.4f} .. {seq['ci_high']:+.4f} {'below' if auc else 'above'} 0)"
            if method == "sequential"
            else f"the {comparison['confidence']:.0%} CI upper bound "
            f"{comparison['ci_high']:+.4f} is below 0"
        )
        head = (
            f"roll back: {vs} is significantly worse — {bound}; stop the experiment "
            "and take the challenger out of traffic"
        )
    elif small:
        gain = comparison["difference"]
        head = (
            "keep: the challenger is better, but its ROC AUC gain "
            f"{'n/a' if gain is None else f'{gain:+.4f}'} does not clear min_improvement "
            f"{min_improvement:+}"
            if method == "sequential"
            else f"keep: the challenger is better, but its gain's CI lower bound "
            f"{comparison['ci_low']:+.4f} does not clear min_improvement {min_improvement:+}"
        )
    else:
        head = inconclusive
    out["reasons"] = [head, *detail]
    return out


# -- the report -----------------------------------------------------------------------
def _jsonable(value: Any) -> Any:
    """NaN → None, numpy scalars → Python, recursively (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, pd.Timestamp | datetime):
        return value.isoformat()
    return value


def ab_report(
    log: pd.DataFrame,
    confidence: float = 0.95,
    min_labelled: int = 200,
    min_improvement: float = 0.0,
    bootstrap_samples: int = 1000,
    seed: int = 42,
    model_name: str = "",
    method: str = "sequential",
    alpha: float = 0.05,
    metric: str = "roc_auc",
    mixture_rows: int = 1000,
) -> dict[str, Any]:
    """Design, per-variant metrics, comparison and recommendation, as JSON-ready data.

    ``comparison.sequential`` holds the always-valid test (statistic, p-value, rows,
    decision); ``method`` says which test the recommendation follows."""
    kind = design(log)
    if not model_name and "model_name" in log.columns and log["model_name"].nunique() == 1:
        model_name = str(log["model_name"].iloc[0])
    window = {
        "rows": int(len(log)),
        "requests": int(log["request_id"].nunique()),
        "labelled_rows": int(log["actual"].notna().sum()),
        "start": None,
        "end": None,
    }
    if "ts" in log.columns and log["ts"].notna().any():
        window.update(start=pd.Timestamp(log["ts"].min()), end=pd.Timestamp(log["ts"].max()))
    comparison = compare(log, confidence, bootstrap_samples, seed, metric, alpha, mixture_rows)
    return _jsonable(
        {
            "model_name": model_name,
            "design": kind,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "window": window,
            "parameters": {
                "confidence": confidence,
                "min_labelled": min_labelled,
                "min_improvement": min_improvement,
                "bootstrap_samples": bootstrap_samples,
                "seed": seed,
                "method": method,
                "alpha": alpha,
                "metric": metric,
                "mixture_rows": mixture_rows,
            },
            "variants": variant_metrics(log, confidence, bootstrap_samples, seed).to_dict(
                orient="records"
            ),
            "comparison": comparison,
            "recommendation": recommend(comparison, min_labelled, min_improvement, method=method),
        }
    )
