"""An always-valid test of challenger against champion: a mixture SPRT on per-row losses
(or on the ROC AUC difference).

A fixed-horizon test (DeLong's, a t-test) keeps its 5% error only if it is read once, at a
sample size fixed in advance. The monitor reads the A/B report after every run; stopping
the first time p < 0.05 rejects a true null far more often than 5% (the benchmark,
``benchmarks/ab_bench.py``, measures how much). The test here may be read after every
row, every run, or whenever one likes, and acted on the first time it rejects: its false
positive rate stays at most ``alpha``.

The method is the mixture sequential probability ratio test (mSPRT) of Johari, Pekelis and
Walsh, "Always valid inference: continuous monitoring of A/B tests" (Operations Research
70(3), 2022; arXiv:1512.04922), with a normal mixture over the effect (Robbins 1970; the
normal-mixture boundary of Howard, Ramdas, McAuliffe and Sekhon, "Time-uniform,
nonparametric, nonasymptotic confidence sequences", Annals of Statistics 49(2), 2021).
The data is the per-row loss of each model's score against the outcome: log loss
(default) or Brier score, both proper scoring rules, so the lower expected loss is the
better forecaster. Or (``metric="roc_auc"``) the ROC AUC difference with DeLong's
variance: the AUC is a U-statistic, asymptotically a mean of per-row terms (its Hájek
projection), so the same normal-mixture boundary applies asymptotically (Waudby-Smith,
Arbour, Sinha, Kennedy & Ramdas, "Time-uniform central limit theory and asymptotic
confidence sequences", Annals of Statistics 2024); in A/B mode, where per-row losses of
different rows do not cancel, it needs fewer rows (the benchmark).

- **Shadow** (both models scored the same rows): the paired differences
  ``d = loss(challenger) - loss(champion)``; the estimate is their mean and its variance
  ``s²/n``.
- **A/B** (each row scored by one variant): the difference of the arms' mean losses and
  its variance ``s²_challenger/n_challenger + s²_champion/n_champion`` (Johari et al.'s
  two-sample mSPRT, without requiring equal arms).

With the estimate ``Δ`` of the loss difference, its variance ``V`` and the mixture spread
``τ²`` (the normal prior over the true difference), the mixture likelihood ratio of
"difference ≠ 0" against "difference = 0" is

    Λ = sqrt(V / (V + τ²)) · exp(τ² Δ² / (2 V (V + τ²)))

and ``p = min(1, 1/Λ)`` is an always-valid p-value: under the null Λ is a non-negative
martingale with mean 1, so by Ville's inequality P(Λ ever reaches 1/alpha) ≤ alpha, at
whatever rows it is read. The rows {Δ': Λ(Δ - Δ') < 1/alpha} are the matching confidence
sequence (an interval that covers the true difference at every reading at once). ``τ²`` is
set, in units of the per-row variance, so that the boundary is tightest at
``mixture_rows`` labelled rows (per arm or paired). Λ is a function of sums only, so the
order in which outcomes arrive does not matter (for ROC AUC: a function of the set of
rows). The variance is estimated from the rows
(plug-in, as in Johari et al.); the guarantee is asymptotic in the number of rows, which
the benchmark checks from 100 rows on.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mlfolio import fixed_horizon

LOSSES = ("log_loss", "brier")
METRICS = (*LOSSES, "roc_auc")
_EPS = 1e-15  # probabilities are clipped to [eps, 1 - eps] for the log loss


def row_loss(y: np.ndarray, score: np.ndarray, loss: str = "log_loss") -> np.ndarray:
    """Each row's loss of the probability ``score`` against the outcome ``y`` (0/1)."""
    y, p = np.asarray(y, float), np.asarray(score, float)
    if loss == "brier":
        return (p - y) ** 2
    if loss != "log_loss":
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    p = np.clip(p, _EPS, 1 - _EPS)
    return -(y * np.log(p) + (1 - y) * np.log1p(-p))


def mixture_ratio(alpha: float) -> float:
    """τ² × (information at the tuned rows): the ``r`` minimising the normal-mixture
    boundary ``(1 + 1/r)(2 log(1/alpha) + log(1 + r))`` on z² (Howard et al. 2021, §3)."""
    r = np.exp(np.linspace(np.log(0.01), np.log(1e4), 20001))
    bound = (1 + 1 / r) * (2 * math.log(1 / alpha) + np.log1p(r))
    return float(r[np.argmin(bound)])


def log_likelihood_ratio(
    difference: Any, variance: Any, unit_variance: Any, alpha: float, mixture_rows: int
) -> np.ndarray:
    """log Λ of the normal-mixture SPRT, element-wise (arrays broadcast).

    ``variance`` is the estimate's variance V, ``unit_variance`` the variance of one row
    (paired) or of one row per arm (A/B), so ``unit_variance / variance`` counts rows.
    A zero variance with a zero difference is no evidence (log Λ = 0); with a non-zero
    difference it is conclusive (+inf).
    """
    d = np.asarray(difference, float)
    v = np.asarray(variance, float)
    tau2 = mixture_ratio(alpha) / mixture_rows * np.asarray(unit_variance, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = tau2 / v
        llr = -0.5 * np.log1p(r) + 0.5 * d**2 / v * r / (1 + r)
    degenerate = ~(v > 0)
    return np.where(degenerate, np.where(d == 0, 0.0, np.inf), llr)


def half_width(variance: Any, unit_variance: Any, alpha: float, mixture_rows: int) -> np.ndarray:
    """Half the width of the (1 − alpha) confidence sequence around the estimate."""
    v = np.asarray(variance, float)
    tau2 = mixture_ratio(alpha) / mixture_rows * np.asarray(unit_variance, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = tau2 / v
        width = np.sqrt(v * (1 + r) / r * (2 * math.log(1 / alpha) + np.log1p(r)))
    return np.where(v > 0, width, 0.0)


def p_value(log_ratio: Any) -> np.ndarray:
    """The always-valid p-value min(1, 1/Λ)."""
    return np.minimum(1.0, np.exp(-np.asarray(log_ratio, float)))


def _result(
    test: str,
    metric: str,
    difference: float,
    variance: float,
    unit_variance: float,
    alpha: float,
    mixture_rows: int,
    rows: dict[str, int],
    means: dict[str, float],
) -> dict[str, Any]:
    llr = float(log_likelihood_ratio(difference, variance, unit_variance, alpha, mixture_rows))
    p = float(p_value(llr))
    half = float(half_width(variance, unit_variance, alpha, mixture_rows))
    better = difference > 0 if metric == "roc_auc" else difference < 0
    if p <= alpha:
        decision = "challenger better" if better else "challenger worse"
    else:
        decision = "continue"
    return {
        "test": test,
        "method": "mixture SPRT (Johari, Pekelis & Walsh 2017)",
        "metric": metric,
        "alpha": alpha,
        "mixture_rows": int(mixture_rows),
        "rows": rows,
        "means": means,
        # challenger − champion: a loss lower is better, ROC AUC higher
        "difference": difference,
        "ci_low": difference - half,  # the (1 − alpha) confidence sequence at this reading
        "ci_high": difference + half,
        "statistic": llr,  # log of the mixture likelihood ratio Λ
        "z": difference / math.sqrt(variance) if variance > 0 else 0.0,
        "p_value": p,  # always valid: min(1, 1/Λ)
        "decision": decision,
    }


def _both_classes(y: np.ndarray) -> bool:
    return min(int((y == 1).sum()), int((y == 0).sum())) >= 2


def paired_test(
    y: np.ndarray,
    score_new: np.ndarray,
    score_old: np.ndarray,
    metric: str = "log_loss",
    alpha: float = 0.05,
    mixture_rows: int = 1000,
) -> dict[str, Any] | None:
    """Shadow: both scores of the same labelled rows. None with fewer than two rows (for
    ``roc_auc``: fewer than two of either class)."""
    y = np.asarray(y).astype(int)
    n = len(y)
    if metric == "roc_auc":
        if not _both_classes(y):
            return None
        diff, var = fixed_horizon.delong_paired_difference(y, score_new, score_old)
        auc_new = fixed_horizon.delong_auc(y, score_new)[0]
        auc_old = auc_new - diff
        test = "always-valid paired test of ROC AUC (DeLong's variance; shadow: same rows)"
        means = {"champion": auc_old, "challenger": auc_new}
        return _result(test, metric, diff, var, var * n, alpha, mixture_rows, {"paired": n}, means)
    new, old = row_loss(y, score_new, metric), row_loss(y, score_old, metric)
    if n < 2:
        return None
    d = new - old
    unit = float(np.var(d, ddof=1))
    return _result(
        f"always-valid paired test of the per-row {metric} (shadow: same {n} rows)",
        metric,
        float(d.mean()),
        unit / n,
        unit,
        alpha,
        mixture_rows,
        {"paired": n},
        {"champion": float(old.mean()), "challenger": float(new.mean())},
    )


def two_sample_test(
    y_new: np.ndarray,
    score_new: np.ndarray,
    y_old: np.ndarray,
    score_old: np.ndarray,
    metric: str = "log_loss",
    alpha: float = 0.05,
    mixture_rows: int = 1000,
) -> dict[str, Any] | None:
    """A/B: each arm's labelled rows on their own. None when an arm has fewer than two
    (for ``roc_auc``: fewer than two of either class)."""
    y_new, y_old = np.asarray(y_new).astype(int), np.asarray(y_old).astype(int)
    rows = {"champion": len(y_old), "challenger": len(y_new)}
    if metric == "roc_auc":
        if not (_both_classes(y_new) and _both_classes(y_old)):
            return None
        (auc_new, var_new), (auc_old, var_old) = (
            fixed_horizon.delong_auc(y_new, score_new),
            fixed_horizon.delong_auc(y_old, score_old),
        )
        stat = (auc_new, var_new * len(y_new), auc_old, var_old * len(y_old))
        test = "always-valid two-sample test of ROC AUC (DeLong's variance; A/B)"
    else:
        new, old = row_loss(y_new, score_new, metric), row_loss(y_old, score_old, metric)
        if min(len(new), len(old)) < 2:
            return None
        stat = (new.mean(), np.var(new, ddof=1), old.mean(), np.var(old, ddof=1))
        test = f"always-valid two-sample test of the mean {metric} (A/B: each row saw one variant)"
    mean_new, unit_new, mean_old, unit_old = (float(v) for v in stat)
    return _result(
        test,
        metric,
        mean_new - mean_old,
        unit_new / len(y_new) + unit_old / len(y_old),
        unit_new + unit_old,
        alpha,
        mixture_rows,
        rows,
        {"champion": mean_old, "challenger": mean_new},
    )
