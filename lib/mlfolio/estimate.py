"""The champion's performance estimated without labels: confidence-based performance
estimation (CBPE, as NannyML describes it), pure NumPy.

1. :func:`fit_calibration`, at evaluate time on the reference (validation) rows: a map
   from the model's score to a calibrated probability of the positive class, Platt
   (a logistic curve in the score's logit, 2 parameters) or isotonic (a monotone step
   function): isotonic only when its 5-fold cross-validated Brier score on those rows is
   more than ``ISOTONIC_MARGIN`` lower (a shape the logistic curve cannot follow), as its
   steps, fitted on a few hundred rows, are sharper than the truth and overstate ROC AUC
   (``benchmarks/estimate_bench.py --calibration isotonic``).
   The reason is written down with the map; so are ``bootstraps`` maps fitted on
   bootstrap resamples of the same rows (the uncertainty of the calibration itself) and
   the map's quality on the reference rows (ECE, Brier). :class:`Calibration` is JSON,
   shipped with the model version (``calibration.json``, an artifact of its run).
2. :func:`estimate_performance`, at monitor time on unlabelled rows: a row scored ``s``
   is positive with probability ``p = cal(s)``. The expected confusion matrix at the
   model's threshold (E[TP] = sum of p over rows predicted positive, ...) gives precision,
   recall, F1 and accuracy as ratios of expected counts; the expected ROC curve gives ROC
   AUC = E[pairs ranked right] / E[positive-negative pairs] (pairs of distinct rows, ties
   one half), and PR AUC (average precision) likewise.
3. Intervals: the realised metric on these rows is random even if ``p`` is right (which
   rows turn out positive) and ``p`` is itself an estimate. Labels are drawn
   ``y ~ Bernoulli(p_k)`` ``draws`` times, ``p_k`` cycling through the bootstrap
   calibration maps, and each draw's metrics computed exactly (vectorised: one sort of the
   scores, the draws as a matrix); the interval is the draws' percentile interval.
   Under covariate shift alone (P(y | x) unchanged, so P(y | score) unchanged) the
   realised metric falls inside it about ``confidence`` of the time.

Where it cannot work: concept shift (P(y | x) changes) leaves the scores, and so the
estimate, unchanged while the realised metrics move. :func:`compare_with_realised` is the
symptom once labels arrive: the realised ROC AUC or accuracy outside a wider (alarm,
99% over both) interval estimated for the same rows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

METHOD = "cbpe"
CALIBRATION_FILE = "calibration.json"
CALIBRATION_METHODS = ("auto", "platt", "isotonic")
ISOTONIC_MARGIN = 0.01  # auto: isotonic's CV Brier must be this much (relative) lower
METRICS = ("roc_auc", "pr_auc", "f1", "precision", "recall", "accuracy")
CHECKED = ("roc_auc", "accuracy")  # realised outside their alarm intervals: concept shift?
ALARM_CONFIDENCE = 0.99  # of the concept-shift check, over both metrics (Bonferroni)
_EPS = 1e-6
_BLOCK = 4_000_000  # draws x rows per block: memory stays ~100 MB on large logs


# --- calibration ----------------------------------------------------------------------


def _logit(score: np.ndarray) -> np.ndarray:
    s = np.clip(np.asarray(score, dtype=float), _EPS, 1 - _EPS)
    return np.log(s / (1 - s))


def _platt_fit(score: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(a, b) of p = 1 / (1 + exp(-(a * logit(s) + b))) per row of ``weights`` (fits x
    rows, bootstrap multiplicities): weighted logistic regression by Newton's method, all
    fits at once. A tiny ridge keeps a separable sample finite."""
    x = _logit(score)
    w = np.atleast_2d(weights).astype(float)
    coef = np.tile([1.0, 0.0], (w.shape[0], 1))
    ridge = 1e-6 * w.sum(axis=1)
    for _ in range(50):
        p = 1 / (1 + np.exp(-(coef[:, :1] * x + coef[:, 1:])))
        r, h = w * (y - p), w * p * (1 - p)
        g = np.stack([(r * x).sum(1), r.sum(1)], axis=1) - ridge[:, None] * coef
        haa, hab, hbb = (h * x * x).sum(1) + ridge, (h * x).sum(1), h.sum(1) + ridge
        det = haa * hbb - hab * hab
        step = np.stack([hbb * g[:, 0] - hab * g[:, 1], haa * g[:, 1] - hab * g[:, 0]], 1)
        step /= det[:, None]
        coef += step
        if np.abs(step).max() < 1e-9:
            break
    return coef


def _isotonic_fit(score: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None):
    """Knots (x, y) of the weighted isotonic regression of ``y`` on ``score`` (sklearn's),
    applied by linear interpolation clipped at the ends, as sklearn applies it."""
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
    iso.fit(np.asarray(score, float), np.asarray(y, float), sample_weight=weights)
    return iso.X_thresholds_.tolist(), iso.y_thresholds_.tolist()


def _apply(method: str, params: dict[str, Any], score: np.ndarray) -> np.ndarray:
    score = np.asarray(score, dtype=float)
    if method == "platt":
        return 1 / (1 + np.exp(-(params["a"] * _logit(score) + params["b"])))
    if method == "isotonic":
        return np.interp(score, params["x"], params["y"])
    raise ValueError(f"calibration method: expected 'platt' or 'isotonic', got {method!r}")


def _fit_one(method: str, score: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    if method == "platt":
        a, b = _platt_fit(score, y, np.ones(len(y)))[0]
        return {"a": float(a), "b": float(b)}
    x_knots, y_knots = _isotonic_fit(score, y)
    return {"x": x_knots, "y": y_knots}


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """ECE: the rows-weighted mean |mean p - positive rate| over ``bins`` equal-count bins
    of ``p``."""
    y, p = np.asarray(y, float), np.asarray(p, float)
    order = np.argsort(p, kind="mergesort")
    parts = np.array_split(order, min(bins, len(p)))
    return float(sum(len(i) * abs(p[i].mean() - y[i].mean()) for i in parts if len(i)) / len(p))


def _quality(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    return {
        "ece": expected_calibration_error(y, p),
        "brier": float(np.mean((p - y) ** 2)),
    }


@dataclass(frozen=True)
class Calibration:
    """A fitted score → probability map, its bootstrap variants and its quality (JSON)."""

    method: str
    params: dict[str, Any]
    bootstrap: list[dict[str, Any]] = field(default_factory=list)
    quality: dict[str, Any] = field(default_factory=dict)
    reason: str = ""

    def apply(self, score: np.ndarray) -> np.ndarray:
        """Calibrated probabilities of ``score``."""
        return _apply(self.method, self.params, score)

    def variants(self, score: np.ndarray) -> np.ndarray:
        """Probabilities under each bootstrap map (maps x rows); the fitted map alone when
        there are none."""
        maps = self.bootstrap or [self.params]
        return np.stack([_apply(self.method, m, score) for m in maps])

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any], source: str = "calibration") -> Calibration:
        """A :class:`Calibration` from :meth:`to_json`'s dict; ValueError naming ``source``
        and the key for anything else."""
        if not isinstance(doc, dict):
            raise ValueError(f"{source}: expected a JSON object, got {type(doc).__name__}")
        method = doc.get("method")
        if method not in ("platt", "isotonic"):
            raise ValueError(f"{source}: key 'method': expected 'platt' or 'isotonic'")
        need = ("a", "b") if method == "platt" else ("x", "y")
        for key, maps in (("params", [doc.get("params")]), ("bootstrap", doc.get("bootstrap"))):
            if not isinstance(maps, list) or not all(
                isinstance(m, dict) and all(k in m for k in need) for m in maps
            ):
                raise ValueError(f"{source}: key {key!r}: expected {method} maps with {need}")
        return cls(
            method=method,
            params=doc["params"],
            bootstrap=doc.get("bootstrap") or [],
            quality=doc.get("quality") or {},
            reason=doc.get("reason") or "",
        )


# Bootstrap calibration fits drawn and fitted at once (bounds their memory).
BOOTSTRAP_BLOCK = 5


def _cv_brier(method: str, score: np.ndarray, y: np.ndarray, folds: int, seed: int) -> float:
    fold = np.random.default_rng(seed).permutation(len(y)) % folds
    errors = np.empty(len(y))
    for k in range(folds):
        out = fold == k
        errors[out] = (
            _apply(method, _fit_one(method, score[~out], y[~out]), score[out]) - y[out]
        ) ** 2
    return float(errors.mean())


def fit_calibration(
    y: np.ndarray,
    score: np.ndarray,
    method: str = "auto",
    bootstraps: int = 50,
    seed: int = 0,
    folds: int = 5,
) -> Calibration:
    """Calibrate ``score`` against outcomes ``y`` (0/1) on the reference rows.

    ``method="auto"`` picks Platt unless isotonic's ``folds``-fold cross-validated Brier
    score is more than ``ISOTONIC_MARGIN`` lower (see the module doc). ``quality`` holds
    ECE and Brier of the calibrated and of the raw scores on these rows (in-sample) and the
    cross-validated Brier. ValueError when ``y`` is not 0/1 of both classes or lengths differ.
    """
    y = np.asarray(y, dtype=float)
    score = np.asarray(score, dtype=float)
    if y.shape != score.shape or y.ndim != 1:
        raise ValueError(f"calibration: {len(y)} outcomes for {len(score)} scores")
    if not np.isin(y, (0, 1)).all() or len(np.unique(y)) < 2:
        raise ValueError("calibration: outcomes must be 0/1 with both classes present")
    if not np.isfinite(score).all():
        raise ValueError("calibration: scores must be finite")
    if method not in CALIBRATION_METHODS:
        raise ValueError(
            f"calibration method: expected one of {CALIBRATION_METHODS}, got {method!r}"
        )
    folds = max(2, min(folds, int(min(y.sum(), len(y) - y.sum()))))
    cv = {m: _cv_brier(m, score, y, folds, seed) for m in ("platt", "isotonic")}
    if method == "auto":
        better = cv["isotonic"] < (1 - ISOTONIC_MARGIN) * cv["platt"]
        chosen = "isotonic" if better else "platt"
        reason = (
            f"{chosen}: {folds}-fold cross-validated Brier on the {len(y)} reference rows "
            f"platt {cv['platt']:.5f}, isotonic {cv['isotonic']:.5f} "
            + (
                f"(isotonic more than {ISOTONIC_MARGIN:.0%} lower)"
                if better
                else f"(isotonic not {ISOTONIC_MARGIN:.0%} lower: Platt's 2 parameters)"
            )
        )
    else:
        chosen, reason = method, f"{method}: set by evaluation.calibration_method"
    params = _fit_one(chosen, score, y)
    rng = np.random.default_rng(seed)
    share = np.full(len(y), 1 / len(y))
    boot: list[dict[str, Any]] = []
    # The bootstrap multiplicities a block at a time (the same draws as all at once): 50
    # fits x 2M rows were 0.8 GB for the counts and ~10 such arrays inside a Platt fit.
    for start in range(0, bootstraps, BOOTSTRAP_BLOCK):
        block = min(BOOTSTRAP_BLOCK, bootstraps - start)
        counts = rng.multinomial(len(y), share, size=block).astype(float)
        if chosen == "platt":
            boot += [{"a": float(a), "b": float(b)} for a, b in _platt_fit(score, y, counts)]
            continue
        for w in counts:
            x_knots, y_knots = _isotonic_fit(score, y, w)
            boot.append({"x": x_knots, "y": y_knots})
    p = _apply(chosen, params, score)
    quality = {
        **_quality(y, p),
        "raw_ece": expected_calibration_error(y, score),
        "raw_brier": float(np.mean((score - y) ** 2)),
        "cv_brier": cv[chosen],
        "rows": int(len(y)),
        "positives": int(y.sum()),
    }
    return Calibration(chosen, params, boot, quality, reason)


# --- estimation -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Ranking:
    """The rows sorted by score (ascending) and grouped into ties, once per estimate."""

    order: np.ndarray
    starts: np.ndarray  # first sorted position of each tie group
    sizes: np.ndarray  # rows per group
    predicted: np.ndarray  # per group: score >= threshold

    @classmethod
    def of(cls, score: np.ndarray, threshold: float) -> _Ranking:
        order = np.argsort(score, kind="mergesort")
        s = score[order]
        starts = np.flatnonzero(np.r_[True, np.diff(s) != 0])
        sizes = np.diff(np.r_[starts, len(s)])
        return cls(order, starts, sizes, s[starts] >= threshold)

    def groups(self, values: np.ndarray) -> np.ndarray:
        """Per-group sums of ``values`` (... x rows, in the original row order)."""
        return np.add.reduceat(values[..., self.order], self.starts, axis=-1)


def _metrics_of_groups(
    rank: _Ranking, pos: np.ndarray, var: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Metrics from per-group positives ``pos`` (... x groups): realised counts of drawn
    labels, or, with ``var`` (per group, the sum of p(1 - p) = Var(positives)), expected
    counts. Expected: a group's right-ranked pairs inside itself are E[pos (size - pos)] =
    pos * neg - var (so a row is never paired with itself), the pairs E[n1 n0] = E[n1]
    E[n0] - sum var, and average precision's E[pos * TP at or above] adds var."""
    sizes = rank.sizes.astype(float)
    neg = sizes - pos
    n = sizes.sum()
    n1 = pos.sum(axis=-1)
    n0 = n - n1
    below = np.cumsum(sizes) - sizes - (np.cumsum(pos, axis=-1) - pos)
    inside = pos * neg if var is None else pos * neg - var
    right = (pos * below + 0.5 * inside).sum(axis=-1)
    pairs = n1 * n0 if var is None else n1 * n0 - var.sum(axis=-1)
    # true positives, and rows, at or above each group's score
    tp_at = n1[..., None] - (np.cumsum(pos, axis=-1) - pos)
    rows_at = n - (np.cumsum(sizes) - sizes)
    pos_tp = pos * tp_at if var is None else pos * tp_at + var
    ap_num = (pos_tp / rows_at).sum(axis=-1)
    tp = (pos * rank.predicted).sum(axis=-1)
    called = float((sizes * rank.predicted).sum())
    fp, fn = called - tp, n1 - tp
    tn = n0 - fp
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "roc_auc": right / pairs,
            "pr_auc": ap_num / n1,
            "f1": 2 * tp / (2 * tp + fp + fn),
            "precision": tp / called if called else np.full_like(tp, np.nan),
            "recall": tp / n1,
            "accuracy": (tp + tn) / n,
        }


def _expected(rank: _Ranking, p: np.ndarray) -> dict[str, float | None]:
    """The CBPE point estimates: the metrics of the expected counts under ``p``."""
    out = _metrics_of_groups(rank, rank.groups(p), rank.groups(p * (1 - p)))
    return {k: (float(v) if np.isfinite(v) else None) for k, v in out.items()}


def _drawn(
    rank: _Ranking, probabilities: np.ndarray, draws: int, seed: int
) -> dict[str, np.ndarray]:
    """Each metric realised under ``draws`` label draws y ~ Bernoulli(p), ``p`` cycling
    through the rows of ``probabilities`` (maps x rows); in blocks to bound memory."""
    rng = np.random.default_rng(seed)
    n = probabilities.shape[1]
    pick = np.arange(draws) % len(probabilities)
    block = max(1, _BLOCK // max(n, 1))
    out: dict[str, list[np.ndarray]] = {k: [] for k in METRICS}
    for start in range(0, draws, block):
        p = probabilities[pick[start : start + block]]
        labels = (rng.random(p.shape) < p).astype(np.float32)
        for k, v in _metrics_of_groups(rank, rank.groups(labels).astype(float)).items():
            out[k].append(v)
    return {k: np.concatenate(v) for k, v in out.items()}


def _interval(values: np.ndarray, confidence: float) -> list[float] | None:
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return None
    tail = (1 - confidence) / 2 * 100
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return [float(lo), float(hi)]


def estimate_performance(
    score: np.ndarray,
    calibration: Calibration,
    threshold: float,
    *,
    draws: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """ROC AUC, PR AUC, F1, precision, recall and accuracy of the model on rows it scored
    ``score``, without their labels (see the module doc), each with a ``confidence``
    interval from ``draws`` Monte Carlo label draws.

    Returns ``{method, rows, threshold, <metric>: value, roc_auc_ci: [lo, hi],
    intervals: {metric: [lo, hi]}, confidence, draws, calibration_method,
    calibration_error}``; a metric undefined on these rows (no expected positive
    prediction for precision) is None. ValueError for no rows or a non-finite score.
    """
    score = np.asarray(score, dtype=float)
    if score.ndim != 1 or len(score) == 0:
        raise ValueError("performance estimate: expected a non-empty 1-D array of scores")
    if not np.isfinite(score).all():
        raise ValueError("performance estimate: scores must be finite")
    if not 0 < confidence < 1:
        raise ValueError(f"performance estimate: confidence must be in (0, 1), got {confidence}")
    rank = _Ranking.of(score, float(threshold))
    point = _expected(rank, calibration.apply(score))
    drawn = _drawn(rank, calibration.variants(score), int(draws), seed)
    intervals = {k: _interval(drawn[k], confidence) for k in METRICS}
    per_metric = 1 - (1 - ALARM_CONFIDENCE) / len(CHECKED)
    alarm = {k: _interval(drawn[k], per_metric) for k in CHECKED}
    return {
        "method": METHOD,
        "rows": int(len(score)),
        "threshold": float(threshold),
        **point,
        "roc_auc_ci": intervals["roc_auc"],
        "intervals": intervals,
        "confidence": confidence,
        # wider, for the concept-shift check: false alarms <= 1% under covariate shift
        "alarm_intervals": alarm,
        "alarm_confidence": ALARM_CONFIDENCE,
        "draws": int(draws),
        "calibration_method": calibration.method,
        "calibration_error": calibration.quality.get("ece"),
    }


def compare_with_realised(
    estimate: dict[str, Any], realised: dict[str, float | None], rows: int
) -> dict[str, Any]:
    """Estimated next to realised metrics on the same ``rows`` (labelled rows: the estimate
    must be of those rows), the error (realised - estimated) per metric, and the symptom of
    concept shift: realised ROC AUC or accuracy outside its alarm interval (together a
    ``ALARM_CONFIDENCE`` interval: under covariate shift alone, a false alarm in about 1%
    of monitor runs)."""
    error = {
        k: None
        if estimate.get(k) is None or realised.get(k) is None
        else float(realised[k]) - float(estimate[k])
        for k in METRICS
    }
    outside = []
    for k in CHECKED:
        ci, value = (estimate.get("alarm_intervals") or {}).get(k), realised.get(k)
        if ci is not None and value is not None and not ci[0] <= value <= ci[1]:
            outside.append(k)
    return {
        "rows": int(rows),
        "estimated": {k: estimate.get(k) for k in METRICS},
        "realised": {k: realised.get(k) for k in METRICS},
        "error": error,
        "intervals": {k: (estimate.get("intervals") or {}).get(k) for k in METRICS},
        "alarm_intervals": estimate.get("alarm_intervals"),
        "outside_interval": outside,
        "concept_shift_suspected": bool(outside),
    }
