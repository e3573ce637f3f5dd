"""Metrics, threshold choice, bootstrap comparison and the promotion gate (pure functions)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve

from mlfolio.config import GateConfig


def _ratio(num: float, den: float) -> float | None:
    """``num / den``, or None when ``den`` is 0: a precision with no predicted positive (or
    a recall with no positive row) is undefined, not 0."""
    return float(num / den) if den > 0 else None


def thresholded_metrics(y: np.ndarray, pred: np.ndarray) -> dict[str, float | None]:
    """Precision, recall and F1 of 0/1 predictions; None where undefined (no predicted
    positive for precision, no positive row for recall, neither for F1)."""
    y, pred = np.asarray(y).astype(int), np.asarray(pred).astype(int)
    tp = int((pred & y).sum())
    fp, fn = int((pred & (1 - y)).sum()), int(((1 - pred) & y).sum())
    return {
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
    }


def classification_metrics(
    y: np.ndarray, score: np.ndarray, threshold: float = 0.5
) -> dict[str, float | None]:
    """Ranking, probability and thresholded metrics of positive-class scores (precision,
    recall and F1 are None where undefined: see :func:`thresholded_metrics`)."""
    y = np.asarray(y)
    score = np.clip(np.asarray(score, dtype=float), 1e-15, 1 - 1e-15)
    pred = (score >= threshold).astype(int)
    return {
        "roc_auc": float(skm.roc_auc_score(y, score)),
        "pr_auc": float(skm.average_precision_score(y, score)),
        "log_loss": float(skm.log_loss(y, score, labels=[0, 1])),
        "brier": float(skm.brier_score_loss(y, score)),
        "accuracy": float(skm.accuracy_score(y, pred)),
        **thresholded_metrics(y, pred),
        "threshold": float(threshold),
    }


def max_f1_threshold(y: np.ndarray, score: np.ndarray) -> float:
    """The threshold that maximises F1 (chosen on validation rows, applied to test)."""
    precision, recall, thresholds = skm.precision_recall_curve(y, score)
    f1 = 2 * precision * recall / np.clip(precision + recall, 1e-12, None)
    return float(thresholds[int(np.argmax(f1[:-1]))])


def threshold_curve(
    y: np.ndarray, score: np.ndarray, points: int = 99
) -> dict[str, list[float | None]]:
    """Precision, recall and F1 at ``points`` thresholds evenly spread over (0, 1): why a
    threshold was chosen, drawn from the rows it was chosen on (validation). Precision is
    None (undefined) at thresholds no row reaches."""
    y = np.asarray(y).astype(int)
    score = np.asarray(score, dtype=float)
    thresholds = np.linspace(0, 1, points + 2)[1:-1]
    pred = score[None, :] >= thresholds[:, None]
    tp = (pred & (y == 1)).sum(axis=1)
    fp = (pred & (y == 0)).sum(axis=1)
    fn = int(y.sum()) - tp

    def rounded(num: np.ndarray, den: np.ndarray) -> list[float | None]:
        return [round(float(n / d), 4) if d > 0 else None for n, d in zip(num, den, strict=True)]

    return {
        "threshold": np.round(thresholds, 4).tolist(),
        "precision": rounded(tp, tp + fp),
        "recall": rounded(tp, tp + fn),
        "f1": rounded(2 * tp, 2 * tp + fp + fn),
    }


def segment_metrics(
    y: np.ndarray, score: np.ndarray, threshold: float, segments: np.ndarray, min_rows: int = 1
) -> dict[str, dict[str, float | int | None]]:
    """Rows, positive rate, ROC AUC, recall and precision at ``threshold`` per value of
    ``segments``, largest first; values with fewer than ``min_rows`` rows are left out
    (ROC AUC is None where a segment has one class only, precision where it has no
    predicted positive, recall where it has no positive)."""
    y = np.asarray(y).astype(int)
    score = np.asarray(score, dtype=float)
    segments = np.asarray(segments).astype(str)
    values, counts = np.unique(segments, return_counts=True)
    out: dict[str, dict[str, float | int | None]] = {}
    for value, count in sorted(zip(values, counts, strict=True), key=lambda vc: -vc[1]):
        if count < min_rows:
            continue
        mask = segments == value
        ys, ss = y[mask], score[mask]
        pred = (ss >= threshold).astype(int)
        out[str(value)] = {
            "rows": int(count),
            "positive_rate": float(ys.mean()),
            "roc_auc": float(skm.roc_auc_score(ys, ss)) if len(set(ys)) == 2 else None,
            "recall": (thresholded := thresholded_metrics(ys, pred))["recall"],
            "precision": thresholded["precision"],
        }
    return out


def weighted_average_precision(y: np.ndarray, score: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Average precision (PR AUC, as ``average_precision_score``) under each row of
    ``weights`` (resamples x rows), all resamples in one sort."""
    order = np.argsort(-score, kind="mergesort")
    sorted_score, y_sorted, w = score[order], y[order], weights[:, order]
    ends = np.r_[np.flatnonzero(np.diff(sorted_score) != 0), len(sorted_score) - 1]
    tp = np.cumsum(w * y_sorted, axis=1)[:, ends]
    fp = np.cumsum(w * (1 - y_sorted), axis=1)[:, ends]
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = tp / (tp + fp)
        recall = tp / tp[:, -1:]
    steps = np.diff(np.c_[np.zeros(len(w)), recall], axis=1)
    return np.nansum(steps * precision, axis=1) / np.where(tp[:, -1] > 0, 1, np.nan)


# A bootstrap draws at most this many row multiplicities at once (resamples x rows):
# ~32 MB per matrix, whatever the number of rows and resamples.
BOOTSTRAP_BLOCK_CELLS = 1 << 22
# Rows a bootstrap resamples by default (gate.bootstrap_rows' default); above, a
# stratified sample of that many.
BOOTSTRAP_ROWS: int | None = GateConfig.model_fields["bootstrap_rows"].default


def bootstrap_rows(y: np.ndarray, max_rows: int | None, seed: int) -> np.ndarray | None:
    """Sorted indices of a seeded sample of ``max_rows`` rows with ``y``'s class balance,
    or None when there are no more rows than that (or no bound)."""
    y = np.asarray(y)
    if max_rows is None or len(y) <= max_rows:
        return None
    rng = np.random.default_rng([seed, len(y), max_rows])
    positives = np.flatnonzero(y == 1)
    take = round(max_rows * len(positives) / len(y))
    negatives = np.flatnonzero(y != 1)
    return np.sort(
        np.concatenate(
            [
                rng.choice(positives, take, replace=False),
                rng.choice(negatives, max_rows - take, replace=False),
            ]
        )
    )


def _resample_weights(n: int, samples: int, seed: int):
    """Bootstrap resamples of ``n`` rows as row multiplicities, a block of resamples at a
    time (the same seeded draws as one ``multinomial(size=samples)`` call)."""
    rng = np.random.default_rng(seed)
    p = np.full(n, 1.0 / n)
    block = max(1, BOOTSTRAP_BLOCK_CELLS // max(n, 1))
    for start in range(0, samples, block):
        yield rng.multinomial(n, p, size=min(block, samples - start))


def bootstrap_intervals(
    y: np.ndarray,
    score: np.ndarray,
    threshold: float,
    samples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    max_rows: int | None = BOOTSTRAP_ROWS,
) -> dict[str, dict[str, float | None]]:
    """Percentile bootstrap intervals of ROC AUC, PR AUC, precision, recall, F1 and
    accuracy (at ``threshold``) on resampled rows: how sure the test numbers are.

    More than ``max_rows`` rows: the resamples are of a seeded stratified sample of
    ``max_rows`` of them (see :func:`bootstrap_rows`), and each interval is the sample's
    spread around its own value, rescaled by sqrt(max_rows / rows), around the value on
    all rows (the m-out-of-n bootstrap: these metrics vary as 1/sqrt(rows)). Time and
    memory then stay bounded however many rows there are."""
    y = np.asarray(y).astype(float)
    score = np.asarray(score, dtype=float)
    point = classification_metrics(y, score, threshold)
    picked = bootstrap_rows(y, max_rows, seed)
    ys, ss = (y, score) if picked is None else (y[picked], score[picked])
    n = len(ys)
    pred = (ss >= threshold).astype(float)
    blocks: dict[str, list[np.ndarray]] = {}
    for w in _resample_weights(n, samples, seed):
        tp, fp = w @ (pred * ys), w @ (pred * (1 - ys))
        fn, tn = w @ ((1 - pred) * ys), w @ ((1 - pred) * (1 - ys))
        with np.errstate(invalid="ignore", divide="ignore"):
            block = {
                "roc_auc": weighted_roc_auc(ys, ss, w),
                "pr_auc": weighted_average_precision(ys, ss, w),
                "precision": tp / (tp + fp),
                "recall": tp / (tp + fn),
                "f1": 2 * tp / (2 * tp + fp + fn),
                "accuracy": (tp + tn) / n,
            }
        for name, values in block.items():
            blocks.setdefault(name, []).append(values)
    centre = point if picked is None else classification_metrics(ys, ss, threshold)
    scale = 1.0 if picked is None else float(np.sqrt(n / len(y)))
    alpha = (1 - confidence) / 2
    out = {}
    for name, parts in blocks.items():
        values = np.concatenate(parts)
        values = values[np.isfinite(values)]
        if point[name] is None or not len(values):  # undefined on the rows themselves
            out[name] = {"value": point[name], "low": None, "high": None}
            continue
        low, high = np.quantile(values, alpha), np.quantile(values, 1 - alpha)
        if picked is not None:
            low = point[name] + scale * (low - centre[name])
            high = point[name] + scale * (high - centre[name])
        out[name] = {"value": point[name], "low": float(low), "high": float(high)}
    return out


def confusion(y: np.ndarray, score: np.ndarray, threshold: float) -> dict[str, int]:
    tn, fp, fn, tp = skm.confusion_matrix(
        y, (np.asarray(score) >= threshold).astype(int), labels=[0, 1]
    ).ravel()
    return {"tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp)}


def calibration(y: np.ndarray, score: np.ndarray, bins: int = 10) -> dict[str, list[float]]:
    frac_pos, mean_pred = calibration_curve(y, score, n_bins=bins, strategy="quantile")
    return {"mean_predicted": mean_pred.tolist(), "fraction_positive": frac_pos.tolist()}


def weighted_roc_auc(y: np.ndarray, score: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC of ``score`` under each row of ``weights`` (shape: resamples x rows).

    A bootstrap resample is a vector of row multiplicities, so all resamples are scored
    in one sort (ties count one half), instead of one ``roc_auc_score`` call each.
    """
    order = np.argsort(score, kind="mergesort")
    sorted_score, y_sorted, w = score[order], y[order], weights[:, order]
    starts = np.flatnonzero(np.r_[True, np.diff(sorted_score) != 0])
    pos = np.add.reduceat(w * y_sorted, starts, axis=1)
    neg = np.add.reduceat(w * (1 - y_sorted), starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    with np.errstate(invalid="ignore", divide="ignore"):
        return (pos * (below + 0.5 * neg)).sum(axis=1) / (pos.sum(axis=1) * neg.sum(axis=1))


def bootstrap_auc_difference(
    y: np.ndarray,
    score_new: np.ndarray,
    score_old: np.ndarray,
    samples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    max_rows: int | None = BOOTSTRAP_ROWS,
) -> dict[str, float]:
    """Paired bootstrap of ROC AUC(new) - ROC AUC(old) on the same resampled rows (above
    ``max_rows`` rows: on a stratified sample of that many, rescaled as in
    :func:`bootstrap_intervals`; ``rows`` says how many were resampled)."""
    y = np.asarray(y).astype(float)
    score_new, score_old = np.asarray(score_new, float), np.asarray(score_old, float)
    difference = float(skm.roc_auc_score(y, score_new) - skm.roc_auc_score(y, score_old))
    rows = len(y)
    picked = bootstrap_rows(y, max_rows, seed)
    if picked is not None:
        y, score_new, score_old = y[picked], score_new[picked], score_old[picked]
    diffs = np.concatenate(
        [
            weighted_roc_auc(y, score_new, w) - weighted_roc_auc(y, score_old, w)
            for w in _resample_weights(len(y), samples, seed)
        ]
    )
    diffs = diffs[np.isfinite(diffs)]  # a resample with one class has no AUC
    alpha = (1 - confidence) / 2
    low, high = np.quantile(diffs, alpha), np.quantile(diffs, 1 - alpha)
    if picked is not None:
        centre = skm.roc_auc_score(y, score_new) - skm.roc_auc_score(y, score_old)
        scale = np.sqrt(len(y) / rows)
        low, high = difference + scale * (low - centre), difference + scale * (high - centre)
    return {
        "difference": difference,
        "ci_low": float(low),
        "ci_high": float(high),
        "confidence": confidence,
        "samples": int(len(diffs)),
        "rows": int(len(y)),
    }


def segment_difference(
    y: np.ndarray,
    score_new: np.ndarray,
    score_old: np.ndarray,
    min_class_rows: int,
    samples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Whether the candidate (``score_new``) is worse than the champion in one segment:
    judged only with at least ``min_class_rows`` positive and negative rows each, then
    flagged only when the paired bootstrap interval of its ROC AUC difference (the same
    resampled rows for both models, :func:`bootstrap_auc_difference`) lies below 0."""
    y = np.asarray(y).astype(int)
    positives, negatives = int(y.sum()), int(len(y) - y.sum())
    out: dict[str, Any] = {"positives": positives, "negatives": negatives}
    if min(positives, negatives) < min_class_rows:
        return {
            **out,
            "judged": False,
            "why_not_judged": f"{positives} positive and {negatives} negative test rows: "
            f"needs at least {min_class_rows} of each (evaluation.segment_min_positives)",
            "difference": None,
            "flagged": False,
        }
    diff = bootstrap_auc_difference(y, score_new, score_old, samples, confidence, seed, None)
    return {
        **out,
        "judged": True,
        "why_not_judged": None,
        "difference": diff,
        "flagged": diff["ci_high"] < 0,
    }


@dataclass(frozen=True)
class GateVerdict:
    passed: bool
    reasons: list[str] = field(default_factory=list)
    # the champion version whose model the candidate is (identical files): nothing to
    # promote, and not a failure either (gate-status exits 0 for it)
    same_model_as: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# The rows a candidate and its champion are compared on (evaluate.json's row_sets).
ROW_SETS = {
    "unseen_test": "test rows the champion never saw",
    "out_of_time": "out-of-time rows (the newest labelled rows, unseen by both models)",
}


def row_set_comparison(
    y: np.ndarray,
    score_new: np.ndarray,
    score_old: np.ndarray,
    mask: np.ndarray,
    samples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    max_rows: int | None = BOOTSTRAP_ROWS,
) -> dict[str, Any]:
    """Both models' ROC AUC and the paired bootstrap of their difference on the rows
    ``mask`` selects; ``comparison`` is None when they hold fewer than 2 rows of a class."""
    y, mask = np.asarray(y).astype(int), np.asarray(mask, dtype=bool)
    ys, new, old = y[mask], np.asarray(score_new)[mask], np.asarray(score_old)[mask]
    positives = int(ys.sum())
    out: dict[str, Any] = {"rows": int(mask.sum()), "positives": positives, "comparison": None}
    if min(positives, len(ys) - positives) >= 2:
        out["candidate_roc_auc"] = float(skm.roc_auc_score(ys, new))
        out["champion_roc_auc"] = float(skm.roc_auc_score(ys, old))
        out["comparison"] = bootstrap_auc_difference(
            ys, new, old, samples, confidence, seed, max_rows
        )
    return out


def deciding_row_set(row_sets: dict[str, dict[str, Any]], min_rows: int) -> str:
    """Which rows decide the gate: the out-of-time rows when there are ``min_rows`` of them
    (the data the model will meet next), else the test rows the champion never saw."""
    recent = row_sets.get("out_of_time")
    return "out_of_time" if recent and recent["rows"] >= min_rows else "unseen_test"


def gate(
    cfg: GateConfig,
    candidate: dict[str, float],
    comparison: dict[str, float] | None = None,
    champion_version: str | None = None,
    same_model: bool = False,
    compared: dict[str, Any] | None = None,
) -> GateVerdict:
    """Decide promotion: absolute thresholds, then a significant gain over the champion.

    Every check adds a reason, passed or failed, so the verdict explains itself. A
    candidate whose model is the champion's (``same_model``: identical model files) has no
    gain to measure: the comparison is replaced by a SAME reason, nothing is promoted, and
    the verdict records ``same_model_as`` (when the absolute checks passed).
    ``compared`` (with a champion): the rows the comparison used, ``{"row_set": a key of
    ROW_SETS, "rows": n, "excluded": test rows left out because the champion saw them}``;
    fewer than ``gate.min_unseen_rows`` fails.
    """
    reasons: list[str] = []
    ok = True

    def check(passed: bool, fact: str, claim: str, need: str) -> None:
        """A passed check reads as its claim (``fact`` + ``claim``); a failed one states
        the requirement it missed (``fact: needs ...``)."""
        nonlocal ok
        ok &= passed
        reasons.append(f"PASS {fact} {claim}" if passed else f"FAIL {fact}: needs {need}")

    roc = f"test ROC AUC {candidate['roc_auc']:.4f}"
    check(
        candidate["roc_auc"] >= cfg.min_roc_auc,
        roc,
        f">= {cfg.min_roc_auc}",
        f">= {cfg.min_roc_auc}",
    )
    if cfg.min_pr_auc is not None:
        check(
            candidate["pr_auc"] >= cfg.min_pr_auc,
            f"test PR AUC {candidate['pr_auc']:.4f}",
            f">= {cfg.min_pr_auc}",
            f">= {cfg.min_pr_auc}",
        )
    if cfg.max_log_loss is not None:
        check(
            candidate["log_loss"] <= cfg.max_log_loss,
            f"test log loss {candidate['log_loss']:.4f}",
            f"<= {cfg.max_log_loss}",
            f"<= {cfg.max_log_loss}",
        )
    if compared is not None:
        left_out = compared.get("excluded") or 0
        check(
            compared["rows"] >= cfg.min_unseen_rows,
            f"compared with champion v{champion_version} on {compared['rows']} "
            f"{ROW_SETS[compared['row_set']]}"
            + (
                f" ({left_out} test rows it trained or chose its threshold on left out)"
                if left_out
                else ""
            ),
            f"(gate.min_unseen_rows {cfg.min_unseen_rows})",
            f"gate.min_unseen_rows {cfg.min_unseen_rows}",
        )
    if comparison is None and compared is None:
        reasons.append("PASS no champion yet: nothing to beat")
    elif same_model:
        reasons.append(
            f"SAME model as champion v{champion_version} (identical model files, "
            "mlfolio.model_hash): no gain to measure, nothing to promote"
        )
        # below the bar (e.g. on other test rows) it stays a failure like any other
        return GateVerdict(
            passed=False, reasons=reasons, same_model_as=champion_version if ok else None
        )
    elif comparison is None:
        check(
            False,
            f"ROC AUC gain over champion v{champion_version}: not measurable",
            "",
            "2 rows of each class among the rows compared",
        )
    else:
        bound = f"its lower bound above {cfg.min_improvement:+}"
        check(
            comparison["ci_low"] > cfg.min_improvement,
            f"ROC AUC gain over champion v{champion_version} "
            f"{comparison['difference']:+.4f} "
            f"({comparison['confidence']:.0%} CI {comparison['ci_low']:+.4f} .. "
            f"{comparison['ci_high']:+.4f})",
            f"has {bound}",
            bound,
        )
    return GateVerdict(passed=ok, reasons=reasons)
